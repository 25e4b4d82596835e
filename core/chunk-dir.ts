import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { isChunkId } from './chunk-codec.js';
import { syncsInFlight } from './thread-pool.js';

/**
 * Where a container's v2 checkpoints keep their chunks: <containerDir>/chunks/<first 2 hex>/<id>.
 * A chunk file appears only complete (written beside, made durable, renamed):
 * a reader sees it whole or not at all, so its presence is enough to skip
 * writing it again.
 */
export const CHUNKS_DIR = 'chunks';
/** A chunk being written (ChunkDir.stage, put): `.tmp-<pid>-<rand>` beside where it will be named. */
export const TMP_PREFIX = '.tmp-';
/** fsyncs (and renames) in flight at once when staged chunks are committed (the kernel merges their writeback). */
const SYNC_LANES = 16;
/**
 * fdatasyncs in flight at once while chunks are still being written: each holds a libuv thread,
 * which the other file work needs too (2 with libuv's default pool, 12 with the launchers': core/thread-pool.ts).
 */
const SYNC_EARLY = syncsInFlight();

/** `f` over `items`, `n` at a time. */
async function lanes<T>(items: T[], n: number, f: (item: T) => Promise<unknown> | undefined): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await f(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, lane));
}

async function syncFile(file: string): Promise<void> {
  const fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}
/** chunks/.collected: its mtime is when the collector last went through the chunks (chunk-gc.ts). */
export const COLLECTED_MARK = '.collected';
/** Chunks the collector set aside (chunk-gc.ts): `.trash-<ms since epoch>/<id>`, deleted a grace period later unless taken back. */
export const TRASH_PREFIX = '.trash-';

export interface ChunkWriteStats {
  /** Chunks written (new). */
  written: number;
  /** Bytes written (stored, i.e. compressed/encrypted). */
  bytes: number;
  /** Chunks already in the store (touched, not written). */
  reused: number;
}

/**
 * Where chunks are kept, as the chunk code (chunked-files.ts) and the
 * publisher (store.ts) use it: a local ChunkDir, or a bucket (s3-store.ts).
 * A chunk appears only complete in either, so presence is enough to skip
 * writing it again.
 */
export interface ChunkStore {
  /** For messages: the directory or the s3:// place. */
  readonly where: string;
  /**
   * True when the chunk is there (then marked as in use now, for a collector
   * running meanwhile). `mayMiss`: a chunk the collector set aside since the
   * store last looked may be reported missing (it is then written again).
   */
  reuse(id: string, mayMiss?: boolean): Promise<boolean>;
  put(id: string, bytes: Buffer, fsync: boolean): Promise<void>;
  /** Write a new chunk as the dump goes; it need only be readable (and durable) after commitStaged(). */
  stage(id: string, bytes: Buffer): Promise<void>;
  /**
   * Where a new chunk may be written by whoever encodes it (a worker thread,
   * straight from its buffers), then handed back with adoptStaged(); absent
   * where chunks are not files (a bucket: stage() then).
   */
  stagePath?(id: string): Promise<string>;
  /** The chunk written at stagePath()'s place, its file still open as `fd` (taken over: closed here). */
  adoptStaged?(id: string, tmp: string, fd: number, fsync: boolean): void;
  /** Every staged chunk made durable and visible under its id. */
  commitStaged(fsync: boolean): Promise<void>;
  /** A checkpoint given up: its staged chunks removed where that is cheap (else the collector takes them). */
  dropStaged(): Promise<void>;
  /** The stored bytes of a chunk, undefined when it is not there; read into `into` when it fits (then a view of it). */
  get(id: string, into?: Buffer): Promise<Buffer | undefined>;
  /** Make what put() wrote durable (a no-op where each put already is). */
  syncDirs(): Promise<void>;
}

