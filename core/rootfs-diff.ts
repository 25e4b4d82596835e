import fs from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar';
import { CheckpointUnusableError } from '../contract/errors.js';
import { DELETED_FILES, ROOTFS_TAR } from './checkpoint-layout.js';
import { runCommand } from './run-command.js';

/**
 * The container's writable layer: what its processes created, changed and
 * deleted in the rootfs since it started. With containerd's overlayfs
 * snapshotter that is the overlay's upper dir; deletions there are whiteouts
 * (0:0 character devices) and opaque directories (trusted.overlay.opaque=y).
 *
 * In the checkpoint it becomes, as in Podman's archives:
 *   rootfs-diff.tar   regular files, directories, symlinks, hard links
 *   deleted.files     JSON {whiteouts: [...], opaque: [...]} (relative paths)
 */

export interface Deletions {
  whiteouts: string[];
  opaque: string[];
}

/**
 * A checkpoint's `deleted.files`: what the layer removed. From the store, so
 * untrusted: every entry a plain relative path (none absolute, none with
 * "..") listed once, else a CheckpointUnusableError, before any reader
 * (applyDiff, the layer comparison) uses one.
 */
export async function readDeletions(checkpointDir: string): Promise<Deletions> {
  let d: Deletions;
  try {
    d = JSON.parse(await fsp.readFile(path.join(checkpointDir, DELETED_FILES), 'utf8')) as Deletions;
    if (!Array.isArray(d.whiteouts) || !Array.isArray(d.opaque)) throw new Error('not {whiteouts, opaque}');
  } catch (err) {
    throw new CheckpointUnusableError('manifest-invalid', `${DELETED_FILES}: ${(err as Error).message}`);
  }
  const listed = new Set<string>();
  for (const p of [...d.whiteouts, ...d.opaque]) {
    if (typeof p !== 'string')
      throw new CheckpointUnusableError('manifest-invalid', `${DELETED_FILES} holds a non-string entry`);
    assertPlainRelative(p, 'deleted path');
    // A path both deleted and an opaque directory (or listed twice) is nothing captureDiff writes.
    if (listed.has(canonical(p)))
      throw new CheckpointUnusableError('manifest-invalid', `${DELETED_FILES} lists "${p}" twice`);
    listed.add(canonical(p));
  }
  return d;
}

/** The overlay upper dir mounted at `mountPoint`, or undefined if it is not an overlay. */
// Where the writable layer is: a module of its own (core/overlay-mount.ts), kept importable from here.
export { findOverlayDirs, findUpperDir, type OverlayDirs } from './overlay-mount.js';

export interface CaptureResult {
  files: number;
  bytes: number;
  deletions: number;
  skipped: string[];
}

