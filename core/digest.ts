import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import { GrowingFilesDigest, helperThreadsBesideCriu, Nap } from './growing-files.js';

/**
 * File digests for checkpoint manifests: every file's size and sha256.
 *
 * Hashing is the one cost ARCH adds to every byte of a checkpoint, so it is
 * kept off the critical path where it can be:
 *  - at checkpoint time a follower hashes CRIU's page images while CRIU
 *    is still writing them (reading only below the current file size, which
 *    the kernel advances once the data is in the page cache), on a worker
 *    thread or, on 2 cores, on the checkpointing thread (DigestFollower); on
 *    the core CRIU leaves it keeps pace with the dump, so little is left when
 *    CRIU is done;
 *  - when verifying (transfers, `verifyCurrent`), large files are hashed on
 *    worker threads, one file per thread, while the main thread checks the
 *    small ones; the shim hashes on its own thread (see
 *    hashOnThisThreadOnly), its page images while runc restores them.
 * Reads are synchronous (no thread-pool round trip per block), which is what
 * lets one thread reach openssl's speed.
 */
export interface Digest {
  size: number;
  sha256: string;
}

/**
 * Whether digestFiles hashes on worker threads. The shim hashes on its own
 * thread (shim/entry.ts): it has that thread to itself while it waits for
 * runc, and what it verifies before runc starts is small files, for which
 * starting a thread costs more than hashing them.
 */
let workerThreads = true;
export function hashOnThisThreadOnly(): void {
  workerThreads = false;
}
/**
 * Whether this process may start worker threads: always, since the shim's
 * bundle loads worker_threads only after its start-up snapshot is
 * deserialized (shim/worker-threads-lazy.ts says why that matters).
 */
export const usesWorkerThreads = (): boolean => true;

/** Files above this are hashed on worker threads when verifying. */
const WORKER_MIN_BYTES = 1024 * 1024;
const READ_SIZE = 4 * 1024 * 1024;

/** Incremental sha256 + size over a byte stream fed in order (e.g. a download). */
export class StreamDigest {
  private readonly hash: Hash = createHash('sha256');
  size = 0;

  update(buf: Buffer): void {
    this.hash.update(buf);
    this.size += buf.length;
  }

  digest(): Digest {
    return { size: this.size, sha256: this.hash.digest('hex') };
  }
}

/**
 * sha256 of a file on the calling thread (small files; all of them in the
 * shim). Synchronous reads (no thread-pool round trip per block), with a
 * turn for the event loop after every full buffer: a small file is hashed
 * in one go, a large one lets whatever else this thread serves (runc's
 * exit, the workers' replies) in every READ_SIZE bytes. `buf` is the
 * caller's read buffer, one per digestFilesHere call: a checkpoint has dozens of
 * small files, and a fresh 4 MiB buffer per file cost more (allocation and
 * the garbage collections it caused) than hashing them. Not a module-level
 * buffer: that would live on in the shim's start-up snapshot (4 MiB more to
 * load at every start).
 */
async function digestFileHere(file: string, buf: Buffer): Promise<Digest> {
  const fd = fs.openSync(file, 'r');
  try {
    const h = new StreamDigest();
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, h.size);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      if (n === buf.length) await new Promise((r) => setImmediate(r));
    }
    return h.digest();
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The worker threads' module (digest-worker.ts), resolved when a thread
 * starts. From dist/core/digest.js and from the shim's bundle
 * (dist/shim/arch-runc.cjs, whose import.meta.url package.json's
 * bundle:shim defines) alike, '../core/' leads to dist/core.
 */
const workerFile = (): URL => new URL('../core/digest-worker.js', import.meta.url);

type WorkerReply = { error?: string } & Partial<Digest> & { digests?: [string, Digest][] };

/** A worker's next message; its `error` field, or the thread's own error, rejects. */
export function workerReply<T extends { error?: string }>(w: Worker): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: T) => {
      w.off('error', onError);
      if (m.error) reject(new Error(m.error));
      else resolve(m);
    };
    const onError = (err: Error) => {
      w.off('message', onMessage);
      reject(err);
    };
    w.once('message', onMessage);
    w.once('error', onError);
  });
}

/**
 * Digests of many files, in input order: large ones on worker threads
 * (largest first, one file per thread at a time), small ones here meanwhile;
 * all of them here in a process that hashes on its own thread only (the shim).
 */
