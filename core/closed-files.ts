import crypto from 'node:crypto';
import fs from 'node:fs';
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
 * place (at most CLOSED_FILES_MAX entries), a restore moves each file it
 * did not record, and each directory and symlink (a directory whole: a job
 * that makes each step's output directory with mkdir died on the lost
 * run's), into SET_ASIDE_PREFIX<hex> at the top of the place, under its
 * path with "/" written "%2F": nothing is deleted, and the place looks to
 * the restored job as it did at the checkpoint.
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

/** What a checkpoint records of a place's files and directories that the job did not hold open. */
export interface RecordedEntries {
  files: ClosedFile[];
  /** Every directory, symlink and other entry that is not a regular file, by its path. */
  nonFiles: string[];
  /** More entries than CLOSED_FILES_MAX: some were left out. */
  more: boolean;
}

/**
 * The regular files below `dir` (a host directory: for the work dir its
 * held /proc/self/fd path) other than `skip` (the files the job holds open,
 * rolled back by work-files.ts), and the paths of everything else there
 * (directories, symlinks), at most `max` entries in all: `more` says
 * whether some were left out. ARCH's own entries at the top (.arch-*) are
 * not the job's.
 */
export async function recordClosedFiles(
  dir: string,
  skip: ReadonlySet<string>,
  max = CLOSED_FILES_MAX,
): Promise<RecordedEntries> {
  // Synchronous: the job is stopped while this runs, and a promise per system call (libuv's pool)
  // took ~1 ms per file on these VMs (10 s for 10,000 files); this takes a few microseconds each.
  const files: ClosedFile[] = [];
  const nonFiles: string[] = [];
  const buf = Buffer.allocUnsafe(TAIL_BYTES);
  let more = false;
  const root = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
  try {
    walkSync(root, '', (dirFd, name, p, kind) => {
      if (skip.has(p) || !isPlainRelativePath(p)) return 'skip';
      if (files.length + nonFiles.length >= max) {
        more = true;
        return 'stop';
      }
      if (kind !== 'file') {
        nonFiles.push(p);
        return 'go';
      }
      const f = readTailSync(dirFd, name, buf);
      if (f) files.push({ path: p, ...f });
      return 'go';
    });
  } finally {
    fs.closeSync(root);
  }
  return { files, nonFiles, more };
}

type EntryKind = 'file' | 'dir' | 'other';

/**
 * Each entry below the directory open as `dirFd`, passed to `visit` (by its
 * directory's descriptor, its name, its path and its kind) before a
 * directory is entered: 'go' on (into a directory), 'skip' (not into it),
 * 'stop' the whole walk. Each directory is opened without following a
 * symlink from the one before it. ARCH's own entries at the top (.arch-*)
 * are not the job's. False when stopped.
 */
function walkSync(
  dirFd: number,
  rel: string,
  visit: (dirFd: number, name: string, p: string, kind: EntryKind) => 'go' | 'skip' | 'stop',
): boolean {
  for (const e of fs.readdirSync(`/proc/self/fd/${dirFd}`, { withFileTypes: true })) {
    if (!rel && ARCH_OWN.test(e.name)) continue;
    const p = rel ? `${rel}/${e.name}` : e.name;
    const kind: EntryKind = e.isFile() ? 'file' : e.isDirectory() ? 'dir' : 'other';
    const next = visit(dirFd, e.name, p, kind);
    if (next === 'stop') return false;
    if (next === 'skip' || kind !== 'dir') continue;
    let child: number;
    try {
      child = fs.openSync(`/proc/self/fd/${dirFd}/${e.name}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    } catch {
      continue; // swapped for something else since the listing
    }
    try {
      if (!walkSync(child, p, visit)) return false;
    } finally {
      fs.closeSync(child);
    }
  }
  return true;
}

/** Linux's O_PATH (node does not export it): a handle on a name that opens nothing behind it. */
const O_PATH = 0o10000000;
const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW } = fs.constants;

/**
 * Size, inode and tail digest of the regular file `name` in the directory
 * open as `dirFd`: taken with O_PATH first (no device or FIFO behind a name
 * swapped since the listing is opened), never through a symlink.
 */
function readTailSync(dirFd: number, name: string, buf: Buffer): Omit<ClosedFile, 'path'> | undefined {
  let at: number;
  try {
    at = fs.openSync(`/proc/self/fd/${dirFd}/${name}`, O_PATH | O_NOFOLLOW);
  } catch {
    return undefined;
  }
  try {
    const st = fs.fstatSync(at, { bigint: true });
    if (!st.isFile()) return undefined;
    const fd = fs.openSync(`/proc/self/fd/${at}`, O_RDONLY);
    try {
      const size = Number(st.size);
      return { size, ino: st.ino.toString(), tail: tailDigest(fd, size, buf) };
    } finally {
      fs.closeSync(fd);
    }
  } finally {
    fs.closeSync(at);
  }
}

/** sha256 (hex) of the bytes [size - TAIL_BYTES, size) of `fd` (fewer where it ends before), read into `buf`. */
function tailDigest(fd: number, size: number, buf: Buffer): string {
  const from = Math.max(0, size - TAIL_BYTES);
  let got = 0;
  while (got < size - from) {
    const n = fs.readSync(fd, buf, got, size - from - got, from + got);
    if (n === 0) break;
    got += n;
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
  const buf = Buffer.allocUnsafe(TAIL_BYTES);
  for (const f of files) {
    if (!isPlainRelativePath(f.path)) continue;
    // Most files did not grow: one lstat tells (it may pass through a symlink on the way, so it only
    // picks the candidates; each is then opened below the place without following one).
    const now = lstatOrNot(path.join(dir, f.path));
    if (!now?.isFile() || now.ino.toString() !== f.ino || Number(now.size) <= f.size) continue;
    const h = await openBeneath(dir, f.path, fs.constants.O_RDWR).catch(() => undefined);
    if (!h) continue;
    try {
      const st = await h.stat({ bigint: true });
      const size = Number(st.size);
      if (st.ino.toString() !== f.ino || size <= f.size) continue;
      if (tailDigest(h.fd, f.size, buf) !== f.tail) continue;
      await h.truncate(f.size);
      cut.push({ path: f.path, from: size, to: f.size });
    } finally {
      await h.close();
    }
  }
  return cut;
}

/**
 * Move what the lost run made below `dir` after the checkpoint into a new
 * SET_ASIDE_PREFIX directory at its top, walking directories without
 * following a symlink: each regular file not in `recorded` (the paths a
 * checkpoint recorded there: every file it held open and every other one)
 * and, with `nonFiles` (the directories, symlinks and other entries it
 * recorded; absent in checkpoints from before ARCH recorded them), each
 * other entry not among them, a directory whole (a job that makes a step's
 * directory with mkdir failed on the lost run's). Returns the paths moved
 * and where to.
 */
export function setAsideNewFiles(
  dir: string,
  recorded: ReadonlySet<string>,
  nonFiles?: ReadonlySet<string>,
): { moved: string[]; to?: string } {
  const moved: string[] = [];
  const root = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
  let hold: { fd: number; name: string } | undefined;
  try {
    walkSync(root, '', (dirFd, name, p, kind) => {
      if (kind === 'file' ? recorded.has(p) : !nonFiles || nonFiles.has(p)) return 'go';
      if (!hold) {
        const holdName = `${SET_ASIDE_PREFIX}${crypto.randomBytes(8).toString('hex')}`;
        fs.mkdirSync(`/proc/self/fd/${root}/${holdName}`, { mode: 0o700 });
        hold = {
          fd: fs.openSync(`/proc/self/fd/${root}/${holdName}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW),
          name: holdName,
        };
      }
      // Both names resolved in directories held open: no symlink on the way is followed.
      fs.renameSync(`/proc/self/fd/${dirFd}/${name}`, `/proc/self/fd/${hold.fd}/${encodeURIComponent(p)}`);
      moved.push(p);
      return 'skip';
    });
  } finally {
    if (hold) fs.closeSync(hold.fd);
    fs.closeSync(root);
  }
  return { moved, ...(hold ? { to: hold.name } : {}) };
}

function lstatOrNot(p: string): fs.BigIntStats | undefined {
  try {
    return fs.lstatSync(p, { bigint: true });
  } catch {
    return undefined;
  }
}
