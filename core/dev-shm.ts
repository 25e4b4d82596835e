import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as tar from 'tar';
import { CheckpointUnusableError } from '../contract/errors.js';
import { DEVSHM_TAR } from './checkpoint-layout.js';
import { openBeneath } from './host-dirs.js';
import { isBindMount, mountAt, type OciSpec } from './oci-spec.js';
import {
  canonical,
  isEmptyArchive,
  packInOrder,
  unreadable,
  validateDiffArchive,
  writeEntryFile,
} from './rootfs-diff.js';

/**
 * A container's /dev/shm, when it is a host directory bound in rather than
 * a tmpfs of its own.
 *
 * POSIX shared memory and named semaphores (shm_open, sem_open: Python's
 * multiprocessing.shared_memory, a job's workers sharing a buffer) are
 * files in /dev/shm. Where /dev/shm is a tmpfs mounted inside the container
 * (`ctr run`, Docker's private IPC), CRIU dumps and restores its files
 * itself. A Kubernetes pod's containers share the pod's /dev/shm instead, a
 * tmpfs on the host that containerd binds into each of them (Docker's
 * shareable IPC does the same): to runc and CRIU an external mount, whose
 * files they leave where they are. A new pod's /dev/shm is empty, so the
 * restored job found its shared memory gone (and a restore whose processes
 * held such a file open failed, the job starting over).
 *
 * So the checkpoint keeps them, as Podman's archives do
 * (devshm-checkpoint.tar): the regular files at the top of /dev/shm (where
 * shm_open and sem_open put theirs), read while CRIU holds the processes
 * at its post-dump action (with CRIU's link remaps: a file the job maps
 * under a name it no longer has gets a second name from CRIU for the dump,
 * core/checkpoint.ts says when), into DEVSHM_TAR, a file's second name as a
 * hard link; the signed manifest records how many and their bytes. A
 * restore writes them back into the new container's /dev/shm before CRIU
 * runs, replacing files of the same name (they are the job's, as its memory
 * is at the checkpoint) and leaving other files alone (another container of
 * the pod may own them). The directory is the pod's, and the pod's other
 * containers may write in it at any time: no name is followed through a
 * symlink, and a name that is not a regular file refuses the restore
 * (reason `devshm`) before anything is written.
 */
export interface DevShmRecord {
  files: number;
  bytes: number;
}

const { O_RDONLY, O_WRONLY, O_TRUNC, O_DIRECTORY, O_NOFOLLOW } = fs.constants;

/**
 * The host directory bound at the container's /dev/shm (a pod's, Docker's
 * shareable IPC), if it is one. Not with the host's IPC namespace (no `ipc`
 * namespace in the spec: hostIPC, --ipc host): that /dev/shm is the node's
 * own, with other processes' files in it, never the job's to keep or write.
 */
export function devShmSource(spec: OciSpec | undefined): string | undefined {
  if (!spec?.linux?.namespaces?.some((n) => n.type === 'ipc')) return undefined;
  const m = mountAt(spec, '/dev/shm');
  if (!m?.source || !path.isAbsolute(m.source)) return undefined;
  return isBindMount(m) ? m.source : undefined;
}

/**
 * Write DEVSHM_TAR of the regular files at the top of `source` (the
 * container manager's directory, named by the spec it wrote) into `destDir`.
 * Everything else there (directories, sockets, symlinks) is not shared
 * memory of shm_open's, and is listed in `skipped`.
 */
