import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { openFds } from './open-files.js';

/**
 * Paths CRIU needs to dump a job's inotify watches on its own image
 * filesystem.
 *
 * CRIU keeps an inotify watch (a job watching its config file or an input
 * directory: Python's watchdog, Java's WatchService, Node's fs.watch) as
 * the watched inode's file handle, and a path it resolves from it; the
 * restore adds the watch again by that path. The container's root is an
 * overlay mount, whose file handles cannot be opened back unless it was
 * mounted with nfs_export, which container managers do not do: CRIU then
 * looks for the inode under a few well-known directories (/etc, /var/log...)
 * and, not finding it there, refuses the whole dump ("fsnotify: Can't dump
 * that handle"). Such a job could not be checkpointed, and a reclaim lost it.
 *
 * So before a dump ARCH reads the job's watches (/proc/<pid>/fdinfo of each
 * inotify descriptor: the inode and its filesystem), finds the watched
 * inodes of the root filesystem by walking it from the host (the container's
 * view of its root without its other mounts), and hands CRIU their paths in
 * the container as `irmap-scan-path`, where CRIU looks first. Only jobs with
 * such a watch pay for the walk.
 */

/** A watched inode, as the kernel names it in fdinfo (`sdev` is the kernel's dev_t: major << 20 | minor). */
export interface Watched {
  sdev: number;
  ino: bigint;
}

/** The inodes the inotify descriptors of `pids` watch (fdinfo lines "inotify wd:1 ino:5 sdev:2c ..."). */
export async function inotifyWatches(pids: readonly number[]): Promise<Watched[]> {
  const out = new Map<string, Watched>();
  for await (const f of openFds(pids, (t) => t === 'anon_inode:inotify')) {
    const info = await fsp.readFile(f.info, 'utf8').catch(() => '');
    for (const m of info.matchAll(/^inotify wd:[0-9a-f]+ ino:([0-9a-f]+) sdev:([0-9a-f]+)/gm)) {
      const w = { ino: BigInt(`0x${m[1]!}`), sdev: parseInt(m[2]!, 16) };
      out.set(`${w.sdev}:${w.ino}`, w);
    }
  }
  return [...out.values()];
}

/** The kernel's dev_t of a device number as stat() gives it (glibc's encoding). */
export function kernelDev(st: bigint): number {
  const major = Number(((st >> 8n) & 0xfffn) | ((st >> 32n) & ~0xfffn));
  const minor = Number((st & 0xffn) | ((st >> 12n) & ~0xffn));
  return major * 2 ** 20 + minor;
}

/** Never walk more entries than this for one dump (a huge image): the watches not found by then are left to CRIU. */
const WALK_LIMIT = 500_000;

/**
 * The paths, in the container, of the `watched` inodes that lie on the
 * filesystem of `rootfs` (the container's root as the host sees it, which
 * shows none of the container's other mounts). Walked breadth first without
 * following a symlink or leaving that filesystem; stops when all are found.
 * Names the container chose are only read here: what reaches CRIU is
 * filtered by configWord.
 */
export async function watchedPathsOnRootfs(rootfs: string, watched: readonly Watched[]): Promise<string[]> {
  const realRoot = await fsp.realpath(rootfs).catch(() => undefined);
  const root = realRoot && (await fsp.stat(realRoot, { bigint: true }).catch(() => undefined));
  if (!realRoot || !root) return [];
  const dev = kernelDev(root.dev);
  const wanted = new Set(watched.filter((w) => w.sdev === dev).map((w) => w.ino));
  const found: string[] = [];
  if (wanted.delete(root.ino)) found.push('/');
  let queue = ['/'];
  let walked = 0;
  while (queue.length && wanted.size && walked < WALK_LIMIT) {
    const next: string[] = [];
    for (const dir of queue) {
      if (!wanted.size || walked >= WALK_LIMIT) break;
      walked += await walkDir(realRoot, dir, (p, st) => {
        if (kernelDev(st.dev) !== dev) return;
        if (wanted.delete(st.ino)) found.push(p);
        if (st.isDirectory()) next.push(p);
      });
    }
    queue = next;
  }
  return found;
}

const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW } = fs.constants;

/**
 * Hand `each` the entries of `dir` (a path in the container), lstat'ed, and
 * return how many. The container writes in its root meanwhile: a directory
 * is read through the descriptor it was opened as, and only when that is
 * where the walk expected it (a component swapped for a symlink on the way
 * leads elsewhere, and is not read).
 */
async function walkDir(realRoot: string, dir: string, each: (p: string, st: fs.BigIntStats) => void): Promise<number> {
  const where = dir === '/' ? realRoot : path.join(realRoot, dir);
  const h = await fsp.open(where, O_RDONLY | O_DIRECTORY | O_NOFOLLOW).catch(() => undefined);
  if (!h) return 0;
  try {
    const at = `/proc/self/fd/${h.fd}`;
    if ((await fsp.readlink(at).catch(() => '')) !== where) return 0;
    const names = await fsp.readdir(at).catch(() => [] as string[]);
    for (const name of names) {
      const st = await fsp.lstat(path.join(at, name), { bigint: true }).catch(() => undefined);
      if (st) each(path.posix.join(dir, name), st);
    }
    return names.length;
  } finally {
    await h.close();
  }
}

/** A path CRIU's configuration file can carry as one word (it splits on whitespace; quotes are its own). */
export function configWord(p: string): boolean {
  return /^\/[^\s"'\\#]*$/.test(p);
}

/** The container paths to hand CRIU for the inotify watches of `pids` on `rootfs` (none: no watch there). */
export async function rootfsWatchPaths(pids: readonly number[], rootfs: string): Promise<string[]> {
  const watches = await inotifyWatches(pids);
  if (!watches.length) return [];
  return (await watchedPathsOnRootfs(rootfs, watches)).filter(configWord);
}
