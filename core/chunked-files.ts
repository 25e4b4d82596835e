import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { CheckpointUnusableError } from '../contract/errors.js';
import type { ChunkKeys } from './chunk-codec.js';
import type { ChunkStore, ChunkWriteStats } from './chunk-dir.js';
import { ChunkPool, type HeldChunk } from './chunk-pool.js';
import { Nap, openNewFiles } from './growing-files.js';

/**
 * Large checkpoint files (page images, the layer archive) to and from
 * chunks. Fixed-size chunks of CHUNK_BYTES (README "Checkpoint store v2"
 * says why not content-defined): a page image that changed in a few places
 * changes only the chunks those pages are in.
 */
export const CHUNK_BYTES = 1 << 20;
/** Chunks in flight at once (hashed, encoded or written; fetched on restore): keeps the workers and the disk or network busy. */
const IN_FLIGHT = 8;
/** A lane's read buffer on restore: a stored chunk of CHUNK_BYTES that did not compress fits (zstd's raw blocks, a seal). */
const READ_BYTES = CHUNK_BYTES + (64 << 10);
/** How often the dump's page images are looked at for new whole chunks (as core/digest-worker.ts follows them). */
const FOLLOW_MS = 5;

export interface ChunkRef {
  id: string;
  size: number;
}

export interface ChunkedFile {
  path: string;
  size: number;
  chunks: ChunkRef[];
}

/**
 * Chunks on their way into a chunk directory: each is hashed on a worker,
 * and only one the directory lacks (and this checkpoint has not met yet) is
 * compressed, encrypted and written; one already there is touched (reuse).
 * Each chunk file is complete before it gets its name (ChunkStore.stage or stagePath, then commitStaged), so a
 * manifest written after finish() names only chunks that are whole.
 */
export class ChunkWriter {
  readonly stats: ChunkWriteStats = { written: 0, bytes: 0, reused: 0 };
  private readonly seen = new Set<string>();
  private readonly inFlight = new Set<Promise<void>>();
  private failed: unknown;

  constructor(
    private readonly chunks: ChunkStore,
    private readonly pool: ChunkPool,
    private readonly fsync: boolean,
  ) {}

  /** Wait until another chunk may be started (bounds the memory the workers hold). */
  async slot(): Promise<void> {
    while (this.inFlight.size >= IN_FLIGHT) await Promise.race(this.inFlight);
    if (this.failed) throw this.failed;
  }

  /**
   * Start on `length` bytes of `fd` at `offset`; resolves to its ref once
   * hashed (its storing goes on). The fd must stay open until then.
   * `mayVanish`: the file may be cut short meanwhile (followed while
   * written): failing to read it rejects only the ref, for the caller to judge.
   */
  add(fd: number, offset: number, length: number, mayVanish = false): Promise<ChunkRef> {
    const hashed = this.pool.hash(fd, offset, length);
    const done = hashed
      .then(
        (h) => this.store(h),
        (e: unknown) => {
          if (!mayVanish) throw e;
        },
      )
      .catch((e: unknown) => void (this.failed ??= e))
      .finally(() => this.inFlight.delete(done));
    this.inFlight.add(done);
    const ref = hashed.then((h) => ({ id: h.id, size: length }));
    ref.catch(() => undefined); // observed by whoever awaits it; failures count through `failed` meanwhile
    return ref;
  }

  private async store(h: HeldChunk): Promise<void> {
    if (this.seen.has(h.id)) return this.pool.drop(h);
    this.seen.add(h.id);
    if (await this.chunks.reuse(h.id, true)) {
      this.stats.reused++;
      return this.pool.drop(h);
    }
    let size: number;
    if (this.chunks.stagePath && this.chunks.adoptStaged) {
      const tmp = await this.chunks.stagePath(h.id).catch((e: unknown) => {
        this.pool.drop(h);
        throw e;
      });
      const w = await this.pool.encodeTo(h, tmp);
      this.chunks.adoptStaged(h.id, tmp, w.fd, this.fsync);
      size = w.size;
    } else {
      const stored = await this.pool.encode(h);
      await this.chunks.stage(h.id, stored);
      size = stored.length;
    }
    this.stats.written++;
    this.stats.bytes += size;
  }

