import fs from 'node:fs';

/**
 * Store files written and read around the page cache (O_DIRECT), for the
 * ciphertext of sealed checkpoints (core/seal.ts). Why: on these VMs memory
 * the kernel hands out fresh costs about 3 ms per MiB (free-page reporting
 * gave it back to the host, README troubleshooting), and a sealed
 * checkpoint's plaintext already fills a tmpfs; writing 256 MiB of
 * ciphertext through the page cache would take as much fresh memory again,
 * and reading it back on restore the same. With O_DIRECT the data moves
 * between the disk and one buffer per thread, reused for every file. That
 * buffer is mmap'd memory (pageAlignedMemory): from malloc's, a direct
 * transfer was 5-25 times slower here.
 *
 * O_DIRECT needs the memory address, the file offset and the length
 * aligned (the device's logical block, 512 bytes here; 4096 is used). Node
 * does not say where a Buffer lives, so the buffer's aligned start is found
 * once by trying: a direct transfer from a misaligned address fails with
 * EINVAL at once. Where O_DIRECT is refused (tmpfs on older kernels, some
 * filesystems, a buffer no offset aligns), callers fall back to ordinary
 * reads and writes: the same bytes, through the page cache.
 */
export const DIRECT_ALIGN = 4096;
/** Node's Buffers are 16-byte aligned at least (malloc): the aligned start is among these offsets. */
const ADDRESS_STEP = 16;

/** O_DIRECT, where this platform has it. */
export const O_DIRECT: number | undefined = fs.constants.O_DIRECT;

/** A buffer with a start that O_DIRECT accepts (found on first use), reused for every file of a thread. */
export class DirectBuffer {
  private readonly raw: Buffer;
  /** Offset in `raw` of the aligned start: undefined until probed, -1 when none works. */
  private start: number | undefined;

  constructor(readonly size: number) {
    this.raw = pageAlignedMemory(size + DIRECT_ALIGN);
    // A probing write puts DIRECT_ALIGN bytes of it on the disk (then cut away): never old memory of this process.
    this.raw.fill(0, 0, 2 * DIRECT_ALIGN);
  }

  /**
   * The aligned area (`size` bytes), probed with `probe` (a direct transfer
   * of DIRECT_ALIGN bytes from the given view; false on EINVAL), or
   * undefined when no offset works.
   */
  area(probe: (view: Buffer) => boolean): Buffer | undefined {
    if (this.start === undefined) {
      this.start = -1;
      for (let o = 0; o < DIRECT_ALIGN; o += ADDRESS_STEP) {
        if (probe(this.raw.subarray(o, o + DIRECT_ALIGN))) {
          this.start = o;
          break;
        }
      }
    }
    return this.start < 0 ? undefined : this.raw.subarray(this.start, this.start + this.size);
  }
}

const WASM_PAGE = 64 * 1024;

/**
 * Zeroed memory that starts on a page, from a WebAssembly.Memory (V8 maps
 * it by itself, page-aligned). Why not a Buffer: a direct transfer from
 * malloc's memory took ~16 ms per MiB here (2 s for 128 MiB), from this
 * memory ~1 ms, as from any mmap'd buffer (Python, dd). Falls back to a
 * Buffer where WebAssembly is unavailable (--jitless).
 */
function pageAlignedMemory(bytes: number): Buffer {
  try {
    return Buffer.from(new WebAssembly.Memory({ initial: Math.ceil(bytes / WASM_PAGE) }).buffer, 0, bytes);
  } catch {
    return Buffer.alloc(bytes);
  }
}

function einval(fn: () => void): boolean {
  try {
    fn();
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EINVAL') return false;
    throw err;
  }
}

/**
 * Appends bytes to a new file: whole aligned blocks go straight to the disk
 * through a second, O_DIRECT descriptor of the same file; the last partial
 * block is written, padded, and the file cut to its length at finish(). Or,
 * when that is refused, every byte through `fd` as usual (`direct` says
 * which). `fd` must be open for writing on an empty file. The DirectBuffer
 * may be shared by the appenders of one thread (files sealed side by side):
 * each keeps its own partial block between appends.
 */
export class DirectAppender {
  readonly direct: boolean;
  private readonly dfd: number | undefined;
  private readonly area: Buffer | undefined;
  /** The partial block not yet written (fewer than DIRECT_ALIGN bytes). */
  private readonly tail = Buffer.alloc(DIRECT_ALIGN);
  private tailLen = 0;
  /** Bytes on the disk (a multiple of DIRECT_ALIGN until finish()). */
  private pos = 0;

  constructor(
    private readonly fd: number,
    file: string,
    buf: DirectBuffer | undefined,
  ) {
    let dfd = buf ? openDirectTwin(fd, file, fs.constants.O_WRONLY) : undefined;
    // Probing writes DIRECT_ALIGN zero bytes at offset 0 of the new file: overwritten by the first block (or cut away).
    const w = dfd;
    const area = w === undefined ? undefined : buf!.area((v) => einval(() => fs.writeSync(w, v, 0, v.length, 0)));
    if (dfd !== undefined && !area) {
      fs.closeSync(dfd);
      dfd = undefined;
    }
    if (dfd !== undefined) fs.ftruncateSync(fd, 0);
    this.dfd = dfd;
    this.area = area;
    this.direct = dfd !== undefined;
  }

  /** Bytes appended so far. */
  get length(): number {
    return this.pos + this.tailLen;
  }

