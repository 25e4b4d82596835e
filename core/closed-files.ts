import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { FileHandle } from 'node:fs/promises';
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
 *
 * The files the lost run deleted, moved away or replaced by a new file
 * under their name are put back: a job that consumes its input files (reads
 * each, then deletes it or moves it to done/) found the lost run's inputs
 * gone and failed, or skipped them. Each checkpoint gives every file it
 * records a second name (a hard link: no data copied) in a directory of its
 * own at the top of the place (LINKS_PREFIX); a restore links a missing
 * file back from there when it is still the recorded one. The newest
 * ARCH_KEEP such directories are kept, as the store keeps its checkpoints:
 * the space of a file the job deleted is freed once they are let go.
 */
export interface ClosedFile {
  /** Relative to the place. */
  path: string;
  size: number;
  ino: string;
  /** sha256 (hex) of the bytes [size - TAIL_BYTES, size) (from 0 when shorter). */
  tail: string;
  /** Its modification time then, in ns; absent in checkpoints from before ARCH recorded it. */
  mtimeNs?: string;
}

/** How many bytes before a file's recorded size must be unchanged for it to count as appended to. */
export const TAIL_BYTES = 4096;

/** At most this many files per place are recorded at each checkpoint (read while the job is stopped). */
export const CLOSED_FILES_MAX = 10_000;

/** Where a restore moves the files the lost run made after the checkpoint: ARCH's, never recorded or walked. */
export const SET_ASIDE_PREFIX = '.arch-after-checkpoint-';
const ARCH_OWN = /^\.arch-/;

/** Where a checkpoint keeps a second name of every file it records: LINKS_PREFIX<ms>-<hex> at the top of the place. */
export const LINKS_PREFIX = '.arch-checkpoint-files-';
export const LINKS_NAME = /^\.arch-checkpoint-files-\d{13}-[0-9a-f]{8}$/;

/** What a checkpoint records of a place's files and directories that the job did not hold open. */
export interface RecordedEntries {
  files: ClosedFile[];
  /** Every directory, symlink and other entry that is not a regular file, by its path. */
  nonFiles: string[];
  /** More entries than CLOSED_FILES_MAX: some were left out. */
  more: boolean;
  /**
   * The directory (LINKS_PREFIX…, at the top of the place) holding a second
   * name (a hard link) of each recorded file, files[i] as `i`: the file as
   * it was outlives a lost run that deletes it, moves it, or replaces it by
   * a new file under its name (the files the job holds open have theirs
   * there too: linkOpenFiles). Absent when asked for none.
   */
  links?: string;
}

/**
 * The regular files below `dir` (a host directory: for the work dir its
 * held /proc/self/fd path) other than `skip` (the files the job holds open,
 * rolled back by work-files.ts), and the paths of everything else there
 * (directories, symlinks), at most `max` entries in all: `more` says
 * whether some were left out. ARCH's own entries at the top (.arch-*) are
 * not the job's. With `links`, each recorded file gets a second name in a
 * new LINKS_PREFIX directory (see RecordedEntries): one link(2) each, no
 * data copied.
 */
export async function recordClosedFiles(
  dir: string,
  skip: ReadonlySet<string>,
  max = CLOSED_FILES_MAX,
  opts: { links?: boolean } = {},
): Promise<RecordedEntries> {
  // Synchronous: the job is stopped while this runs, and a promise per system call (libuv's pool)
  // took ~1 ms per file on these VMs (10 s for 10,000 files); this takes a few microseconds each.
  const files: ClosedFile[] = [];
  const nonFiles: string[] = [];
  const buf = Buffer.allocUnsafe(TAIL_BYTES);
  let more = false;
  const root = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
  let links: { fd: number; name: string } | undefined;
  try {
    if (opts.links) links = makeLinksDir(root);
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
      if (!f) return 'go';
      if (links) linkAs(dirFd, name, links.fd, String(files.length));
      files.push({ path: p, ...f });
      return 'go';
    });
  } finally {
    if (links) fs.closeSync(links.fd);
    fs.closeSync(root);
  }
  return { files, nonFiles, more, ...(links ? { links: links.name } : {}) };
}