  /** Every chunk started is stored (the renames durable too with fsync). */
  async finish(): Promise<ChunkWriteStats> {
    await this.settle();
    if (this.failed) throw this.failed;
    await this.chunks.commitStaged(this.fsync);
    if (this.fsync && this.stats.written > 0) await this.chunks.syncDirs();
    return this.stats;
  }

  /** Nothing in flight any more (failed or not). */
  async settle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  /** Failed or abandoned: chunks written but never named are removed. */
  async abandon(): Promise<void> {
    await this.settle();
    await this.chunks.dropStaged();
  }
}

/** Chunk one whole file (relative to srcDir) through `writer`. */
async function chunkFile(srcDir: string, rel: string, writer: ChunkWriter): Promise<ChunkedFile> {
  const fd = fs.openSync(path.join(srcDir, rel), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  const refs: Promise<ChunkRef>[] = [];
  try {
    const size = fs.fstatSync(fd).size;
    for (let pos = 0; pos < size || refs.length === 0; pos += CHUNK_BYTES) {
      await writer.slot();
      refs.push(writer.add(fd, pos, Math.min(CHUNK_BYTES, size - pos)));
    }
    return { path: rel, size, chunks: await Promise.all(refs) };
  } finally {
    await Promise.allSettled(refs); // read by a worker until hashed
    fs.closeSync(fd);
  }
}

/**
 * The dump's page images chunked while CRIU writes them: every whole chunk
 * written so far is started on the workers (CRIU appends to a page image
 * and never goes back; a file that shrank was rewritten and is chunked
 * again at the end instead), the tail when CRIU is done. What is left for
 * publish is the last chunk of each file and the writes still in flight.
 */
export class ChunkFollower {
  private readonly files = new Map<string, { fd: number; pos: number; refs: Promise<ChunkRef>[]; redo: boolean }>();
  private stopping = false;
  private readonly nap = new Nap();
  private readonly loop: Promise<void>;
  private loopError: unknown;

  constructor(
    private readonly dir: string,
    private readonly pattern: RegExp,
    /** Path of the followed files relative to the directory storeChunked is given. */
    private readonly prefix: string,
    readonly writer: ChunkWriter,
  ) {
    this.loop = this.run().catch((e: unknown) => void (this.loopError = e));
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      await this.catchUp(false);
      if (!this.stopping) await this.nap.for(FOLLOW_MS);
    }
  }

  private async catchUp(last: boolean): Promise<void> {
    for (const [name, fd] of openNewFiles(this.dir, this.pattern, this.files))
      this.files.set(name, { fd, pos: 0, refs: [], redo: false });
    for (const f of this.files.values()) {
      if (f.redo) continue;
      const size = fs.fstatSync(f.fd).size;
      if (size < f.pos) {
        f.redo = true;
        continue;
      }
      while (f.pos + CHUNK_BYTES <= size || (last && (f.pos < size || f.refs.length === 0))) {
        const n = Math.min(CHUNK_BYTES, size - f.pos);
        await this.writer.slot();
        f.refs.push(this.writer.add(f.fd, f.pos, n, true));
        f.pos += n;
        if (n === 0) break;
      }
    }
  }

  /** CRIU is done: the rest started, and each followed file's chunk list (by path; a rewritten one is left out). */
  async finish(): Promise<Map<string, ChunkedFile>> {
    this.stopping = true;
    this.nap.wake();
    await this.loop;
    try {
      if (this.loopError) throw this.loopError;
      await this.catchUp(true);
      const out = new Map<string, ChunkedFile>();
      for (const [name, f] of this.files) {
        const settled = await Promise.allSettled(f.refs);
        if (!f.redo && fs.fstatSync(f.fd).size < f.pos) f.redo = true; // cut short after the last look
        if (f.redo) continue;
        const bad = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (bad) throw bad.reason;
        const chunks = settled.map((r) => (r as PromiseFulfilledResult<ChunkRef>).value);
        const rel = `${this.prefix}${name}`;
        out.set(rel, { path: rel, size: f.pos, chunks });
      }
      return out;
    } finally {
      await this.close();
    }
  }

  /** Stop following (the dump failed): nothing is published, chunks already written are the collector's. */
  async cancel(): Promise<void> {
    this.stopping = true;
    this.nap.wake();
    await this.loop;
    await this.close();
    await this.writer.abandon();
  }

  private async close(): Promise<void> {
    await this.writer.settle(); // a worker may still be reading one of these descriptors
    for (const f of this.files.values()) fs.closeSync(f.fd);
    this.files.clear();
  }
}