  append(bufs: Buffer[]): void {
    if (!this.direct) {
      this.pos += writeAll(this.fd, bufs);
      return;
    }
    const area = this.area!;
    let fill = this.tail.copy(area, 0, 0, this.tailLen);
    for (const b of bufs) {
      for (let o = 0; o < b.length;) {
        const n = Math.min(b.length - o, area.length - fill);
        b.copy(area, fill, o, o + n);
        fill += n;
        o += n;
        if (fill === area.length) fill = this.flush(fill, false);
      }
    }
    fill = this.flush(fill, false);
    this.tailLen = area.copy(this.tail, 0, 0, fill);
  }

  /** Write the whole aligned blocks of the area's first `fill` bytes (all, padded, when `last`); the bytes left, moved to its start. */
  private flush(fill: number, last: boolean): number {
    const area = this.area!;
    const whole = last ? Math.ceil(fill / DIRECT_ALIGN) * DIRECT_ALIGN : fill - (fill % DIRECT_ALIGN);
    if (whole === 0) return fill;
    if (last) area.fill(0, fill, whole);
    writeAllAt(this.dfd!, area.subarray(0, whole), this.pos);
    if (last) {
      this.pos += fill;
      return 0;
    }
    area.copyWithin(0, whole, fill);
    this.pos += whole;
    return fill - whole;
  }

  /** Everything appended is in the file, which has exactly that length. */
  finish(): void {
    if (!this.direct || this.tailLen === 0) return;
    const end = this.length;
    this.flush(this.tail.copy(this.area!, 0, 0, this.tailLen), true);
    this.tailLen = 0;
    fs.ftruncateSync(this.fd, end); // the padding of the last block goes
  }

  close(): void {
    if (this.dfd !== undefined) fs.closeSync(this.dfd);
  }
}

/**
 * Reads ranges of a file into a DirectBuffer through an O_DIRECT
 * descriptor (the aligned blocks around the range; at most one block read
 * twice between neighbouring ranges), or through `fd` as usual where that
 * is refused.
 */
export class DirectReader {
  private readonly dfd: number | undefined;
  private readonly area: Buffer | undefined;

  constructor(
    private readonly fd: number,
    file: string,
    buf: DirectBuffer | undefined,
  ) {
    let dfd = buf ? openDirectTwin(fd, file, fs.constants.O_RDONLY) : undefined;
    const r = dfd;
    const area = r === undefined ? undefined : buf!.area((v) => einval(() => fs.readSync(r, v, 0, v.length, 0)));
    if (dfd !== undefined && !area) {
      fs.closeSync(dfd);
      dfd = undefined;
    }
    this.dfd = dfd;
    this.area = area;
  }

  get direct(): boolean {
    return this.dfd !== undefined;
  }

  /**
   * `n` bytes at `pos`, in `into` when not direct; fewer when the file ends
   * first. The view is valid until the next read.
   */
  read(pos: number, n: number, into: Buffer): Buffer {
    if (this.dfd === undefined) {
      let got = 0;
      while (got < n) {
        const r = fs.readSync(this.fd, into, got, n - got, pos + got);
        if (r === 0) break;
        got += r;
      }
      return into.subarray(0, got);
    }
    const area = this.area!;
    const from = pos - (pos % DIRECT_ALIGN);
    const to = Math.ceil((pos + n) / DIRECT_ALIGN) * DIRECT_ALIGN;
    if (to - from > area.length) throw new Error(`direct read of ${n} bytes: larger than the buffer (${area.length})`);
    let got = 0;
    while (got < to - from) {
      const r = fs.readSync(this.dfd, area, got, to - from - got, from + got);
      if (r === 0) break;
      got += r;
      if (got % DIRECT_ALIGN !== 0) break; // a short read ends at the file's end
    }
    const skip = pos - from;
    return area.subarray(skip, Math.max(skip, Math.min(got, skip + n)));
  }

  close(): void {
    if (this.dfd !== undefined) fs.closeSync(this.dfd);
  }
}

/**
 * A second, O_DIRECT descriptor of the file `fd` has open, or undefined where
 * O_DIRECT is refused (EINVAL on tmpfs and some filesystems: the page cache
 * then). Checked to be the same file: a name swapped in between must never
 * be read or written instead.
 */
function openDirectTwin(fd: number, file: string, access: number): number | undefined {
  if (O_DIRECT === undefined) return undefined;
  let dfd: number | undefined;
  try {
    dfd = fs.openSync(file, access | fs.constants.O_NOFOLLOW | O_DIRECT);
    const [a, b] = [fs.fstatSync(fd), fs.fstatSync(dfd)];
    if (a.dev !== b.dev || a.ino !== b.ino) throw new Error('not the same file');
    return dfd;
  } catch {
    if (dfd !== undefined) fs.closeSync(dfd);
    return undefined;
  }
}

/** Write every buffer, in order, at the file position, with as few syscalls as the kernel allows. */
export function writeAll(fd: number, bufs: Buffer[], at?: number): number {
  const total = bufs.reduce((a, b) => a + b.length, 0);
  let left = bufs;
  for (let done = 0; done < total;) {
    let n = at === undefined ? fs.writevSync(fd, left) : fs.writevSync(fd, left, at + done);
    done += n;
    // A short write (rare on regular files): go on from where it stopped.
    const rest: Buffer[] = [];
    for (const b of left) {
      if (n >= b.length) n -= b.length;
      else {
        rest.push(n > 0 ? b.subarray(n) : b);
        n = 0;
      }
    }
    left = rest;
  }
  return total;
}

function writeAllAt(fd: number, b: Buffer, at: number): void {
  for (let done = 0; done < b.length;) {
    const n = fs.writeSync(fd, b, done, b.length - done, at + done);
    if (n <= 0) throw new Error(`direct write returned ${n}`);
    done += n;
  }
}
