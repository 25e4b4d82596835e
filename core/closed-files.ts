import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { openBeneath } from './host-dirs.js';
import { isPlainRelativePath } from './paths.js';

/**
 * Files a job appends to by opening and closing them (Python's
 * `with open("results.csv", "a")` at every step) roll back with its
 * checkpoint too, in its work dir and its own volumes.
 *
 * Such a file is not open while the job is stopped for a checkpoint, so
 * CRIU knows nothing of it, and core/work-files.ts's roll-back of the files
 * it holds open does not see it. After a checkpoint that left the job
 * running, the lost run appended its later steps; the job restored from the
 * checkpoint appends them again: every line after the checkpoint twice.
 *
 * So a checkpoint records, while the job is stopped, each regular file of
 * the place that the job does not hold open: its size, inode, and a digest
 * of its last bytes (up to TAIL_BYTES before that size). A restore cuts a
 * file back to its recorded size only when it is still that file, longer,
 * and the bytes before the recorded size are still the recorded ones: what
 * was added since was appended, and the restored job appends it again. A
 * file rewritten since (a state file written whole: its bytes there differ),
 * shorter, replaced or gone is left as it is, and nothing refuses the
 * restore: the job rewrites such files itself. Paths are walked below the
 * place without following a symlink.
 *
 * The files the lost run made after the checkpoint are not the restored
 * job's: a SQLite rollback journal left by the lost run (killed in the
 * middle of a transaction) is taken as hot by the restored job's SQLite,
 * which plays it back into the database as it was at the checkpoint
 * ("database disk image is malformed"); a job that skips the steps whose
 * output exists would skip the ones the lost run did, and miss them in the
 * sums it keeps in memory. So where a checkpoint recorded every file of the
 * place (at most CLOSED_FILES_MAX), a restore moves each regular file it
 * did not record into SET_ASIDE_PREFIX<hex> at the top of the place, under
 * its path with "/" written "%2F": nothing is deleted, and the place looks
 * to the restored job as it did at the checkpoint.
 */
export interface ClosedFile {
  /** Relative to the place. */
  path: string;
  size: number;
  ino: string;
  /** sha256 (hex) of the bytes [size - TAIL_BYTES, size) (from 0 when shorter). */
  tail: string;
}

/** How many bytes before a file's recorded size must be unchanged for it to count as appended to. */
export const TAIL_BYTES = 4096;

/** At most this many files per place are recorded at each checkpoint (read while the job is stopped). */
export const CLOSED_FILES_MAX = 10_000;

/** Where a restore moves the files the lost run made after the checkpoint: ARCH's, never recorded or walked. */
export const SET_ASIDE_PREFIX = '.arch-after-checkpoint-';
const ARCH_OWN = /^\.arch-/;

/**
 * The regular files below `dir` (a host directory: for the work dir its
 * held /proc/self/fd path) other than `skip` (the files the job holds open,
 * rolled back by work-files.ts), at most `max`: `more` says whether some
 * were left out. ARCH's own entries at the top (.arch-*) are not the job's.
 */