/** A new, empty LINKS_PREFIX directory at the top of the place open as `root`, held open. */
function makeLinksDir(root: number): { fd: number; name: string } {
  const name = `${LINKS_PREFIX}${Date.now()}-${crypto.randomBytes(4).toString('hex')}`;
  fs.mkdirSync(`/proc/self/fd/${root}/${name}`, { mode: 0o700 });
  return { fd: fs.openSync(`/proc/self/fd/${root}/${name}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW), name };
}

/**
 * A second name `as` in the directory `toFd` for the file `name` in
 * `dirFd`: link(2) does not follow a symlink at `name`. Not checked here
 * (a stat each doubled the cost while the job is stopped): a restore uses
 * a second name only if it is the recorded file (putBackFiles).
 */
function linkAs(dirFd: number, name: string, toFd: number, as: string): void {
  try {
    fs.linkSync(`/proc/self/fd/${dirFd}/${name}`, `/proc/self/fd/${toFd}/${as}`);
  } catch {
    /* another filesystem below the place, or gone since: no second name */
  }
}

/**
 * A second name `from` (a name in a directory held open) linked at `name` in
 * the directory open as `dirFd`, kept only if what got linked is the
 * recorded regular file (inode `ino`): link(2) does not follow a symlink at
 * `from`, so a second name swapped for one since it was checked links the
 * symlink itself, which is taken away again.
 */
function linkChecked(from: string, dirFd: number, name: string, ino: string): boolean {
  const to = `/proc/self/fd/${dirFd}/${name}`;
  fs.linkSync(from, to);
  const st = lstatOrNot(to);
  if (st?.isFile() && st.ino.toString() === ino) return true;
  fs.unlinkSync(to);
  return false;
}

/** The second name of the file the job held open that a checkpoint recorded i-th (WorkFile order); closed files have `i`. */
export const openFileLink = (i: number): string => `o${i}`;

/**
 * Second names in the link set `links` (at the top of `dir`) for the files
 * the job holds open, by their paths (openFileLink(i) for paths[i]), each
 * walked below the place without following a symlink. A file that cannot
 * be linked goes without (as before: a restore then needs it in place).
 */
export function linkOpenFiles(dir: string, links: string, paths: readonly string[]): void {
  if (!LINKS_NAME.test(links) || paths.length === 0) return;
  const root = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
  try {
    const to = fs.openSync(`/proc/self/fd/${root}/${links}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    try {
      for (const [i, p] of paths.entries()) {
        const parent = isPlainRelativePath(p) ? openDirBeneath(root, path.dirname(p)) : undefined;
        if (parent === undefined) continue;
        try {
          linkAs(parent, path.basename(p), to, openFileLink(i));
        } finally {
          fs.closeSync(parent);
        }
      }
    } finally {
      fs.closeSync(to);
    }
  } finally {
    fs.closeSync(root);
  }
}

/**
 * The second name `name` in the link set `links` at the top of `dir`, open
 * with `flags` (never through a symlink, never a FIFO or device), when it is
 * still the file of inode `ino`; undefined otherwise.
 */
export async function openSecondName(
  dir: string,
  links: string | undefined,
  name: string,
  ino: string,
  flags: number,
): Promise<FileHandle | undefined> {
  if (!links || !LINKS_NAME.test(links)) return undefined;
  const h = await openBeneath(dir, `${links}/${name}`, flags).catch(() => undefined);
  if (!h) return undefined;
  const st = await h.stat({ bigint: true }).catch(() => undefined);
  if (st?.ino.toString() === ino) return h;
  await h.close();
  return undefined;
}

/**
 * Put the second name `name` of link set `links` back at `rel` (below the
 * place open as `root`), moving what holds `rel` now aside: false when the
 * directory `rel` is in is gone.
 */
export function linkBack(
  root: number,
  aside: SetAside,
  links: string,
  name: string,
  rel: string,
  ino: string,
  remake?: ReadonlySet<string>,
): boolean {
  const linksFd = openLinkSet(root, links);
  if (linksFd === undefined) return false;
  try {
    const parent = openDirBeneath(root, path.dirname(rel), remake);
    if (parent === undefined) return false;
    try {
      const base = path.basename(rel);
      if (lstatOrNot(`/proc/self/fd/${parent}/${base}`)) aside.move(parent, base, rel);
      return linkChecked(`/proc/self/fd/${linksFd}/${name}`, parent, base, ino);
    } finally {
      fs.closeSync(parent);
    }
  } finally {
    fs.closeSync(linksFd);
  }
}

/** The link set `links` at the top of the place open as `root`, opened without following a symlink; undefined if it is not one. */
function openLinkSet(root: number, links: string): number | undefined {
  if (!LINKS_NAME.test(links)) return undefined;
  try {
    return fs.openSync(`/proc/self/fd/${root}/${links}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  } catch {
    return undefined; // pruned, or never made on this filesystem
  }
}

/**
 * True when the directory of `rel` is there below `dir`, reached without a
 * symlink, or gone with every missing directory on the way among `remake`
 * (recorded at the checkpoint: linkBack makes them again).
 */
export function dirThere(dir: string, rel: string, remake?: ReadonlySet<string>): boolean {
  const root = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
  try {
    const d = descend(root, path.dirname(rel));
    if (!d) return false;
    fs.closeSync(d.fd);
    return d.missing.every((p) => remake?.has(p));
  } finally {
    fs.closeSync(root);
  }
}

/**
 * The newest `keep` LINKS_PREFIX directories at the top of `dir` kept (the
 * store keeps as many checkpoints: ARCH_KEEP), older ones removed. Their
 * files' space is freed once the job's own names are gone too.
 */
export function pruneLinks(dir: string, keep: number): void {
  const root = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
  try {
    const sets = fs
      .readdirSync(`/proc/self/fd/${root}`)
      .filter((n) => LINKS_NAME.test(n))
      .sort();
    for (const n of sets.slice(0, Math.max(0, sets.length - keep))) removeLinkSet(root, n);
  } finally {
    fs.closeSync(root);
  }
}

/** The link set `links` at the top of `dir` removed (made for a checkpoint that was not published). */
export function dropLinks(dir: string, links: string): void {
  if (!LINKS_NAME.test(links)) return;
  const root = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
  try {
    removeLinkSet(root, links);
  } finally {
    fs.closeSync(root);
  }
}

/**
 * The link set `name` in the place open as `root` removed, with no
 * recursive walk a running job could swap a directory under (it runs again
 * while this runs): a link set holds only files, each unlinked in the
 * directory held open; what else the job put there stays, and the set then.
 * A symlink at the name is removed itself.
 */
function removeLinkSet(root: number, name: string): void {
  const at = `/proc/self/fd/${root}/${name}`;
  let fd: number;
  try {
    fd = fs.openSync(at, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  } catch {
    try {
      fs.unlinkSync(at); // not a directory (a symlink, a file): the name only
    } catch {
      /* gone */
    }
    return;
  }
  try {
    for (const n of fs.readdirSync(`/proc/self/fd/${fd}`))
      try {
        fs.unlinkSync(`/proc/self/fd/${fd}/${n}`);
      } catch {
        /* a directory the job made: left */
      }
  } finally {
    fs.closeSync(fd);
  }
  try {
    fs.rmdirSync(at);
  } catch {
    /* not empty: left */
  }
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
 * The regular file at `name` (a /proc/self/fd/N/... path below a place the
 * job can write), opened with `flags`, and its stat: taken with O_PATH
 * first, never through a symlink, so that a device or FIFO swapped in under
 * the name is never opened (opening a device can act on it: a watchdog
 * arms when opened). Undefined when it is something else, or gone.
 */
function openRegular(name: string, flags: number): { fd: number; st: fs.BigIntStats } | undefined {
  let at: number;
  try {
    at = fs.openSync(name, O_PATH | O_NOFOLLOW);
  } catch {
    return undefined;
  }
  try {
    const st = fs.fstatSync(at, { bigint: true });
    return st.isFile() ? { fd: fs.openSync(`/proc/self/fd/${at}`, flags), st } : undefined;
  } catch {
    return undefined;
  } finally {
    fs.closeSync(at);
  }
}

/** Size, inode and tail digest of the regular file `name` in the directory open as `dirFd` (openRegular). */
function readTailSync(dirFd: number, name: string, buf: Buffer): Omit<ClosedFile, 'path'> | undefined {
  const f = openRegular(`/proc/self/fd/${dirFd}/${name}`, O_RDONLY);
  if (!f) return undefined;
  try {
    const size = Number(f.st.size);
    return { size, ino: f.st.ino.toString(), tail: tailDigest(f.fd, size, buf), mtimeNs: f.st.mtimeNs.toString() };
  } finally {
    fs.closeSync(f.fd);
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
export async function cutAppendedFiles(
  dir: string,
  files: readonly ClosedFile[],
): Promise<{ cut: ClosedFileCut[]; changed: ClosedFileCut[] }> {
  const cut: ClosedFileCut[] = [];
  /** Rewritten through their own inode since (shorter, or longer with other last bytes, or modified since): left. */
  const changed: ClosedFileCut[] = [];
  const buf = Buffer.allocUnsafe(TAIL_BYTES);
  for (const f of files) {
    if (!isPlainRelativePath(f.path)) continue;
    // Most files did not change: one lstat tells (it may pass through a symlink on the way, so it only
    // picks the candidates; each is then opened below the place without following one).
    const now = lstatOrNot(path.join(dir, f.path));
    if (!now?.isFile() || now.ino.toString() !== f.ino) continue;
    const size = Number(now.size);
    if (size < f.size || (size === f.size && f.mtimeNs !== undefined && now.mtimeNs.toString() !== f.mtimeNs)) {
      changed.push({ path: f.path, from: size, to: f.size });
      continue;
    }
    if (size === f.size) continue;
    const h = await openBeneath(dir, f.path, fs.constants.O_RDWR).catch(() => undefined);
    if (!h) continue;
    try {
      const st = await h.stat({ bigint: true });
      const grown = Number(st.size);
      if (st.ino.toString() !== f.ino || grown <= f.size) continue;
      if (tailDigest(h.fd, f.size, buf) !== f.tail) {
        changed.push({ path: f.path, from: grown, to: f.size });
        continue;
      }
      await h.truncate(f.size);
      cut.push({ path: f.path, from: grown, to: f.size });
    } finally {
      await h.close();
    }
  }
  return { cut, changed };
}

/**
 * The directory at the top of a place where a restore moves what the lost
 * run made (SET_ASIDE_PREFIX<hex>), made on the first move; each entry
 * under its path with "/" written "%2F". Names are resolved in directories
 * held open: no symlink on the way is followed.
 */
export class SetAside {
  readonly moved: string[] = [];
  private hold?: { fd: number; name: string };

  constructor(private readonly root: number) {}

  /** Move `name` in the directory open as `dirFd` (its path in the place: `p`) aside. */
  move(dirFd: number, name: string, p: string): void {
    if (!this.hold) {
      const holdName = `${SET_ASIDE_PREFIX}${crypto.randomBytes(8).toString('hex')}`;
      fs.mkdirSync(`/proc/self/fd/${this.root}/${holdName}`, { mode: 0o700 });
      this.hold = {
        fd: fs.openSync(`/proc/self/fd/${this.root}/${holdName}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW),
        name: holdName,
      };
    }
    fs.renameSync(`/proc/self/fd/${dirFd}/${name}`, `/proc/self/fd/${this.hold.fd}/${encodeURIComponent(p)}`);
    this.moved.push(p);
  }

  /** The directory's name, once something was moved. */
  get to(): string | undefined {
    return this.hold?.name;
  }

  close(): void {
    if (this.hold) fs.closeSync(this.hold.fd);
  }
}

