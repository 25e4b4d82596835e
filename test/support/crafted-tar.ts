/**
 * A minimal ustar writer, to craft archives node-tar would never write
 * (escaping paths, device nodes, links out of the archive).
 */
export interface TarEntry {
  name: string;
  /** 0 file, 1 hard link, 2 symlink, 3 char device, 4 block device, 5 directory, 6 FIFO. */
  type: '0' | '1' | '2' | '3' | '4' | '5' | '6';
  data?: string;
  link?: string;
  mode?: number;
  dev?: [number, number];
}

function octal(buf: Buffer, off: number, len: number, v: number): void {
  buf.write(`${v.toString(8).padStart(len - 1, '0')}\0`, off, len, 'ascii');
}

function tarHeader(e: TarEntry): Buffer {
  const h = Buffer.alloc(512);
  if (Buffer.byteLength(e.name) > 100 || Buffer.byteLength(e.link ?? '') > 100)
    throw new Error('name too long for this writer');
  h.write(e.name, 0, 100, 'utf8');
  octal(h, 100, 8, e.mode ?? (e.type === '5' ? 0o755 : 0o644));
  octal(h, 108, 8, 0);
  octal(h, 116, 8, 0);
  octal(h, 124, 12, Buffer.byteLength(e.data ?? ''));
  octal(h, 136, 12, 1_700_000_000);
  h.write(e.type, 156, 1, 'ascii');
  h.write(e.link ?? '', 157, 100, 'utf8');
  h.write('ustar\0', 257, 6, 'ascii');
  h.write('00', 263, 2, 'ascii');
  octal(h, 329, 8, e.dev?.[0] ?? 0);
  octal(h, 337, 8, e.dev?.[1] ?? 0);
  h.fill(' ', 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  return h;
}

/** The archive's entries (headers and data blocks) without its end-of-archive zero blocks. */
function tarBody(buf: Buffer): Buffer {
  let off = 0;
  while (off + 512 <= buf.length) {
    const h = buf.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const size = parseInt(h.subarray(124, 136).toString('ascii').replace(/\0.*$/, '').trim() || '0', 8);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return buf.subarray(0, off);
}

/** `entries` appended to the archive `tar` (empty: a new archive). */
export function craftTar(entries: TarEntry[], tar: Buffer = Buffer.alloc(0)): Buffer {
  const parts: Buffer[] = [tarBody(tar)];
  for (const e of entries) {
    parts.push(tarHeader(e));
    const data = Buffer.from(e.data ?? '');
    if (data.length) parts.push(data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}