export async function digestFiles(files: string[], opts: { sizes?: number[] } = {}): Promise<Digest[]> {
  if (!workerThreads) return digestFilesHere(files);
  const out: Digest[] = new Array(files.length);
  // stat synchronously: microseconds each, where a thread-pool round trip per file costs more than the hashing.
  const sizes = opts.sizes ?? files.map((f) => fs.statSync(f).size);
  const large = files
    .map((_, i) => i)
    .filter((i) => sizes[i]! > WORKER_MIN_BYTES)
    .sort((a, b) => sizes[b]! - sizes[a]!);
  const small = files.map((_, i) => i).filter((i) => sizes[i]! <= WORKER_MIN_BYTES);
  const cpus = Math.max(1, Math.min(os.availableParallelism?.() ?? os.cpus().length, 4));
  const workers = Math.min(large.length, cpus);
  let next = 0;
  const pool = Array.from({ length: Math.max(0, workers) }, async () => {
    const w = new Worker(workerFile());
    try {
      while (next < large.length) {
        const i = large[next++]!;
        const reply = workerReply<WorkerReply>(w);
        w.postMessage({ file: files[i] });
        const r = await reply;
        out[i] = { size: r.size!, sha256: r.sha256! };
      }
    } finally {
      await w.terminate();
    }
  });
  const here = digestFilesHere(small.map((i) => files[i]!)).then((ds) => ds.forEach((d, k) => (out[small[k]!] = d)));
  await Promise.all([...pool, here]);
  return out;
}

/** Digests of many files, in input order, all on this thread (digestFileHere: it yields between 4 MiB reads). */
export async function digestFilesHere(files: string[]): Promise<Digest[]> {
  const out: Digest[] = [];
  const buf = files.length ? Buffer.allocUnsafe(READ_SIZE) : Buffer.alloc(0);
  for (const f of files) out.push(await digestFileHere(f, buf));
  return out;
}

/**
 * Hash the files matching `pattern` in `dir` while another process is still
 * writing them (CRIU's page images): on a worker thread where a core is left
 * for one beside CRIU and this thread (helperThreadsBesideCriu), else on
 * this thread, a READ_SIZE block per turn of its event loop. With
 * `writeback`, this thread meanwhile fdatasyncs each file every
 * WRITEBACK_STEP bytes, so the disk writes overlap the dump and the
 * publishing fsync has little left. Start it with DigestFollower.start().
 * finish() is called once the writer is done and returns the digests by
 * file name; cancel() abandons it (the dump failed).
 */
const WRITEBACK_STEP = 32 * 1024 * 1024;
/** How often the files are looked at for new bytes, when nothing is left to hash. */
const FOLLOW_MS = 5;

export class DigestFollower {
  private readonly result: Promise<[string, Digest][]>;
  private stopped = false;
  private cancelled = false;
  private readonly nap = new Nap();
  private readonly writer: Promise<void>;
  private readonly worker?: Worker;

  static async start(
    dir: string,
    pattern: RegExp,
    opts: { writeback?: boolean; threads?: number } = {},
  ): Promise<DigestFollower> {
    return new DigestFollower(dir, pattern, opts);
  }

  private constructor(
    private readonly dir: string,
    private readonly pattern: RegExp,
    opts: { writeback?: boolean; threads?: number },
  ) {
    if ((opts.threads ?? helperThreadsBesideCriu(1)) > 0 && workerThreads) {
      this.worker = new Worker(workerFile(), { workerData: { follow: { dir, pattern: pattern.source } } });
      this.result = workerReply<WorkerReply>(this.worker).then((r) => r.digests ?? []);
    } else {
      this.result = this.followHere();
    }
    this.result.catch(() => undefined); // observed by finish(); cancel() may never look
    this.writer = opts.writeback ? this.writeback() : Promise.resolve();
  }

  /** This thread's follower: a block at a time, a turn for the event loop (runc's exit, the fdatasyncs) between. */
  private async followHere(): Promise<[string, Digest][]> {
    const files = new GrowingFilesDigest(this.dir, this.pattern);
    const buf = Buffer.allocUnsafe(READ_SIZE);
    try {
      for (;;) {
        const last = this.stopped;
        while (!this.cancelled && files.catchUp(buf, buf.length)) await new Promise((r) => setImmediate(r));
        if (this.cancelled) return [];
        if (last) return files.finish();
        if (!this.stopped) await this.nap.for(FOLLOW_MS);
      }
    } finally {
      files.close();
    }
  }

  private async writeback(): Promise<void> {
    const synced = new Map<string, number>();
    while (!this.stopped) {
      for (const name of await fsp.readdir(this.dir).catch(() => [] as string[])) {
        if (!this.pattern.test(name)) continue;
        const file = path.join(this.dir, name);
        const size = await fsp.stat(file).then(
          (st) => st.size,
          () => 0,
        );
        if (size - (synced.get(name) ?? 0) < WRITEBACK_STEP) continue;
        const fh = await fsp.open(file, 'r').catch(() => undefined);
        if (!fh) continue;
        try {
          await fh.datasync();
          synced.set(name, size);
        } catch {
          // only an early start: the publishing fsync reports real errors
        } finally {
          await fh.close();
        }
      }
      await sleep(10);
    }
  }

  async finish(): Promise<Map<string, Digest>> {
    this.stopped = true;
    this.nap.wake();
    this.worker?.postMessage('finish');
    try {
      const [digests] = await Promise.all([this.result, this.writer]);
      return new Map(digests);
    } finally {
      await this.worker?.terminate();
    }
  }

  async cancel(): Promise<void> {
    this.stopped = this.cancelled = true;
    this.nap.wake();
    await Promise.all([this.worker?.terminate(), this.writer, this.worker ? undefined : this.result]);
  }
}
