import fs from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { ArchInputError } from '../contract/errors.js';
import { isPlainRelativePath } from './paths.js';

/**
 * Host directories that a container's environment names (its checkpoint
 * home, its shared work dir) are its owner's input, not the node's word.
 * Three rules keep such a name from reaching anything else on the host:
 *
 * 1. It must lie under one of the node's allowed roots (ARCH_ALLOWED_ROOTS).
 * 2. Below that root no symlink is followed: every component is opened with
 *    O_NOFOLLOW relative to the directory opened before it (through
 *    /proc/self/fd, Node has no openat), so a directory swapped for a
 *    symlink while ARCH walks is refused, not followed.
 * 3. ARCH's directories do not nest: a directory that ARCH made a container's
 *    checkpoint home or work dir carries an ownership record beside it (in its
 *    parent, which no container can write), and no other ARCH directory may
 *    lie inside it. A shared work dir is bind-mounted read-write into its
 *    container; anything below it is the container's to change at any time.
 *
 * With those, no component of a path that passed the walk can be changed by a
 * container afterwards, so the path can be handed on to runc or CRIU.
 *
 * The ownership record also says who may remove the directory: ARCH removes
 * only what it created, for the container being deleted.
 */
export type DirKind = 'checkpoint' | 'work';

export interface OwnerRecord {
  kind: DirKind;
  namespace: string;
  /** The checkpoint's name: ARCH_CHECKPOINT_ID or the container id. */
  key: string;
  /** The container that holds the directory now (it passes on to a successor with the same key). */
  containerId: string;
  node: string;
  /** False for a directory that existed before ARCH used it: never removed by ARCH. */
  createdByArch: boolean;
  createdAt: string;
}

/** "@" is in no container id or namespace, so a record never shares a name with a directory. */
export const RECORD_SUFFIX = '@arch.json';
export const ALLOWED_ROOTS_SETTING = 'ARCH_ALLOWED_ROOTS';

const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK, O_CREAT, O_EXCL } = fs.constants;

/** The allowed root that `p` is, or lies under (the longest one); undefined when none. */
export function allowedRootOf(p: string, roots: readonly string[]): string | undefined {
  let best: string | undefined;
  for (const r of roots) {
    const inside = r === '/' || p === r || p.startsWith(`${r}/`);
    if (inside && (best === undefined || r.length > best.length)) best = r;
  }
  return best;
}

/** The allowed root for a path a container named; ArchInputError naming `field` otherwise. */
export function requireAllowedRoot(p: string, roots: readonly string[], field: string): string {
  const root = allowedRootOf(p, roots);
  if (root) return root;
  throw new ArchInputError(
    field,
    `"${p}" is not under a root this node allows (${roots.join(', ') || 'none'})`,
    `use a path under one of them, or have the node's administrator add its root to ${ALLOWED_ROOTS_SETTING} in the node settings (/etc/arch/arch.env)`,
  );
}

/**
 * Where a container's checkpoints are, held with its ownership record: a
 * directory walked without symlinks (HeldDir), or a bucket prefix
 * (core/s3-store.ts). One rule for both (CheckpointStore in core/store.ts):
 * ARCH writes into it only for the container its record names (or takes it
 * over for a newer one of the same job), and removes it only for that
 * container.
 */
export interface OwnedPlace {
  /** For messages and logs: the path or URL as named. */
  path: string;
  /** Made just now (nothing was there). */
  created: boolean;
  /** Its ownership record, if ARCH wrote one. */
  record: OwnerRecord | undefined;
  /** The names directly in it. */
  entries(): Promise<string[]>;
  writeRecord(r: OwnerRecord): Promise<void>;
  /** Everything in it, then its record. */
  removeAll(): Promise<void>;
  close(): Promise<void>;
}

/** A directory reached by the walk, held open so that nothing can swap it meanwhile. */
export interface HeldDir extends OwnedPlace {
  /** /proc/self/fd/N: the very directory that was opened, whatever happens to its name. */
  fdPath: string;
}

export interface WalkRequest {
  root: string;
  target: string;
  /** What the target is to be; another ARCH directory on the way is refused. */
  kind: DirKind;
  create: boolean;
  /** The setting that named the target (for errors). */
  field: string;
  /** Mode of directories it creates (default 0700). */
  mode?: number;
}

/**
 * Walk from `root` to `target` without following any symlink, creating the
 * missing directories when asked. Returns undefined when the target does not
 * exist and `create` is false. Throws ArchInputError naming `field` when a
 * component is a symlink or not a directory, or lies inside another ARCH
 * directory.
 */
