import { execa } from 'execa';
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as tar from 'tar';
import { CheckpointUnusableError } from './errors.js';

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
export const ROOTFS_TAR = 'rootfs-diff.tar';
export const DELETED_FILES = 'deleted.files';

export interface Deletions {
  whiteouts: string[];
  opaque: string[];
}

/** The overlay upper dir mounted at `mountPoint`, or undefined if it is not an overlay. */
export async function findUpperDir(mountPoint: string): Promise<string | undefined> {
  const target = path.resolve(mountPoint);
  const lines = (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n');
  let found: string | undefined;
  for (const line of lines) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    if (unescapeMount(left[4] ?? '') !== target) continue;
    if (right[0] !== 'overlay') {
      found = undefined; // a later mount on the same point hides earlier ones
      continue;
    }
    const upper = (right[2] ?? '').split(',').find((o) => o.startsWith('upperdir='));
    found = upper ? unescapeMount(upper.slice('upperdir='.length)) : undefined;
  }
  return found;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

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
  let bytes = 0;
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
        if (e.isFile()) bytes += (await fsp.lstat(path.join(upperDir, r))).size;
      } else {
        skipped.push(r); // sockets, FIFOs, block devices: recreated by the processes, not files to carry
      }
    }
  }
  await walk('');
  deletions.opaque = await opaqueDirs(upperDir);
  // Directories are listed with their contents excluded: tar recurses otherwise.
  const tarFile = path.join(destDir, ROOTFS_TAR);
  if (keep.length) await tar.c({ file: tarFile, cwd: upperDir, portable: false, noDirRecurse: true }, keep);
  else await fsp.writeFile(tarFile, Buffer.alloc(1024)); // an empty tar: two zero blocks
  await fsp.writeFile(path.join(destDir, DELETED_FILES), JSON.stringify(deletions));
  return { files: keep.length, bytes, deletions: deletions.whiteouts.length + deletions.opaque.length, skipped };
}

async function opaqueDirs(upperDir: string): Promise<string[]> {
  // One getfattr walk for the whole layer; files without the xattr print nothing.
  const r = await execa('getfattr', ['-R', '-P', '--absolute-names', '-d', '-m', '^trusted\\.overlay\\.opaque$', upperDir], { reject: false });
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

function assertPlainRelative(p: string, what: string): void {
  const parts = p.split('/').filter((x) => x !== '' && x !== '.');
  if (p.includes('\0') || path.isAbsolute(p) || parts.includes('..') || parts.length === 0) {
    throw new CheckpointUnusableError('archive-escape', `${what} "${p}" is absolute or contains ".."`);
  }
}

/**
 * Check every entry before anything is written: only files, directories,
 * symlinks and hard links; no absolute paths, no "..", no entry below a
 * symlink of the archive (it would be written wherever the link points), hard
 * links only to earlier entries of the archive.
 */
export async function validateDiffArchive(tarFile: string): Promise<void> {
  const symlinks = new Set<string>();
  const seen = new Set<string>();
  let problem: CheckpointUnusableError | undefined;
  await tar.t({
    file: tarFile,
    strict: true,
    onReadEntry: (entry) => {
      if (problem) return;
      try {
        const p = entry.path.replace(/\/+$/, '').replace(/^\.\//, '');
        assertPlainRelative(p, 'archive entry');
        const parts = p.split('/');
        for (let i = 1; i < parts.length; i++) {
          if (symlinks.has(parts.slice(0, i).join('/'))) {
            throw new CheckpointUnusableError('archive-escape', `entry "${p}" lies below the archive's symlink "${parts.slice(0, i).join('/')}"`);
          }
        }
        switch (entry.type) {
          case 'File':
          case 'OldFile':
          case 'ContiguousFile':
          case 'Directory':
            break;
          case 'SymbolicLink':
            symlinks.add(p);
            break;
          case 'Link': {
            const target = (entry.linkpath ?? '').replace(/^\.\//, '');
            assertPlainRelative(target, 'hard link target');
            if (!seen.has(target)) throw new CheckpointUnusableError('archive-escape', `hard link "${p}" points outside the archive ("${target}")`);
            break;
          }
          default:
            throw new CheckpointUnusableError('archive-entry', `entry "${p}" has type ${entry.type}: device nodes, FIFOs and other special files are refused`);
        }
        seen.add(p);
      } catch (err) {
        problem = err as CheckpointUnusableError;
      }
    },
  });
  if (problem) throw problem;
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Refuse to touch a path whose parent chain inside root contains a symlink. */
async function assertNoSymlinkParents(root: string, rel: string): Promise<void> {
  const parts = rel.split('/');
  let cur = root;
  for (const part of parts.slice(0, -1)) {
    cur = path.join(cur, part);
    const st = await fsp.lstat(cur).catch(() => undefined);
    if (st?.isSymbolicLink()) throw new CheckpointUnusableError('archive-escape', `"${rel}" lies below a symlink`);
  }
}

/**
 * Recreate the writable layer in a fresh upper dir before the processes are
 * restored: extract the (validated) files, then re-create whiteouts and
 * opaque markers so deleted files stay deleted.
 */
export async function applyDiff(checkpointDir: string, upperDir: string): Promise<{ files: number; deletions: number }> {
  const tarFile = path.join(checkpointDir, ROOTFS_TAR);
  await validateDiffArchive(tarFile);
  let deletions: Deletions;
  try {
    deletions = JSON.parse(await fsp.readFile(path.join(checkpointDir, DELETED_FILES), 'utf8')) as Deletions;
    if (!Array.isArray(deletions.whiteouts) || !Array.isArray(deletions.opaque)) throw new Error('not {whiteouts, opaque}');
  } catch (err) {
    throw new CheckpointUnusableError('manifest-invalid', `${DELETED_FILES}: ${(err as Error).message}`);
  }
  for (const p of [...deletions.whiteouts, ...deletions.opaque]) {
    if (typeof p !== 'string') throw new CheckpointUnusableError('manifest-invalid', `${DELETED_FILES} holds a non-string entry`);
    assertPlainRelative(p, 'deleted path');
  }
  let files = 0;
  await tar.x({
    file: tarFile,
    cwd: upperDir,
    strict: true,
    preservePaths: false,
    preserveOwner: true,
    onReadEntry: () => {
      files++;
    },
  });
  const script: string[] = ['set -e'];
  for (const w of deletions.whiteouts) {
    await assertNoSymlinkParents(upperDir, w);
    const abs = path.join(upperDir, w);
    script.push(`mkdir -p ${shQuote(path.dirname(abs))}`, `rm -rf ${shQuote(abs)}`, `mknod ${shQuote(abs)} c 0 0`);
  }
  for (const o of deletions.opaque) {
    await assertNoSymlinkParents(upperDir, o);
    const abs = path.join(upperDir, o);
    script.push(`mkdir -p ${shQuote(abs)}`, `setfattr -n trusted.overlay.opaque -v y ${shQuote(abs)}`);
  }
  // One shell for all of them: Node has no mknod, and one spawn per whiteout adds up.
  if (script.length > 1) await execa('sh', ['-c', script.join('\n')]);
  return { files, deletions: deletions.whiteouts.length + deletions.opaque.length };
}