/**
 * Split each file (relative to srcDir) into chunks and put the new ones into
 * `chunks`. With `follower`, the files it followed are taken as it chunked
 * them (through its writer); the others go through that writer too.
 */
export async function storeChunked(
  srcDir: string,
  rels: string[],
  chunks: ChunkStore,
  opts: { keys?: ChunkKeys; fsync: boolean; follower?: ChunkFollower },
): Promise<{ files: ChunkedFile[]; stats: ChunkWriteStats }> {
  const pool = opts.follower ? undefined : new ChunkPool(opts.keys);
  const writer = opts.follower?.writer ?? new ChunkWriter(chunks, pool!, opts.fsync);
  try {
    const followed = opts.follower ? await opts.follower.finish() : new Map<string, ChunkedFile>();
    const files: ChunkedFile[] = [];
    for (const rel of rels) files.push(followed.get(rel) ?? (await chunkFile(srcDir, rel, writer)));
    return { files, stats: await writer.finish() };
  } catch (err) {
    await writer.abandon().catch(() => undefined);
    throw err;
  } finally {
    await writer.settle();
    await pool?.close();
  }
}

/**
 * Write every chunked file into destDir from its chunks, fetched in
 * parallel, each checked (decodeChunk) before a byte of it is written. A
 * chunk that is missing or bad throws CheckpointUnusableError naming it.
 *
 * `workers`: the pool's threads (0: this thread, as the shim restores: on
 * two cores a worker's start-up and its competition with CRIU cost more
 * than it saves). `partial`: each file is written as `<path>.part` and
 * renamed to its name only once every chunk of every file is written and
 * checked (a reader looking early, CRIU behind its gate, finds no file
 * rather than part of one). `signal`: stop early (the restore will not go on).
 */
export async function assembleChunked(
  files: ChunkedFile[],
  chunks: ChunkStore,
  destDir: string,
  keys?: ChunkKeys,
  opts: { workers?: number; partial?: boolean; signal?: AbortSignal } = {},
): Promise<void> {
  const jobs: { file: ChunkedFile; ref: ChunkRef; offset: number; index: number }[] = [];
  const handles = new Map<string, fsp.FileHandle>();
  const written = (file: ChunkedFile) => path.join(destDir, opts.partial ? `${file.path}.part` : file.path);
  const pool = new ChunkPool(keys, opts.workers);
  try {
    for (const file of files) {
      const dest = written(file);
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
    let failed = false;
    const lane = async (): Promise<void> => {
      // One read buffer per lane, reused for each of its chunks (fresh memory costs a fault a page).
      const into = Buffer.allocUnsafe(READ_BYTES);
      while (next < jobs.length && !failed) {
        const { file, ref, offset, index } = jobs[next++]!;
        const what = `${file.path}: chunk ${index + 1} of ${file.chunks.length} (${ref.id.slice(0, 12)})`;
        try {
          opts.signal?.throwIfAborted();
          const stored = await chunks.get(ref.id, into);
          if (!stored) throw new CheckpointUnusableError('truncated', `${what} is missing from the store`);
          await pool.decode(stored, ref.id, ref.size, what, handles.get(file.path)!.fd, offset);
        } catch (e) {
          failed = true;
          throw e;
        }
      }
    };
    const lanes = Array.from({ length: Math.min(IN_FLIGHT, jobs.length) }, lane);
    // Every lane stopped before the files are closed (a worker writes to their descriptors).
    const results = await Promise.allSettled(lanes);
    const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (bad) throw bad.reason;
    if (opts.partial) for (const file of files) await fsp.rename(written(file), path.join(destDir, file.path));
  } finally {
    await pool.close();
    for (const fh of handles.values()) await fh.close().catch(() => undefined);
  }
}