export async function captureDevShm(source: string, destDir: string): Promise<DevShmRecord & { skipped: string[] }> {
  const dir = await fsp.open(source, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  try {
    const at = `/proc/self/fd/${dir.fd}`;
    const names: string[] = [];
    const skipped: string[] = [];
    for (const e of await fsp.readdir(at, { withFileTypes: true })) (e.isFile() ? names : skipped).push(e.name);
    const tarFile = path.join(destDir, DEVSHM_TAR);
    const bytes = names.length ? await packInOrder(at, names, tarFile) : 0;
    if (!names.length) await fsp.writeFile(tarFile, Buffer.alloc(1024)); // an empty tar: two zero blocks
    return { files: names.length, bytes, skipped };
  } finally {
    await dir.close();
  }
}

/**
 * The archive's names, checked: regular files at its top only (or second
 * names of them: hard links, which validateDiffArchive allows only to a
 * regular file archived before), each once, no more bytes than the manifest
 * signed.
 */
async function namesIn(tarFile: string, recorded: DevShmRecord): Promise<string[]> {
  if (await isEmptyArchive(tarFile)) return [];
  const names: string[] = [];
  let stray: string | undefined;
  await validateDiffArchive(tarFile, recorded.bytes, (p, type) => {
    names.push(p);
    if ((type !== 'File' && type !== 'Link') || p.includes('/')) stray ??= p;
  });
  if (stray !== undefined)
    throw new CheckpointUnusableError('devshm', `${DEVSHM_TAR}: "${stray}" is not a file at the top of /dev/shm`);
  if (names.length !== recorded.files)
    throw new CheckpointUnusableError(
      'devshm',
      `${DEVSHM_TAR} holds ${names.length} files, the manifest records ${recorded.files}`,
    );
  return names;
}

/**
 * Write the checkpoint's /dev/shm files into the new container's (its spec's
 * bound host directory), before CRIU restores the processes that map them.
 * Returns the names written, and those of them that did not exist before
 * (what removeDevShmFiles takes back if the restore fails after; on its own
 * failure this takes them back itself).
 */
export async function restoreDevShm(
  checkpointDir: string,
  spec: OciSpec | undefined,
  recorded: DevShmRecord,
): Promise<{ names: string[]; created: string[] }> {
  const tarFile = path.join(checkpointDir, DEVSHM_TAR);
  const names = await namesIn(tarFile, recorded);
  if (!names.length) return { names, created: [] };
  const target = devShmSource(spec);
  if (!target)
    throw new CheckpointUnusableError(
      'devshm',
      `the checkpoint holds ${names.length} files of the job's /dev/shm (shared memory of its pod or Docker's shareable IPC), and this container's /dev/shm is not a pod's (a tmpfs of its own, or the node's with the host's IPC namespace): they would be lost. Run it in a pod (or with --ipc shareable) as before`,
    );
  const dir = await fsp.open(target, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  try {
    const at = `/proc/self/fd/${dir.fd}`;
    // Every name checked before one is written: only a regular file (or nothing) may be replaced.
    const created: string[] = [];
    for (const name of names) {
      const st = await fsp.lstat(path.join(at, name)).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
      if (st && !st.isFile())
        throw new CheckpointUnusableError(
          'devshm',
          `/dev/shm/${name} is ${st.isSymbolicLink() ? 'a symlink' : 'not a regular file'} in the new container: not replaced`,
        );
      if (!st) created.push(name);
    }
    const writes: Promise<void>[] = [];
    /** Second names (name, first name), made once every file is written. */
    const links: [string, string][] = [];
    let failed: unknown;
    const write = async (entry: tar.ReadEntry): Promise<void> => {
      if (entry.type === 'Link') {
        links.push([canonical(entry.path), canonical(entry.linkpath ?? '')]);
        entry.resume();
        return;
      }
      try {
        // No symlink followed, no FIFO or device opened: a name changed since the check refuses here.
        const h = await openBeneath(at, canonical(entry.path), O_WRONLY | O_TRUNC, 0o600);
        try {
          await writeEntryFile(h, entry);
        } finally {
          await h.close();
        }
      } catch (err) {
        failed ??= err;
        entry.resume(); // the archive reads on past it
      }
    };
    try {
      await new Promise<void>((resolve, reject) => {
        const parser = new tar.Parser({ strict: true, onReadEntry: (entry) => void writes.push(write(entry)) });
        parser.on('error', reject);
        parser.on('end', resolve);
        fs.createReadStream(tarFile).on('error', reject).pipe(parser);
      }).catch(unreadable);
      await Promise.all(writes);
      // A name in the directory, the directory held open: link(2) follows no symlink at either end.
      for (const [name, first] of links) {
        if (failed) break;
        try {
          await fsp.rm(path.join(at, name), { force: true }); // a regular file or nothing (checked above)
          await fsp.link(path.join(at, first), path.join(at, name));
        } catch (err) {
          failed = err;
        }
      }
      if (failed)
        throw new CheckpointUnusableError(
          'devshm',
          `the job's /dev/shm files could not be written back: ${(failed as Error).message}`,
        );
    } catch (err) {
      await Promise.all(writes);
      await unlinkBeneath(at, created);
      throw err;
    }
    return { names, created };
  } finally {
    await dir.close();
  }
}

/** Remove `names` from the directory open at `at` (no symlink followed: unlink removes the name itself). */
async function unlinkBeneath(at: string, names: readonly string[]): Promise<void> {
  for (const name of names) await fsp.unlink(path.join(at, name)).catch(() => undefined);
}

/** Take back the files restoreDevShm created in the container's /dev/shm (its restore failed after them). */
export async function removeDevShmFiles(spec: OciSpec | undefined, names: readonly string[]): Promise<void> {
  const target = names.length ? devShmSource(spec) : undefined;
  if (!target) return;
  const dir = await fsp.open(target, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  try {
    await unlinkBeneath(`/proc/self/fd/${dir.fd}`, names);
  } finally {
    await dir.close();
  }
}