/**
 * Move what the lost run made after the checkpoint, below the place open as
 * `root`, into `aside`, walking directories without following a symlink:
 * each regular file not in `recorded` (the paths a checkpoint recorded
 * there: every file it held open and every other one) and, with `nonFiles`
 * (the directories, symlinks and other entries it recorded; absent in
 * checkpoints from before ARCH recorded them), each other entry not among
 * them, a directory whole (a job that makes a step's directory with mkdir
 * failed on the lost run's).
 */
export function setAsideIn(
  root: number,
  aside: SetAside,
  recorded: ReadonlySet<string>,
  nonFiles?: ReadonlySet<string>,
): void {
  walkSync(root, '', (dirFd, name, p, kind) => {
    if (kind === 'file' ? recorded.has(p) : !nonFiles || nonFiles.has(p)) return 'go';
    aside.move(dirFd, name, p);
    return 'skip';
  });
}

/**
 * Each recorded file the lost run deleted, moved away, or replaced by
 * another under its name, put back from its second name in the
 * checkpoint's `links` directory (recordClosedFiles) when that is still the
 * recorded file (its inode, at least its size, its recorded last bytes
 * unchanged; cut back to its size if appended to since): a job that
 * consumes its input files (reads, then deletes or moves each) found the
 * lost run's gone. What holds the name now is moved aside (`aside`, the
 * place's SET_ASIDE_PREFIX directory); a file whose directory is gone is
 * left out. Never throws for a file.
 */
