import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { CheckpointUnusableError } from '../contract/errors.js';
import { chunkIdOf, decodeChunk, encodeChunk, type ChunkKeys } from './chunk-codec.js';
import type { ChunkStore, ChunkWriteStats } from './chunk-dir.js';

/**
 * Large checkpoint files (page images, the layer archive) to and from
 * chunks. Fixed-size chunks of CHUNK_BYTES (README "Checkpoint store v2"
 * says why not content-defined): a page image that changed in a few places
 * changes only the chunks those pages are in.
 */
export const CHUNK_BYTES = 1 << 20;
/** Chunks in flight at once (writes, or fetches on restore): keeps the disk or the network busy while this thread compresses. */
const IN_FLIGHT = 8;

export interface ChunkRef {
  id: string;
  size: number;
}

export interface ChunkedFile {
  path: string;
  size: number;
  chunks: ChunkRef[];
}

/** Split each file (relative to srcDir) into chunks and put the new ones into `chunks`. */
export async function storeChunked(
  srcDir: string,
  rels: string[],
  chunks: ChunkStore,
  opts: { keys?: ChunkKeys; fsync: boolean },
): Promise<{ files: ChunkedFile[]; stats: ChunkWriteStats }> {
  const stats: ChunkWriteStats = { written: 0, bytes: 0, reused: 0 };
  const inFlight = new Set<Promise<void>>();
  let failed: unknown;
  const track = (p: Promise<void>) => {
    const q = p.catch((e: unknown) => void (failed ??= e)).finally(() => inFlight.delete(q));
    inFlight.add(q);
  };
  const seen = new Set<string>();
  const files: ChunkedFile[] = [];
  for (const rel of rels) {
    const fd = fs.openSync(path.join(srcDir, rel), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const size = fs.fstatSync(fd).size;
      const refs: ChunkRef[] = [];
      for (let pos = 0; pos < size || (pos === 0 && refs.length === 0); pos += CHUNK_BYTES) {
        const n = Math.min(CHUNK_BYTES, size - pos);
        const plain = Buffer.allocUnsafe(n);
        let got = 0;
        while (got < n) {
          const r = fs.readSync(fd, plain, got, n - got, pos + got);
          if (r === 0) throw new Error(`${rel}: short read at ${pos + got}`);
          got += r;
        }
        const id = chunkIdOf(plain, opts.keys);
        refs.push({ id, size: n });
        if (seen.has(id)) continue;
        seen.add(id);
        while (inFlight.size >= IN_FLIGHT) await Promise.race(inFlight);
        if (failed) throw failed;
        track(
          chunks.reuse(id).then(async (there) => {
            if (there) {
              stats.reused++;
              return;
            }
            const stored = encodeChunk(plain, id, opts.keys);
            await chunks.put(id, stored, opts.fsync);
            stats.written++;
            stats.bytes += stored.length;
          }),
        );
        if (n === 0) break;
      }
      files.push({ path: rel, size, chunks: refs });
    } finally {
      fs.closeSync(fd);
    }
  }
  await Promise.all(inFlight);
  if (failed) throw failed;
  if (opts.fsync && stats.written > 0) await chunks.syncDirs();
  return { files, stats };
}

/**
 * Write every chunked file into destDir from its chunks, fetched in
 * parallel, each checked (decodeChunk) before a byte of it is written.
 * A chunk that is missing or bad throws CheckpointUnusableError naming it.
 */
export async function assembleChunked(
  files: ChunkedFile[],
  chunks: ChunkStore,
  destDir: string,
  keys?: ChunkKeys,
): Promise<void> {
  const jobs: { file: ChunkedFile; ref: ChunkRef; offset: number; index: number }[] = [];
  const handles = new Map<string, fsp.FileHandle>();
  try {
    for (const file of files) {
      const dest = path.join(destDir, file.path);
      await fsp.mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
      const fh = await fsp.open(dest, 'wx', 0o600);
      handles.set(file.path, fh);
      await fh.truncate(file.size);
      let offset = 0;
      file.chunks.forEach((ref, index) => {
        jobs.push({ file, ref, offset, index });
        offset += ref.size;
      });
    }
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < jobs.length) {
        const { file, ref, offset, index } = jobs[next++]!;
        const what = `${file.path}: chunk ${index + 1} of ${file.chunks.length} (${ref.id.slice(0, 12)})`;
        const stored = await chunks.get(ref.id);
        if (!stored) throw new CheckpointUnusableError('truncated', `${what} is missing from the store`);
        const plain = decodeChunk(stored, ref.id, ref.size, what, keys);
        await handles.get(file.path)!.write(plain, 0, plain.length, offset);
      }
    };
    await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, jobs.length) }, lane));
  } finally {
    for (const fh of handles.values()) await fh.close().catch(() => undefined);
  }
}