export class ChunkDir implements ChunkStore {
  readonly dir: string;
  private readonly made = new Set<string>();
  private readonly staged: { id: string; tmp: string; synced?: Promise<void> }[] = [];
  /** Staged chunk files waiting for their fdatasync (started while the dump goes on, SYNC_EARLY at a time). */
  private readonly toSync: { fd: number; done: () => void; fail: (e: Error) => void }[] = [];
  private syncing = 0;
  /** Directories checked to be real ones (not symlinks) by this instance. */
  private readonly real = new Set<string>();
  /** The trash dirs as trashDirs() last listed them (a readdir of the 256 subdirectories each time cost a writer ~30 ms a checkpoint). */
  private trashSeen?: string[];

  constructor(containerDir: string) {
    this.dir = path.join(containerDir, CHUNKS_DIR);
  }

  get where(): string {
    return this.dir;
  }

  pathOf(id: string): string {
    if (!isChunkId(id)) throw new Error(`"${id}" is not a chunk id`);
    return path.join(this.dir, id.slice(0, 2), id);
  }

  /**
   * Whoever can write the store could put a symlink where `chunks/` or one of
   * its subdirectories should be, and have chunks written, touched or
   * collected outside the store: those are used only as real directories.
   * False when `d` is not there.
   */
  private async realDir(d: string): Promise<boolean> {
    if (this.real.has(d)) return true;
    if (d !== this.dir && !(await this.realDir(this.dir))) return false;
    const st = await fsp.lstat(d).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (!st) return false;
    if (!st.isDirectory())
      throw new Error(
        `${d} is not a directory (a symlink?): not followed; the checkpoint store was changed by someone`,
      );
    this.real.add(d);
    return true;
  }

  /** The chunk's path, its directories checked first (undefined when they are not there). */
  private async placeOf(id: string): Promise<string | undefined> {
    const p = this.pathOf(id);
    return (await this.realDir(path.dirname(p))) ? p : undefined;
  }

  /**
   * True when the chunk is there; its mtime is then set to now, so that a
   * collector running meanwhile sees it as young (the retention rule in gc.ts).
   * `mayMiss`: the collector's trash dirs as this instance listed them
   * before will do (a writer asking whether to write a chunk: one missed in a
   * trash dir made since is only written again); otherwise they are listed
   * anew (publishing, where a chunk set aside must be found back).
   */
  async reuse(id: string, mayMiss = false): Promise<boolean> {
    const now = new Date();
    if (this.touchInPlace(await this.placeOf(id), now)) return true;
    if (!(await this.takeBack(id, mayMiss))) return false;
    await fsp.lutimes(this.pathOf(id), now, now);
    return true;
  }

  /**
   * True when `place` is a chunk file, then touched. Synchronous: two system
   * calls, where a round trip through libuv's pool each (busy with the
   * chunks' fdatasyncs) held up every chunk of a checkpoint, and the
   * publish's touch of ~130 chunks took 60-90 ms. lutimes: a chunk swapped
   * for a symlink after the lstat touches the link, not what it names.
   */
  private touchInPlace(place: string | undefined, now: Date): boolean {
    if (!place || !fs.lstatSync(place, { throwIfNoEntry: false })?.isFile()) return false;
    try {
      fs.lutimesSync(place, now, now);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false; // set aside meanwhile
      throw err;
    }
  }