export function putBackFiles(
  dir: string,
  root: number,
  aside: SetAside,
  files: readonly ClosedFile[],
  links: string,
  /** The directories the checkpoint recorded: one the lost run removed is made again for a file put back into it. */
  remake?: ReadonlySet<string>,
): ClosedFileCut[] {
  const back: ClosedFileCut[] = [];
  const linksFd = openLinkSet(root, links);
  if (linksFd === undefined) return back;
  const buf = Buffer.allocUnsafe(TAIL_BYTES);
  try {
    for (const [i, f] of files.entries()) {
      if (!isPlainRelativePath(f.path)) continue;
      // Most files are still there: one lstat tells (it may pass a symlink on the way: it only picks candidates).
      const now = lstatOrNot(path.join(dir, f.path));
      if (now?.isFile() && now.ino.toString() === f.ino) continue;
      const kept = `/proc/self/fd/${linksFd}/${i}`;
      const fd = openKept(kept, f, buf);
      if (fd === undefined) continue;
      const parent = openDirBeneath(root, path.dirname(f.path), remake);
      try {
        if (parent === undefined) continue;
        const base = path.basename(f.path);
        const here = lstatOrNot(`/proc/self/fd/${parent}/${base}`);
        if (here?.isFile() && here.ino.toString() === f.ino) continue; // looked through a symlink before
        if (here) aside.move(parent, base, f.path);
        if (!linkChecked(kept, parent, base, f.ino)) continue;
        // Appended to after it was moved away: cut through the file itself, never through a name.
        fs.ftruncateSync(fd, f.size);
        back.push({ path: f.path, from: here ? Number(here.size) : 0, to: f.size });
      } catch {
        continue; // the job's to deal with, as before
      } finally {
        if (parent !== undefined) fs.closeSync(parent);
        fs.closeSync(fd);
      }
    }
  } finally {
    fs.closeSync(linksFd);
  }
  return back;
}