export async function holdDir(req: WalkRequest): Promise<HeldDir | undefined> {
  const rel = path.relative(req.root, req.target);
  if (rel.startsWith('..') || path.isAbsolute(rel))
    throw new ArchInputError(req.field, `"${req.target}" is not under ${req.root}`, 'use a path under an allowed root');
  const parts = rel === '' ? [] : rel.split('/');
  if (parts.length === 0)
    throw new ArchInputError(
      req.field,
      `"${req.target}" is an allowed root itself`,
      'ARCH keeps each container in its own directory below the root',
    );
  // The root is the administrator's: it may itself be reached through a symlink,
  // and it is made on first use.
  let dir: FileHandle;
  try {
    dir = await fsp.open(req.root, O_RDONLY | O_DIRECTORY);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    if (!req.create) return undefined;
    await fsp.mkdir(req.root, { recursive: true, mode: 0o755 });
    dir = await fsp.open(req.root, O_RDONLY | O_DIRECTORY);
  }
  let parent: FileHandle | undefined;
  let created = false;
  let record: OwnerRecord | undefined;
  try {
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      const last = i === parts.length - 1;
      const here = path.join(req.root, ...parts.slice(0, i + 1));
      const rec = await readRecordAt(dir.fd, part);
      if (rec && (!last || rec.kind !== req.kind)) {
        throw new ArchInputError(
          req.field,
          `"${req.target}" ${last ? 'is' : 'lies inside'} the ${rec.kind === 'work' ? 'shared work directory' : 'checkpoint directory'} of container ${rec.namespace}/${rec.key} (${here})`,
          rec.kind === 'work'
            ? 'a container can change anything in its work directory: keep checkpoints and other work directories outside every work directory'
            : 'use a path outside every checkpoint directory',
        );
      }
      let next: FileHandle;
      try {
        next = await openNoFollow(dir.fd, part);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' && req.create) {
          await fsp
            .mkdir(`/proc/self/fd/${dir.fd}/${part}`, { mode: req.mode ?? 0o700 })
            .catch((e: NodeJS.ErrnoException) => {
              if (e.code !== 'EEXIST') throw e;
            });
          if (last) created = true;
          const at = dir.fd;
          next = await openNoFollow(at, part).catch(async (e: unknown) =>
            throw_(await walkError(req, here, at, part, e)),
          );
        } else if (code === 'ENOENT') {
          await dir.close();
          await parent?.close();
          return undefined;
        } else {
          throw await walkError(req, here, dir.fd, part, err);
        }
      }
      if (last) record = rec;
      await parent?.close();
      parent = dir;
      dir = next;
    }
  } catch (err) {
    await dir.close().catch(() => undefined);
    await parent?.close().catch(() => undefined);
    throw err;
  }
  const held = dir;
  const heldParent = parent!;
  const name = parts[parts.length - 1]!;
  const recordPath = () => `/proc/self/fd/${heldParent.fd}/${name}${RECORD_SUFFIX}`;
  const h: HeldDir = {
    path: req.target,
    fdPath: `/proc/self/fd/${held.fd}`,
    created,
    record,
    entries: () => fsp.readdir(`/proc/self/fd/${held.fd}`),
    async writeRecord(r: OwnerRecord) {
      // Atomic: a reader sees the old record or the new one.
      const tmp = `${recordPath()}.${process.pid}.tmp`;
      await fsp.writeFile(tmp, JSON.stringify(r), { mode: 0o600, flag: 'wx' });
      await fsp.rename(tmp, recordPath());
      h.record = r;
    },
    async removeAll() {
      // Through the parent held open: the name is looked up in the very directory that was walked.
      await fsp.rm(`/proc/self/fd/${heldParent.fd}/${name}`, { recursive: true, force: true });
      await fsp.rm(recordPath(), { force: true });
      h.record = undefined;
    },
    async close() {
      await held.close().catch(() => undefined);
      await heldParent.close().catch(() => undefined);
    },
  };
  return h;
}

function throw_(err: unknown): never {
  throw err;
}