/** Write rootfs-diff.tar and deleted.files for `upperDir` into `destDir`. */
export async function captureDiff(upperDir: string, destDir: string): Promise<CaptureResult> {
  const keep: string[] = [];
  const deletions: Deletions = { whiteouts: [], opaque: [] };
  const skipped: string[] = [];
  async function walk(rel: string): Promise<void> {
    for (const e of await fsp.readdir(path.join(upperDir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isCharacterDevice()) {
        const st = await fsp.lstat(path.join(upperDir, r));
        if (st.rdev === 0) deletions.whiteouts.push(r);
        else skipped.push(r);
      } else if (e.isDirectory()) {
        keep.push(r);
        await walk(r);
      } else if (e.isFile() || e.isSymbolicLink()) {
        keep.push(r);
      } else {
        skipped.push(r); // sockets, FIFOs, block devices: recreated by the processes, not files to carry
      }
    }
  }
  await walk('');
  deletions.opaque = await opaqueDirs(upperDir);
  const tarFile = path.join(destDir, ROOTFS_TAR);
  let bytes = 0;
  if (keep.length) bytes = await packInOrder(upperDir, keep, tarFile);
  else await fsp.writeFile(tarFile, Buffer.alloc(1024)); // an empty tar: two zero blocks
  await fsp.writeFile(path.join(destDir, DELETED_FILES), JSON.stringify(deletions));
  return { files: keep.length, bytes, deletions: deletions.whiteouts.length + deletions.opaque.length, skipped };
}

/**
 * Archive `names` (relative to `cwd`, walk order, directories without their
 * contents) into `tarFile`, one entry after the other; returns the content
 * bytes the headers declare.
 *
 * Not tar.c/Pack: node-tar 7.5's Pack stats several entries ahead and holds
 * back a multi-link file whose stat comes back before its turn, so that a
 * Link never precedes its target; its bookkeeping of those held-back entries
 * is wrong, and a layer with hard links in a few directories made it end the
 * archive twice ("write after end", thrown from a stream event, which kills
 * the process) or wait forever for an entry it never starts (upstream
 * isaacs/node-tar#458, #460). One WriteEntry at a time needs no such
 * bookkeeping: the first name of a file is archived as a File before any
 * other name, which the shared linkCache turns into a Link to it. Names are
 * paths here, never tar.c's list, where "@name" would name an archive to
 * splice in (the container chose its file names).
 *
 * The count is taken from the very headers written: a restore refuses an
 * archive declaring more than this (signed) number, and a file growing
 * between two stats (a checkpoint containerd asked for with --leave-running)
 * must not make its own archive refused. A hard link declares 0 bytes, as the
 * restore counts it.
 */
export async function packInOrder(cwd: string, names: string[], tarFile: string): Promise<number> {
  const linkCache = new Map<`${number}:${number}`, string>(); // dev:ino -> first name archived
  let declared = 0;
  async function* entries(): AsyncGenerator<Buffer> {
    for (const name of names) {
      const entry = new tar.WriteEntry(name, { cwd, linkCache, portable: false });
      for await (const chunk of entry) yield chunk;
      declared += entry.header?.size ?? 0;
    }
    yield Buffer.alloc(1024); // end of archive: two zero blocks
  }
  await pipeline(entries(), fs.createWriteStream(tarFile));
  return declared;
}

/** Directories of the layer marked opaque (trusted.overlay.opaque=y), relative to it. */
export async function opaqueDirs(upperDir: string): Promise<string[]> {
  // One getfattr walk for the whole layer; files without the xattr print nothing.
  const r = await runCommand(
    'getfattr',
    ['-R', '-P', '--absolute-names', '-d', '-m', '^trusted\\.overlay\\.opaque$', upperDir],
    { reject: false },
  );
  const out: string[] = [];
  let file: string | undefined;
  for (const line of String(r.stdout).split('\n')) {
    if (line.startsWith('# file: ')) file = line.slice(8);
    else if (file && /^trusted\.overlay\.opaque="y"/.test(line)) {
      const rel = path.relative(upperDir, file);
      if (rel && !rel.startsWith('..')) out.push(rel);
    }
  }
  return out;
}

export function assertPlainRelative(p: string, what: string): void {
  const parts = p.split('/').filter((x) => x !== '' && x !== '.');
  if (p.includes('\0') || path.isAbsolute(p) || parts.includes('..') || parts.length === 0) {
    throw new CheckpointUnusableError('archive-escape', `${what} "${p}" is absolute or contains ".."`);
  }
}

/** One spelling per path ("a/./b/", "./a//b" -> "a/b"), so the checks below compare like with like. */
export function canonical(p: string): string {
  return p
    .split('/')
    .filter((x) => x !== '' && x !== '.')
    .join('/');
}

/**
 * Check every entry before anything is written: only files, directories,
 * symlinks and hard links; no absolute paths, no "..", no entry below a
 * symlink of the archive (it would be written wherever the link points), hard
 * links only to earlier regular files of the archive, each path once (a later entry
 * replacing an earlier one could turn a checked directory into a symlink).
 * No sparse entries, and no more bytes declared in all than `maxBytes` (the
 * manifest's signed rootfs.bytes): a few KiB of archive must not make the
 * restore write gigabytes of holes and zeros into the node's disk.
 */
export async function validateDiffArchive(
  tarFile: string,
  maxBytes = Infinity,
  /** Each entry that passed, by its canonical path and type (a caller's own checks, in the same read). */
  each?: (p: string, type: string) => void,
): Promise<void> {
  if (await isEmptyArchive(tarFile)) return;
  const symlinks = new Set<string>();
  const seen = new Set<string>();
  const files = new Set<string>(); // regular files and hard links to them: what a hard link may name
  let declared = 0;
  let problem: CheckpointUnusableError | undefined;
  await tar
    .t({
      file: tarFile,
      strict: true,
      onReadEntry: (entry) => {
        if (problem) return;
        try {
          declared += entry.size ?? 0;
          if (declared > maxBytes) {
            throw new CheckpointUnusableError(
              'archive-size',
              `entry "${entry.path}" brings the archive's declared content to ${declared} bytes, more than the ${maxBytes} the manifest records for the writable layer`,
            );
          }
          assertPlainRelative(entry.path, 'archive entry');
          const p = canonical(entry.path);
          const parts = p.split('/');
          for (let i = 1; i < parts.length; i++) {
            if (symlinks.has(parts.slice(0, i).join('/'))) {
              throw new CheckpointUnusableError(
                'archive-escape',
                `entry "${p}" lies below the archive's symlink "${parts.slice(0, i).join('/')}"`,
              );
            }
          }
          if (seen.has(p)) throw new CheckpointUnusableError('archive-entry', `entry "${p}" appears twice`);
          switch (entry.type) {
            case 'File':
            case 'OldFile':
            case 'ContiguousFile':
              files.add(p);
              break;
            case 'Directory':
              break;
            case 'SymbolicLink':
              for (const s of seen) {
                if (s.startsWith(`${p}/`))
                  throw new CheckpointUnusableError(
                    'archive-escape',
                    `symlink "${p}" replaces a directory holding earlier entries ("${s}")`,
                  );
              }
              symlinks.add(p);
              break;
            case 'Link': {
              assertPlainRelative(entry.linkpath ?? '', 'hard link target');
              const target = canonical(entry.linkpath ?? '');
              if (!seen.has(target))
                throw new CheckpointUnusableError(
                  'archive-escape',
                  `hard link "${p}" points outside the archive ("${target}")`,
                );
              // captureDiff links only regular files; link(2) on a directory fails
              // mid-extraction, and an archive symlink is not made until after it.
              if (!files.has(target))
                throw new CheckpointUnusableError(
                  'archive-entry',
                  `hard link "${p}" points to "${target}", which is not a regular file of the archive`,
                );
              files.add(p);
              break;
            }
            case 'SparseFile':
              // GNU sparse ('S'): a few blocks that extract to a file of any size. (PAX sparse
              // maps are not understood by node-tar: such an entry extracts as the plain bytes it holds.)
              throw new CheckpointUnusableError(
                'archive-entry',
                `entry "${p}" is a sparse file: ARCH never writes those, refused`,
              );
            default:
              throw new CheckpointUnusableError(
                'archive-entry',
                `entry "${p}" has type ${entry.type}: device nodes, FIFOs and other special files are refused`,
              );
          }
          seen.add(p);
          each?.(p, entry.type);
        } catch (err) {
          problem = err as CheckpointUnusableError;
        }
      },
    })
    .catch(unreadable);
  if (problem) throw problem;
}

/**
 * A file entry's bytes and attributes into `h`, a regular file the caller
 * opened without following a symlink: owner first, then the mode (chown
 * clears set-id bits), then the times.
 */
export async function writeEntryFile(h: FileHandle, entry: tar.ReadEntry): Promise<void> {
  for await (const chunk of entry as AsyncIterable<Buffer>) await h.write(chunk);
  if (entry.uid !== undefined && entry.gid !== undefined) await h.chown(entry.uid, entry.gid);
  await h.chmod((entry.mode ?? 0o600) & 0o7777);
  if (entry.mtime) await h.utimes(entry.mtime, entry.mtime);
}

/** node-tar's errors on a damaged archive (TAR_BAD_ARCHIVE, TAR_ENTRY_INVALID...): the checkpoint's fault. */
export function unreadable(err: unknown): never {
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && code.startsWith('TAR_'))
    throw new CheckpointUnusableError('archive-invalid', `${ROOTFS_TAR}: ${(err as Error).message}`);
  throw err;
}

