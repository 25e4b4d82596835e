import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Digest } from './digest.js';
import { CheckpointUnusableError } from './errors.js';
import { isAlive } from './pid.js';
import { describeFiles, listFiles, MANIFEST_FILE, parseManifest, verifyCheckpointDir, type Manifest } from './manifest.js';

/**
 * One container's checkpoints: <root>/<ns>/<id>/.
 *
 *   current -> ckpt-<time>-<rand>     symlink, swapped atomically (rename)
 *   ckpt-.../manifest.json, criu/, rootfs-diff.tar, deleted.files, config.json
 *   .staging-<pid>-<rand>/            a checkpoint being written
 *
 * A reader follows `current` and sees the previous complete checkpoint or the
 * new complete one, never a part: the new directory is written beside the old
 * one, fsynced, renamed into place, and only then does `current` move.
 */
export const CURRENT_LINK = 'current';
const CKPT_RE = /^ckpt-[0-9TZ-]+-[0-9a-f]{8}$/;
const STAGING_PREFIX = '.staging-';

export interface Staging {
  /** Directory to write the checkpoint's files into. */
  dir: string;
}

export class CheckpointStore {
  constructor(readonly containerDir: string) {}

  /** The published checkpoint directory, or null if there is none. */
  async current(): Promise<string | null> {
    let target: string;
    try {
      target = await fsp.readlink(path.join(this.containerDir, CURRENT_LINK));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return null;
      if (code === 'EINVAL') throw new CheckpointUnusableError('layout', `${CURRENT_LINK} in ${this.containerDir} is not a symlink`);
      throw err;
    }
    // The link is data from storage other nodes write: accept only our own names.
    if (!CKPT_RE.test(target)) throw new CheckpointUnusableError('layout', `${CURRENT_LINK} points to "${target}", not a checkpoint of this store`);
    return path.join(this.containerDir, target);
  }

  async readManifest(): Promise<Manifest | null> {
    const dir = await this.current();
    if (!dir) return null;
    return parseManifest(await fsp.readFile(path.join(dir, MANIFEST_FILE), 'utf8'));
  }

  /** Verified manifest of the current checkpoint; throws CheckpointUnusableError. */
  async verifyCurrent(): Promise<{ dir: string; manifest: Manifest }> {
    const dir = await this.current();
    if (!dir) throw new CheckpointUnusableError('missing', `no checkpoint in ${this.containerDir}`);
    return { dir, manifest: await verifyCheckpointDir(dir) };
  }

  async begin(): Promise<Staging> {
    await fsp.mkdir(this.containerDir, { recursive: true, mode: 0o700 });
    await this.removeDeadStagings();
    const dir = path.join(this.containerDir, `${STAGING_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
    await fsp.mkdir(dir, { mode: 0o700 });
    return { dir };
  }

  async abort(staging: Staging): Promise<void> {
    await fsp.rm(staging.dir, { recursive: true, force: true });
  }

  /**
   * Describe every file, write the manifest, make it durable and publish.
   * On any error the staging dir is removed and `current` is untouched.
   */
  async publish(
    staging: Staging,
    meta: Omit<Manifest, 'files'>,
    opts: {
      fsync: boolean;
      onPhase?: (phase: string, ms: number) => void;
      known?: Map<string, Digest>;
      /** Leave the previous checkpoint for the caller to prune() (after its time-critical part). */
      deferPrune?: boolean;
    },
  ): Promise<{ dir: string; manifest: Manifest; sizeBytes: number; prune: () => Promise<void> }> {
    let finalDir: string | undefined;
    let tmpLink: string | undefined;
    let linked = false;
    try {
      let t = Date.now();
      const files = await describeFiles(staging.dir, await listFiles(staging.dir), opts.known);
      opts.onPhase?.('digest', Date.now() - t);
      const manifest: Manifest = { ...meta, files };
      await fsp.writeFile(path.join(staging.dir, MANIFEST_FILE), JSON.stringify(manifest, null, 1));
      t = Date.now();
      if (opts.fsync) await fsyncTree(staging.dir);
      opts.onPhase?.('fsync', Date.now() - t);
      const name = `ckpt-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(4).toString('hex')}`;
      const previous = await this.current().catch(() => null);
      finalDir = path.join(this.containerDir, name);
      await fsp.rename(staging.dir, finalDir);
      tmpLink = path.join(this.containerDir, `.${CURRENT_LINK}-${randomBytes(4).toString('hex')}`);
      await fsp.symlink(name, tmpLink);
      await fsp.rename(tmpLink, path.join(this.containerDir, CURRENT_LINK));
      linked = true;
      if (opts.fsync) await fsyncDir(this.containerDir);
      const stale = previous && previous !== finalDir ? previous : undefined;
      const prune = async () => {
        if (stale) await fsp.rm(stale, { recursive: true, force: true });
      };
      if (!opts.deferPrune) await prune();
      const sizeBytes = files.reduce((a, f) => a + f.size, 0);
      return { dir: finalDir, manifest, sizeBytes, prune: opts.deferPrune ? prune : async () => undefined };
    } catch (err) {
      await this.abort(staging).catch(() => undefined);
      // Renamed but never made current: nobody would ever read or remove it.
      if (finalDir && !linked) await fsp.rm(finalDir, { recursive: true, force: true }).catch(() => undefined);
      if (tmpLink && !linked) await fsp.rm(tmpLink, { force: true }).catch(() => undefined);
      throw err;
    }
  }

  /** Remove every checkpoint of this container (after a clean exit). */
  async remove(): Promise<void> {
    await fsp.rm(this.containerDir, { recursive: true, force: true });
  }

  /** Staging dirs of processes that died mid-checkpoint (the live ones are left alone). */
  private async removeDeadStagings(): Promise<void> {
    for (const name of await fsp.readdir(this.containerDir)) {
      if (!name.startsWith(STAGING_PREFIX)) continue;
      const pid = Number(name.slice(STAGING_PREFIX.length).split('-')[0]);
      if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) continue;
      await fsp.rm(path.join(this.containerDir, name), { recursive: true, force: true });
    }
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync every file (in parallel: the kernel merges the writeback) and then the directories. */
async function fsyncTree(dir: string): Promise<void> {
  const dirs: string[] = [];
  const files: string[] = [];
  async function walk(d: string): Promise<void> {
    dirs.push(d);
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(path.join(d, e.name));
      else files.push(path.join(d, e.name));
    }
  }
  await walk(dir);
  await Promise.all(
    files.map(async (f) => {
      const fh = await fsp.open(f, 'r');
      try {
        await fh.datasync();
      } finally {
        await fh.close();
      }
    }),
  );
  for (const d of dirs.reverse()) await fsyncDir(d);
}