  /** A chunk the collector set aside moved back into place (rename: atomic against the collector's delete). */
  async takeBack(id: string, mayMiss = false): Promise<boolean> {
    for (const t of mayMiss && this.trashSeen ? this.trashSeen : await this.trashDirs()) {
      try {
        await fsp.rename(path.join(this.dir, t, id), this.pathOf(id));
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return false;
  }

  /** The collector's trash dirs (real directories only: see realDir). */
  async trashDirs(): Promise<string[]> {
    if (!(await this.realDir(this.dir))) return [];
    const out: string[] = [];
    for (const n of await fsp.readdir(this.dir).catch(() => [] as string[]))
      if (n.startsWith(TRASH_PREFIX) && (await this.realDir(path.join(this.dir, n)).catch(() => false))) out.push(n);
    this.trashSeen = out;
    return out;
  }

  /** When the collector last went through the chunks (chunk-gc.ts): the mtime of its marker, undefined if never. */
  async lastCollected(): Promise<number | undefined> {
    if (!(await this.realDir(this.dir))) return undefined;
    const st = await fsp.lstat(path.join(this.dir, COLLECTED_MARK)).catch(() => undefined);
    return st?.isFile() ? st.mtimeMs : undefined;
  }

  /**
   * Record that the collector went through the chunks at `at`. The marker is
   * made without following a symlink, and without waiting on a FIFO, planted
   * there (O_NOFOLLOW, O_NONBLOCK): then it is not written, and the
   * collector goes through the chunks every time, as before it existed.
   */
  async markCollected(at: number): Promise<void> {
    if (!(await this.realDir(this.dir))) return;
    const { O_WRONLY, O_CREAT, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
    const fh = await fsp
      .open(path.join(this.dir, COLLECTED_MARK), O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK, 0o600)
      .catch(() => undefined);
    if (!fh) return;
    try {
      if ((await fh.stat()).isFile()) await fh.utimes(at / 1000, at / 1000);
    } finally {
      await fh.close();
    }
  }

  /** Every chunk in place, with its mtime. */
  async list(): Promise<{ id: string; mtimeMs: number }[]> {
    const out: { id: string; mtimeMs: number }[] = [];
    if (!(await this.realDir(this.dir))) return out;
    for (const sub of await fsp.readdir(this.dir).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{2}$/.test(sub) || !(await this.realDir(path.join(this.dir, sub)).catch(() => false))) continue;
      for (const name of await fsp.readdir(path.join(this.dir, sub)).catch(() => [] as string[])) {
        if (!isChunkId(name)) continue;
        const st = await fsp.stat(path.join(this.dir, sub, name)).catch(() => undefined);
        if (st) out.push({ id: name, mtimeMs: st.mtimeMs });
      }
    }
    return out;
  }

  /** Write a new chunk: durable (fsync) before it gets its name when `fsync`. */
  async put(id: string, bytes: Buffer, fsync: boolean): Promise<void> {
    const tmp = await this.writeBeside(id, bytes);
    if (fsync) await syncFile(tmp);
    await fsp.rename(tmp, this.pathOf(id));
  }

  /**
   * Write a new chunk under a temporary name; commitStaged() names it.
   * A checkpoint's chunks are all written first and made durable together
   * (one fsync each, in parallel, at the end), rather than the writer
   * waiting on the disk chunk by chunk while CRIU is still dumping.
   */
  async stage(id: string, bytes: Buffer): Promise<void> {
    this.staged.push({ id, tmp: await this.writeBeside(id, bytes) });
  }

  async stagePath(id: string): Promise<string> {
    const tmp = await this.tmpBeside(id);
    this.staged.push({ id, tmp });
    return tmp;
  }

  /**
   * With `fsync`, the file's fdatasync starts now, beside the dump, a few at
   * a time: the disk writes while chunks are still being made, and
   * commitStaged() finds most of them durable already. The fd is closed
   * once synced (at once without `fsync`).
   */
  adoptStaged(id: string, tmp: string, fd: number, fsync: boolean): void {
    const c = this.staged.find((s) => s.tmp === tmp && s.id === id);
    if (!c) {
      fs.close(fd, () => undefined);
      throw new Error(`${tmp}: not a staged chunk of this writer`);
    }
    if (!fsync) return fs.close(fd, () => undefined);
    c.synced = new Promise<void>((done, fail) => {
      this.toSync.push({ fd, done, fail });
      this.pumpSyncs();
    });
    c.synced.catch(() => undefined); // awaited by commitStaged or dropStaged
  }

  private pumpSyncs(): void {
    while (this.syncing < SYNC_EARLY && this.toSync.length > 0) {
      const { fd, done, fail } = this.toSync.shift()!;
      this.syncing++;
      fs.fdatasync(fd, (syncErr) =>
        fs.close(fd, (closeErr) => {
          this.syncing--;
          this.pumpSyncs();
          const e = syncErr ?? closeErr;
          if (e) fail(e);
          else done();
        }),
      );
    }
  }

  /** The staged chunks made durable (`fsync`), then named: a chunk file still appears only whole. */
  async commitStaged(fsync: boolean): Promise<void> {
    const staged = this.staged.splice(0);
    try {
      await Promise.all(staged.map((c) => c.synced));
    } catch (err) {
      this.staged.push(...staged); // for dropStaged
      throw err;
    }
    await lanes(
      staged.filter((c) => !c.synced),
      SYNC_LANES,
      (c) => (fsync ? syncFile(c.tmp) : undefined),
    );
    await lanes(staged, SYNC_LANES, (c) => fsp.rename(c.tmp, this.pathOf(c.id)));
  }

  /** Staged chunks never committed (the checkpoint failed) removed. */
  async dropStaged(): Promise<void> {
    const staged = this.staged.splice(0);
    await Promise.allSettled(staged.map((c) => c.synced)); // their fds closed
    for (const c of staged) await fsp.rm(c.tmp, { force: true });
  }

  private async writeBeside(id: string, bytes: Buffer): Promise<string> {
    const tmp = await this.tmpBeside(id);
    const fh = await fsp.open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(bytes);
    } finally {
      await fh.close();
    }
    return tmp;
  }

  /** A new temporary name beside where chunk `id` goes, its directories made (and checked) first. */
  private async tmpBeside(id: string): Promise<string> {
    const final = this.pathOf(id);
    const sub = path.dirname(final);
    if (!this.made.has(sub)) {
      if (!this.made.has(this.dir)) {
        await fsp.mkdir(path.dirname(this.dir), { recursive: true, mode: 0o700 }); // the container's dir (the store's own walk)
        // Made now: every chunk it will hold is younger than it, so a collection (chunk-gc.ts) finds
        // nothing to take for a grace period; marked as if collected, the first publishes skip the pass.
        if (await this.makeRealDir(this.dir)) await this.markCollected(Date.now());
        this.made.add(this.dir);
      }
      // Then one level at a time, each checked before the next is made in it (mkdir -p would follow a planted symlink).
      await this.makeRealDir(sub);
      this.made.add(sub);
    }
    return path.join(sub, `${TMP_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
  }

  /**
   * `d` made if it is not there (true: made by this call), and checked to be a real directory. Looked
   * at first: a store used before has most of its 256 subdirectories, and a
   * failed mkdir (an exception in Node) cost more than the lstat.
   */
  private async makeRealDir(d: string): Promise<boolean> {
    if (await this.realDir(d)) return false;
    const made = await fsp.mkdir(d, { mode: 0o700 }).then(
      () => true,
      (err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
        return false;
      },
    );
    if (!(await this.realDir(d))) throw new Error(`${d} disappeared while chunks were written`);
    return made;
  }

  /**
   * The stored bytes of a chunk (not through a symlink), or undefined when
   * it is not there. Read into `into` when it fits (the result is then a view
   * of it): a fresh buffer per chunk costs a page fault every 4 KiB on these VMs.
   */
  async get(id: string, into?: Buffer, retry = true): Promise<Buffer | undefined> {
    // Synchronous reads: a restore's assembly reads every chunk through here while its thread decodes
    // the last one, and a round trip through libuv's pool per open, stat, read and close cost more
    // than the reads themselves (a chunk is at most ~1 MiB, mostly in the page cache).
    const place = await this.placeOf(id);
    let fd: number | undefined;
    try {
      // O_NONBLOCK: a FIFO planted as a chunk would hold this thread in open() (refused below as not a file).
      if (place) fd = fs.openSync(place, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (fd === undefined) {
      // Set aside by a collector that read the manifests before this checkpoint was published: this checkpoint needs it.
      if (!retry || !(await this.takeBack(id))) return undefined;
      return this.get(id, into, false);
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new Error(`${place} is not a regular file: the checkpoint store was changed by someone`);
      const size = st.size;
      if (!into || size > into.length) return fs.readFileSync(fd);
      let got = 0;
      while (got < size) {
        const n = fs.readSync(fd, into, got, size - got, got);
        if (n === 0) break; // cut short meanwhile: what was read is checked like any chunk
        got += n;
      }
      return into.subarray(0, got);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Make the renames of new chunks durable (each chunk's data already is). */
  async syncDirs(): Promise<void> {
    for (const d of [...this.made, this.dir]) {
      const fh = await fsp.open(d, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
  }
}