/**
 * An archive of nothing but zero blocks: what captureDiff writes for an
 * unchanged layer. node-tar (strict) calls it "Unrecognized archive format".
 */
export async function isEmptyArchive(tarFile: string): Promise<boolean> {
  const st = await fsp.stat(tarFile);
  if (st.size === 0 || st.size > 20 * 512 || st.size % 512 !== 0) return false;
  return (await fsp.readFile(tarFile)).every((b) => b === 0);
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Refuse to touch a path whose parent chain inside root contains a symlink
 * (with `self`, the path itself must not be one either: setfattr follows it).
 */
async function assertNoSymlinks(root: string, rel: string, self = false): Promise<void> {
  const parts = canonical(rel).split('/');
  let cur = root;
  for (const part of self ? parts : parts.slice(0, -1)) {
    cur = path.join(cur, part);
    const st = await fsp.lstat(cur).catch(() => undefined);
    if (st?.isSymbolicLink())
      throw new CheckpointUnusableError(
        'archive-escape',
        `"${rel}" ${cur === path.join(root, rel) ? 'is' : 'lies below'} a symlink`,
      );
  }
}

/**
 * Recreate the writable layer in a fresh upper dir before the processes are
 * restored: extract the (validated) files, then re-create whiteouts and
 * opaque markers so deleted files stay deleted.
 */
export async function applyDiff(
  checkpointDir: string,
  upperDir: string,
  maxBytes = Infinity,
): Promise<{ files: number; deletions: number }> {
  const tarFile = path.join(checkpointDir, ROOTFS_TAR);
  await validateDiffArchive(tarFile, maxBytes);
  const deletions = await readDeletions(checkpointDir);
  let files = 0;
  // Symlinks are made by hand after the rest: node-tar treats a symlink's
  // target like a path to extract to (it strips a leading "/" and refuses
  // targets leaving the directory), but in a container layer "/usr/x" and
  // "../../x" are ordinary targets, read inside the container's root. A
  // target is only data; no entry lies below an archive symlink (validated).
  const symlinks: { p: string; target: string; uid?: number; gid?: number; mtime?: Date }[] = [];
  // Modes are set by hand too: node-tar creates files through the process
  // umask (0666 -> 0644, /tmp's 1777 -> 1755) and its chown clears set-id bits.
  const modes: { p: string; mode: number }[] = [];
  if (!(await isEmptyArchive(tarFile)))
    await tar
      .x({
        file: tarFile,
        cwd: upperDir,
        strict: true,
        preservePaths: false,
        preserveOwner: true,
        filter: (_p, entry) => {
          if (!('type' in entry)) return true;
          files++;
          if (entry.type === 'SymbolicLink') {
            symlinks.push({
              p: canonical(entry.path),
              target: entry.linkpath ?? '',
              uid: entry.uid,
              gid: entry.gid,
              mtime: entry.mtime,
            });
            return false;
          }
          if (typeof entry.mode === 'number' && entry.type !== 'Link')
            modes.push({ p: canonical(entry.path), mode: entry.mode & 0o7777 });
          return true;
        },
      })
      .catch(unreadable);
  // No symlink exists in the fresh layer yet: chmod cannot be led outside it.
  for (const { p, mode } of modes) {
    const abs = path.join(upperDir, p);
    const st = await fsp.lstat(abs);
    if ((st.isFile() || st.isDirectory()) && (st.mode & 0o7777) !== mode) await fsp.chmod(abs, mode);
  }
  for (const l of symlinks) {
    await assertNoSymlinks(upperDir, l.p);
    const abs = path.join(upperDir, l.p);
    await fsp.mkdir(path.dirname(abs), { recursive: true });
    await fsp.symlink(l.target, abs);
    if (l.uid !== undefined && l.gid !== undefined) await fsp.lchown(abs, l.uid, l.gid);
    if (l.mtime) await fsp.lutimes(abs, l.mtime, l.mtime);
  }
  const script: string[] = ['set -e'];
  for (const w of deletions.whiteouts) {
    await assertNoSymlinks(upperDir, w);
    const abs = path.join(upperDir, w);
    script.push(`mkdir -p ${shQuote(path.dirname(abs))}`, `rm -rf ${shQuote(abs)}`, `mknod ${shQuote(abs)} c 0 0`);
  }
  for (const o of deletions.opaque) {
    await assertNoSymlinks(upperDir, o, true);
    const abs = path.join(upperDir, o);
    script.push(`mkdir -p ${shQuote(abs)}`, `setfattr -h -n trusted.overlay.opaque -v y ${shQuote(abs)}`);
  }
  // One shell for all of them: Node has no mknod, and one spawn per whiteout adds up.
  if (script.length > 1) {
    const r = await runCommand('sh', ['-c', script.join('\n')], { reject: false });
    // The paths were checked; what still fails (a deletion below a file of the archive) is the checkpoint's doing.
    if (r.exitCode !== 0)
      throw new CheckpointUnusableError(
        'archive-entry',
        `${DELETED_FILES}: the deletions do not fit the archive's files: ${String(r.all).split('\n')[0]}`,
      );
  }
  return { files, deletions: deletions.whiteouts.length + deletions.opaque.length };
}
