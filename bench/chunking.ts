/**
 * `node dist/bench/chunking.js <a CRIU pages-N.img>`: how many new bytes a
 * second checkpoint stores with fixed-size and with content-defined chunks,
 * for two kinds of change made to a copy of a real page image (README
 * "Checkpoint store v2" has the numbers and the choice). Not part of
 * `npm run bench` (it exports no benchmark): it needs a page image you give it.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

const PAGE = 4096;
type Chunker = (b: Buffer) => Buffer[];

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function fixed(size: number): Chunker {
  return (buf) => {
    const out: Buffer[] = [];
    for (let o = 0; o < buf.length; o += size) out.push(buf.subarray(o, o + size));
    return out;
  };
}

/** Boundaries only between pages: after a page whose sampled bytes hash to 0 mod 256 (avg 1 MiB), 64..1024 pages a chunk. */
const pageCdc: Chunker = (buf) => {
  const out: Buffer[] = [];
  let start = 0;
  for (let p = 0; p < buf.length; p += PAGE) {
    const pages = (p + PAGE - start) / PAGE;
    let h = 2166136261;
    for (const off of [0, 1024, 2048, 3072, 4088])
      for (let i = off; i < off + 8 && p + i < buf.length; i++) h = Math.imul(h ^ buf[p + i]!, 16777619) >>> 0;
    if ((pages >= 64 && (h & 255) === 0) || pages >= 1024) {
      out.push(buf.subarray(start, p + PAGE));
      start = p + PAGE;
    }
  }
  if (start < buf.length) out.push(buf.subarray(start));
  return out;
};

function newBytes(before: Buffer, after: Buffer, chunker: Chunker): number {
  const have = new Set(chunker(before).map(sha));
  return chunker(after).reduce((n, c) => n + (have.has(sha(c)) ? 0 : c.length), 0);
}

export function compareChunking(file: string): string[] {
  const img = fs.readFileSync(file);
  // 4 MiB rewritten in place, as 64 runs of 64 KiB spread over the image...
  const inPlace = Buffer.from(img);
  for (let i = 0; i < 64; i++)
    randomBytes(65536).copy(inPlace, Math.floor(((i + 0.5) * img.length) / 64 / PAGE) * PAGE);
  // ...and the same with 3 pages that became present early on (what follows shifts by 12 KiB).
  const at = Math.floor((img.length * 0.1) / PAGE) * PAGE;
  const shifted = Buffer.concat([inPlace.subarray(0, at), randomBytes(3 * PAGE), inPlace.subarray(at)]);
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  return (
    [
      ['fixed 1 MiB', fixed(1 << 20)],
      ['fixed 4 MiB', fixed(4 << 20)],
      ['content-defined, page-aligned (avg 1 MiB)', pageCdc],
    ] as const
  ).map(
    ([name, ch]) =>
      `${name}: ${ch(img).length} chunks; in place: ${mib(newBytes(img, inPlace, ch))} new; plus the shift: ${mib(newBytes(img, shifted, ch))} new (of ${mib(img.length)})`,
  );
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node dist/bench/chunking.js <criu pages-N.img>');
    process.exit(2);
  }
  for (const line of compareChunking(file)) console.log(line);
}