function openNoFollow(dirFd: number, name: string): Promise<FileHandle> {
  return fsp.open(`/proc/self/fd/${dirFd}/${name}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
}

/** Linux's O_PATH (node does not export it): a handle on a name that opens nothing behind it. */
const O_PATH = 0o10000000;

/**
 * Open the regular file `rel` below the directory `dir` (a path ARCH walked
 * and holds) without following a symlink at any component. The name is
 * first taken with O_PATH, which opens no device or FIFO behind it, and only
 * a regular file is then opened (through that very handle, so a swap of the
 * name in between changes nothing). Errors carry `code`: ENOENT, ELOOP (a
 * symlink on the way or at the end), ENOTREG (not a regular file).
 * `createMode`: a missing file is created (O_EXCL: a new regular file, never
 * one that appeared at that name meanwhile).
 */
export async function openBeneath(dir: string, rel: string, flags: number, createMode?: number): Promise<FileHandle> {
  if (!isPlainRelativePath(rel)) throw new Error(`"${rel}" is not a plain relative path`);
  const parts = rel.split('/');
  let at = await fsp.open(dir, O_RDONLY | O_DIRECTORY);
  let name: FileHandle | undefined;
  try {
    for (const part of parts.slice(0, -1)) {
      const next = await openNoFollow(at.fd, part).catch((err: NodeJS.ErrnoException) => {
        // O_NOFOLLOW with O_DIRECTORY says ENOTDIR for a symlink too.
        throw err.code === 'ENOTDIR' ? Object.assign(err, { code: 'ELOOP' }) : err;
      });
      await at.close();
      at = next;
    }
    const last = `/proc/self/fd/${at.fd}/${parts[parts.length - 1]!}`;
    try {
      name = await fsp.open(last, O_PATH | O_NOFOLLOW);
    } catch (err) {
      if (createMode === undefined || (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      return await fsp.open(last, flags | O_CREAT | O_EXCL | O_NOFOLLOW, createMode);
    }
    const st = await name.stat();
    if (!st.isFile()) {
      const what = st.isSymbolicLink() ? 'a symlink' : 'not a regular file';
      throw Object.assign(new Error(`"${rel}" is ${what}`), { code: st.isSymbolicLink() ? 'ELOOP' : 'ENOTREG' });
    }
    return await fsp.open(`/proc/self/fd/${name.fd}`, flags | O_NONBLOCK);
  } finally {
    await name?.close().catch(() => undefined);
    await at.close().catch(() => undefined);
  }
}

async function walkError(req: WalkRequest, here: string, dirFd: number, name: string, err: unknown): Promise<Error> {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ELOOP' || code === 'ENOTDIR') {
    // O_NOFOLLOW with O_DIRECTORY says ENOTDIR for a symlink too: lstat tells which it was.
    const link =
      code === 'ELOOP' ||
      (await fsp.lstat(`/proc/self/fd/${dirFd}/${name}`).then(
        (st) => st.isSymbolicLink(),
        () => false,
      ));
    return new ArchInputError(
      req.field,
      `"${here}" is ${link ? 'a symlink' : 'not a directory'}`,
      'ARCH follows no symlink below an allowed root: use a path made of plain directories',
    );
  }
  return err as Error;
}

/** The ownership record of `name` in the directory open as dirFd (never through a symlink). */
async function readRecordAt(dirFd: number, name: string): Promise<OwnerRecord | undefined> {
  let text: string;
  try {
    text = await fsp.readFile(`/proc/self/fd/${dirFd}/${name}${RECORD_SUFFIX}`, {
      encoding: 'utf8',
      flag: O_RDONLY | O_NOFOLLOW,
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return parseOwnerRecord(text, name);
}

/** An ownership record's text; an unreadable one still marks its place as ARCH's (never removed, never nested into). */
export function parseOwnerRecord(text: string, name: string): OwnerRecord {
  try {
    const r = JSON.parse(text) as OwnerRecord;
    if (r && (r.kind === 'checkpoint' || r.kind === 'work') && typeof r.containerId === 'string') return r;
  } catch {
    // fall through
  }
  return { kind: 'work', namespace: '?', key: name, containerId: '?', node: '?', createdByArch: false, createdAt: '' };
}

/**
 * Whether `record` lets ARCH remove its directory for container `id` of
 * `namespace`: ARCH created it, and it belongs to that container now.
 */
export function mayRemove(
  record: OwnerRecord | undefined,
  kind: DirKind,
  namespace: string,
  id: string,
): { ok: true } | { ok: false; why: string } {
  if (!record) return { ok: false, why: 'it has no ownership record (ARCH did not create it)' };
  if (record.kind !== kind) return { ok: false, why: `its record says it is a ${record.kind} directory` };
  if (!record.createdByArch) return { ok: false, why: 'it existed before ARCH used it' };
  if (record.namespace !== namespace || record.containerId !== id) {
    return { ok: false, why: `it belongs to container ${record.namespace}/${record.containerId}` };
  }
  return { ok: true };
}