export async function recordClosedFiles(
  dir: string,
  skip: ReadonlySet<string>,
  max = CLOSED_FILES_MAX,
): Promise<{ files: ClosedFile[]; more: boolean }> {
  const files: ClosedFile[] = [];
  const dirs = [''];
  while (dirs.length) {
    const rel = dirs.pop()!;
    const entries = await fsp.readdir(path.join(dir, rel), { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      if (!rel && ARCH_OWN.test(e.name)) continue;
      const p = rel ? `${rel}/${e.name}` : e.name;
      // Dirent types come from the directory itself: a symlink is neither a directory nor a file here.
      if (e.isDirectory()) dirs.push(p);
      if (!e.isFile() || skip.has(p) || !isPlainRelativePath(p)) continue;
      if (files.length >= max) return { files, more: true };
      const h = await openBeneath(dir, p, fs.constants.O_RDONLY).catch(() => undefined);
      if (!h) continue;
      try {
        const st = await h.stat({ bigint: true });
        const size = Number(st.size);
        files.push({ path: p, size, ino: st.ino.toString(), tail: await tailDigest(h, size) });
      } finally {
        await h.close();
      }
    }
  }
  return { files, more: false };
}

async function tailDigest(h: FileHandle, size: number): Promise<string> {
  const from = Math.max(0, size - TAIL_BYTES);
  const buf = Buffer.alloc(size - from);
  let got = 0;
  while (got < buf.length) {
    const { bytesRead } = await h.read(buf, got, buf.length - got, from + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return crypto.createHash('sha256').update(buf.subarray(0, got)).digest('hex');
}

/** A file cut back: from the size the lost run left to the recorded one. */
export interface ClosedFileCut {
  path: string;
  from: number;
  to: number;
}

/**
 * Each recorded file below `dir` that was appended to since (the same
 * inode, longer, its recorded tail unchanged) cut back to its recorded size;
 * anything else left as it is. Never throws for a file: a file that cannot
 * be opened, or is not what was recorded, is the job's to deal with.
 */
export async function cutAppendedFiles(dir: string, files: readonly ClosedFile[]): Promise<ClosedFileCut[]> {
  const cut: ClosedFileCut[] = [];
  for (const f of files) {
    if (!isPlainRelativePath(f.path)) continue;
    const h = await openBeneath(dir, f.path, fs.constants.O_RDWR).catch(() => undefined);
    if (!h) continue;
    try {
      const st = await h.stat({ bigint: true });
      const size = Number(st.size);
      if (st.ino.toString() !== f.ino || size <= f.size) continue;
      if ((await tailDigest(h, f.size)) !== f.tail) continue;
      await h.truncate(f.size);
      cut.push({ path: f.path, from: size, to: f.size });
    } finally {
      await h.close();
    }
  }
  return cut;
}

/**
 * Move each regular file below `dir` that is not in `recorded` (the paths a
 * checkpoint recorded there: every file it held open and every other one)
 * into a new SET_ASIDE_PREFIX directory at its top, walking directories
 * without following a symlink. Returns the paths moved and where to.
 */
export async function setAsideNewFiles(
  dir: string,
  recorded: ReadonlySet<string>,
): Promise<{ moved: string[]; to?: string }> {
  const moved: string[] = [];
  const root = await fsp.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  let hold: { fd: FileHandle; name: string } | undefined;
  const holdDir = async () => {
    if (hold) return hold;
    const name = `${SET_ASIDE_PREFIX}${crypto.randomBytes(8).toString('hex')}`;
    await fsp.mkdir(`/proc/self/fd/${root.fd}/${name}`, { mode: 0o700 });
    hold = { fd: await openDirAt(root.fd, name), name };
    return hold;
  };
  const walk = async (at: FileHandle, rel: string): Promise<void> => {
    const entries = await fsp.readdir(`/proc/self/fd/${at.fd}`, { withFileTypes: true });
    for (const e of entries) {
      if (!rel && ARCH_OWN.test(e.name)) continue;
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        const child = await openDirAt(at.fd, e.name).catch(() => undefined);
        if (!child) continue; // swapped for something else since the listing
        try {
          await walk(child, p);
        } finally {
          await child.close();
        }
      } else if (e.isFile() && !recorded.has(p)) {
        const h = await holdDir();
        // Both names resolved in directories held open: no symlink on the way is followed.
        await fsp.rename(`/proc/self/fd/${at.fd}/${e.name}`, `/proc/self/fd/${h.fd.fd}/${encodeURIComponent(p)}`);
        moved.push(p);
      }
    }
  };
  try {
    await walk(root, '');
  } finally {
    await hold?.fd.close();
    await root.close();
  }
  return { moved, ...(hold ? { to: hold.name } : {}) };
}

const openDirAt = (dirFd: number, name: string): Promise<FileHandle> =>
  fsp.open(
    `/proc/self/fd/${dirFd}/${name}`,
    fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW,
  );