/** The kept second name `kept`, open for writing, when it is the recorded file `f` (its inode, long enough, its tail unchanged). */
function openKept(kept: string, f: ClosedFile, buf: Buffer): number | undefined {
  const k = openRegular(kept, fs.constants.O_RDWR);
  if (!k) return undefined;
  if (k.st.ino.toString() === f.ino && Number(k.st.size) >= f.size && tailDigest(k.fd, f.size, buf) === f.tail)
    return k.fd;
  fs.closeSync(k.fd);
  return undefined;
}

/**
 * The directory `rel` below the one open as `root`, opened without
 * following a symlink at any step; a recorded directory (`remake`) that the
 * lost run removed is made again on the way, as the one it is in.
 * Undefined when it cannot be reached.
 */
function openDirBeneath(root: number, rel: string, remake?: ReadonlySet<string>): number | undefined {
  const d = descend(root, rel);
  if (!d) return undefined;
  let at = d.fd;
  try {
    for (const p of d.missing) {
      if (!remake?.has(p)) throw new Error(`${p} is gone`);
      const up = fs.fstatSync(at);
      const name = `/proc/self/fd/${at}/${path.basename(p)}`;
      fs.mkdirSync(name, { mode: 0o700 });
      const made = fs.openSync(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      fs.closeSync(at);
      at = made;
      fs.fchownSync(at, up.uid, up.gid);
      fs.fchmodSync(at, up.mode & 0o777);
    }
    return at;
  } catch {
    fs.closeSync(at);
    return undefined;
  }
}

/**
 * As far down `rel` (below `root`) as it is there, without following a
 * symlink: the deepest directory reached, held open, and the paths of the
 * ones missing below it. Undefined when a step is something else than a
 * missing directory (a symlink, a file).
 */
function descend(root: number, rel: string): { fd: number; missing: string[] } | undefined {
  const parts = rel === '.' ? [] : rel.split('/');
  let at = fs.openSync(`/proc/self/fd/${root}`, O_RDONLY | O_DIRECTORY);
  for (const [i, part] of parts.entries()) {
    try {
      const next = fs.openSync(`/proc/self/fd/${at}/${part}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      fs.closeSync(at);
      at = next;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        fs.closeSync(at);
        return undefined;
      }
      return { fd: at, missing: parts.slice(i).map((_, j) => parts.slice(0, i + j + 1).join('/')) };
    }
  }
  return { fd: at, missing: [] };
}

function lstatOrNot(p: string): fs.BigIntStats | undefined {
  try {
    return fs.lstatSync(p, { bigint: true });
  } catch {
    return undefined;
  }
}
