import { createHash, type Hash } from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';

/**
 * File digests for checkpoint manifests.
 *
 * Each file gets its whole-file sha256 and, for large files, the sha256 of
 * every CHUNK_SIZE chunk. Two things make this fast without weakening it:
 *  - at checkpoint time, a follower hashes CRIU's page images while CRIU is
 *    still writing them (reading only below the current file size, which the
 *    kernel advances after the data is in the page cache), so hashing hides
 *    behind the dump on the other core;
 *  - at restore time, chunks are verified on worker threads in parallel: with
 *    the size checked, every byte is covered by exactly one chunk digest, so a
 *    match of all chunks is a match of the file.
 */
export const CHUNK_SIZE = 32 * 1024 * 1024;
const READ_SIZE = 4 * 1024 * 1024;

export interface Digest {
  size: number;
  sha256: string;
  chunks?: string[];
}

/** Incremental whole-file + per-chunk hashing over a byte stream fed in order. */
export class ChunkedHasher {
  private readonly whole: Hash = createHash('sha256');
  private chunk: Hash = createHash('sha256');
  private inChunk = 0;
  private readonly chunks: string[] = [];
  size = 0;

  update(buf: Buffer): void {
    this.whole.update(buf);
    let off = 0;
    while (off < buf.length) {
      const take = Math.min(buf.length - off, CHUNK_SIZE - this.inChunk);
      this.chunk.update(buf.subarray(off, off + take));
      this.inChunk += take;
      off += take;
      if (this.inChunk === CHUNK_SIZE) {
        this.chunks.push(this.chunk.digest('hex'));
        this.chunk = createHash('sha256');
        this.inChunk = 0;
      }
    }
    this.size += buf.length;
  }

  digest(): Digest {
    if (this.inChunk > 0 || this.chunks.length === 0) this.chunks.push(this.chunk.digest('hex'));
    const sha256 = this.whole.digest('hex');
    // Small files are checked whole; the chunk list only helps large ones.
    return this.size > CHUNK_SIZE ? { size: this.size, sha256, chunks: this.chunks } : { size: this.size, sha256 };
  }
}

export async function digestFile(file: string): Promise<Digest> {
  const h = new ChunkedHasher();
  const fh = await fsp.open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(READ_SIZE);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, READ_SIZE, h.size);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest();
}

/**
 * Hash (and optionally make durable, step by step) the files matching
 * `pattern` in `dir` while another process is still appending to them.
 * finish() is called once the writer is done; it returns the digests of the
 * followed files. A followed file that shrank is re-hashed from scratch.
 */
export class DigestFollower {
  private done = false;
  private readonly followed = new Map<string, Promise<Digest>>();
  private readonly scanner: Promise<void>;
  private failure: unknown;

  constructor(
    private readonly dir: string,
    private readonly pattern: RegExp,
    private readonly opts: { fsync: boolean; pollMs?: number } = { fsync: false },
  ) {
    this.scanner = this.scan();
  }

  private async scan(): Promise<void> {
    for (;;) {
      const finishing = this.done;
      for (const name of await fsp.readdir(this.dir).catch(() => [] as string[])) {
        if (this.pattern.test(name) && !this.followed.has(name)) {
          const p = this.follow(path.join(this.dir, name));
          p.catch((err) => (this.failure ??= err));
          this.followed.set(name, p);
        }
      }
      if (finishing) return;
      await sleep(this.opts.pollMs ?? 15);
    }
  }

  private async follow(file: string): Promise<Digest> {
    const fh = await fsp.open(file, 'r');
    try {
      const h = new ChunkedHasher();
      const buf = Buffer.allocUnsafe(READ_SIZE);
      let syncedAt = 0;
      for (;;) {
        const finishing = this.done;
        const { size } = await fh.stat();
        if (size < h.size) return await digestFile(file); // rewritten: start over
        while (h.size < size) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(READ_SIZE, size - h.size), h.size);
          if (bytesRead === 0) break;
          h.update(buf.subarray(0, bytesRead));
        }
        // Start writeback early so the final fsync has little left to do.
        if (this.opts.fsync && h.size - syncedAt >= 4 * READ_SIZE) {
          await fh.datasync();
          syncedAt = h.size;
        }
        if (finishing) {
          if (this.opts.fsync) await fh.datasync();
          return h.digest();
        }
        await sleep(this.opts.pollMs ?? 15);
      }
    } finally {
      await fh.close();
    }
  }

  /** The writer is done: hash what is left; digests by file name. */
  async finish(): Promise<Map<string, Digest>> {
    this.done = true;
    await this.scanner;
    const out = new Map<string, Digest>();
    for (const [name, p] of this.followed) out.set(name, await p);
    if (this.failure) throw this.failure;
    return out;
  }

  /** Abandon (the dump failed): stop reading, close files. */
  async cancel(): Promise<void> {
    this.done = true;
    await this.scanner.catch(() => undefined);
    await Promise.allSettled(this.followed.values());
  }
}

/**
 * Worker thread body: sha256 of one byte range of a file per message.
 * Inline (eval) so it works the same from dist/ and from the bundled shim.
 */
const HASH_WORKER_SOURCE = `
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const { parentPort } = require('node:worker_threads');
const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
parentPort.on('message', (job) => {
  try {
    const h = createHash('sha256');
    const fd = fs.openSync(job.file, 'r');
    try {
      let pos = job.start;
      while (pos < job.end) {
        const n = fs.readSync(fd, buf, 0, Math.min(buf.length, job.end - pos), pos);
        if (n === 0) break;
        h.update(buf.subarray(0, n));
        pos += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    parentPort.postMessage({ hex: h.digest('hex') });
  } catch (err) {
    parentPort.postMessage({ error: err.message });
  }
});
`;

/** Hash byte ranges of files on worker threads; returns hex digests in job order. */
export async function hashRanges(jobs: { file: string; start: number; end: number }[]): Promise<string[]> {
  if (jobs.length === 0) return [];
  const lanes = Math.max(1, Math.min(os.availableParallelism?.() ?? os.cpus().length, 4, jobs.length));
  const results: string[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: lanes }, async () => {
      const w = new Worker(HASH_WORKER_SOURCE, { eval: true });
      try {
        while (next < jobs.length) {
          const i = next++;
          results[i] = await new Promise<string>((resolve, reject) => {
            w.once('message', (m: { hex?: string; error?: string }) => (m.error ? reject(new Error(m.error)) : resolve(m.hex!)));
            w.once('error', reject);
            w.postMessage(jobs[i]);
          });
          w.removeAllListeners('error');
        }
      } finally {
        await w.terminate();
      }
    }),
  );
  return results;
}
