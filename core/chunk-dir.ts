import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { isChunkId } from './chunk-codec.js';

/**
 * Where a container's v2 checkpoints keep their chunks: <containerDir>/chunks/<first 2 hex>/<id>.
 * A chunk file appears only complete (written beside, made durable, renamed):
 * a reader sees it whole or not at all, so its presence is enough to skip
 * writing it again.
 */
export const CHUNKS_DIR = 'chunks';
const TMP_PREFIX = '.tmp-';
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

export class ChunkDir {
  readonly dir: string;
  private readonly made = new Set<string>();

  constructor(containerDir: string) {
    this.dir = path.join(containerDir, CHUNKS_DIR);
  }

  pathOf(id: string): string {
    if (!isChunkId(id)) throw new Error(`"${id}" is not a chunk id`);
    return path.join(this.dir, id.slice(0, 2), id);
  }

  /**
   * True when the chunk is there; its mtime is then set to now, so that a
   * collector running meanwhile sees it as young (the retention rule in gc.ts).
   */
  async reuse(id: string): Promise<boolean> {
    const now = new Date();
    try {
      await fsp.utimes(this.pathOf(id), now, now);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (!(await this.takeBack(id))) return false;
    await fsp.utimes(this.pathOf(id), now, now);
    return true;
  }

  /** A chunk the collector set aside moved back into place (rename: atomic against the collector's delete). */
  async takeBack(id: string): Promise<boolean> {
    for (const t of await this.trashDirs()) {
      try {
        await fsp.rename(path.join(this.dir, t, id), this.pathOf(id));
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return false;
  }

  async trashDirs(): Promise<string[]> {
    return (await fsp.readdir(this.dir).catch(() => [] as string[])).filter((n) => n.startsWith(TRASH_PREFIX));
  }

  /** Every chunk in place, with its mtime. */
  async list(): Promise<{ id: string; mtimeMs: number }[]> {
    const out: { id: string; mtimeMs: number }[] = [];
    for (const sub of await fsp.readdir(this.dir).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{2}$/.test(sub)) continue;
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
    const final = this.pathOf(id);
    const sub = path.dirname(final);
    if (!this.made.has(sub)) {
      await fsp.mkdir(sub, { recursive: true, mode: 0o700 });
      this.made.add(sub);
    }
    const tmp = path.join(sub, `${TMP_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
    const fh = await fsp.open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(bytes);
      if (fsync) await fh.datasync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, final);
  }

  /** The stored bytes of a chunk (not through a symlink), or undefined when it is not there. */
  async get(id: string, retry = true): Promise<Buffer | undefined> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(this.pathOf(id), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      // Set aside by a collector that read the manifests before this checkpoint was published: this checkpoint needs it.
      if (!retry || !(await this.takeBack(id))) return undefined;
      return this.get(id, false);
    }
    try {
      return await fh.readFile();
    } finally {
      await fh.close();
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
