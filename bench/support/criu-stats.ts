import fs from 'node:fs';
import path from 'node:path';

/**
 * CRIU's own statistics of a dump (the `stats-dump` image it writes beside
 * its log): how long it took to freeze the tasks, how long they stayed
 * frozen, how long it spent collecting and writing their memory, and how
 * many pages it wrote. Read without crit (not on these machines): the image
 * is two magics, a 32-bit length and one protobuf StatsEntry whose field 1
 * is a StatsDumpEntry (images/stats.proto).
 */
export interface CriuDumpStats {
  freezingMs: number;
  frozenMs: number;
  memdumpMs: number;
  memwriteMs: number;
  pagesWritten: number;
}

function varints(buf: Buffer): Map<number, Buffer | number> {
  const out = new Map<number, Buffer | number>();
  let i = 0;
  const varint = () => {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = buf[i++]!;
      v += (b & 0x7f) * mul;
      mul *= 128;
      if (!(b & 0x80)) return v;
    }
  };
  while (i < buf.length) {
    const key = varint();
    const wire = key & 7;
    if (wire === 0) out.set(key >>> 3, varint());
    else if (wire === 2) {
      const n = varint();
      out.set(key >>> 3, buf.subarray(i, i + n));
      i += n;
    } else break; // not in this message
  }
  return out;
}

/** From the first of `dirs` that has it (CRIU writes it in its work dir, where its log goes). */
export function criuDumpStats(...dirs: string[]): CriuDumpStats | undefined {
  const file = dirs.map((d) => path.join(d, 'stats-dump')).find((f) => fs.existsSync(f));
  if (!file) return undefined;
  const img = fs.readFileSync(file);
  const size = img.readUInt32LE(8);
  const dump = varints(img.subarray(12, 12 + size)).get(1);
  if (!Buffer.isBuffer(dump)) return undefined;
  const f = varints(dump);
  const us = (n: number) => Math.round(Number(f.get(n) ?? 0) / 1000);
  return {
    freezingMs: us(1),
    frozenMs: us(2),
    memdumpMs: us(3),
    memwriteMs: us(4),
    pagesWritten: Number(f.get(7) ?? 0),
  };
}
