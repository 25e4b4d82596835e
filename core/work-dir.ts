import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { checkpointKeyOf, ENV, workDirOf, type EnabledContract } from './env-contract.js';
import { holdDir, mayRemove, type HeldDir } from './host-dirs.js';
import { runCommand } from './run-command.js';
import { isAlive } from './pid.js';

/**
 * Where a walked work dir is bind-mounted for runc to take it from: root's
 * own tmpfs, which no container can write. The name carries the pid of the
 * process that holds it, so one left by a killed arch-runc is found and removed.
 */
export const STAGE_DIR = '/run/arch/work-mounts';

/**
 * Shared mode's work directory (<ARCH_SHAREDFS_HOST_PATH>/work/<ns>/<key>),
 * bind-mounted read-write into its container. It is walked to from the
 * node's allowed root without following symlinks, and it always carries an
 * ownership record beside it before it is mounted: that record is what stops
 * another container's paths from lying inside it (core/host-dirs.ts).
 */
/** A work dir ready to mount: `mountSource` names the very directory that was walked, until release(). */
export interface PreparedWorkDir {
  path: string;
  /** A bind mount of the very directory that was walked, whatever its path says meanwhile: what runc mounts. */
  mountSource: string;
  release(): Promise<void>;
}

export async function prepareWorkDir(
  contract: EnabledContract,
  namespace: string,
  id: string,
  node: string,
  user?: { uid: number; gid: number },
): Promise<PreparedWorkDir | undefined> {
  const held = await walkWorkDir(contract, namespace, id, true);
  if (!held) return undefined;
  const target = held.path;
  try {
    const key = checkpointKeyOf(contract, id);
    if (user && (held.created || held.record?.createdByArch)) await giveToJob(held.fdPath, user);
    if (held.created || !held.record) {
      // One that existed before (made by hand, or by an ARCH without records) is used, never removed.
      await held.writeRecord({
        kind: 'work',
        namespace,
        key,
        containerId: id,
        node,
        createdByArch: held.created,
        createdAt: new Date().toISOString(),
      });
    } else if (held.record.containerId !== id) {
      // The same job in a new container (ARCH_CHECKPOINT_ID): it holds the work dir from now on.
      await held.writeRecord({ ...held.record, containerId: id, node });
    }
    // Checking a path and then handing the path on would let a swap in between
    // redirect the mount. The open directory itself is bind-mounted where no
    // container can write (runc's own mount namespace is a copy of this one,
    // so it can take the mount from there; it could not take /proc/<pid>/fd/<n>,
    // whose mount belongs to this namespace only).
    await removeStaleStages();
    const stage = path.join(STAGE_DIR, `${namespace}-${id}-${process.pid}-${randomBytes(3).toString('hex')}`);
    await fsp.mkdir(stage, { recursive: true, mode: 0o700 });
    await runCommand('mount', [
      '--no-canonicalize',
      '--bind',
      held.fdPath.replace('/proc/self/', `/proc/${process.pid}/`),
      stage,
    ]);
    return {
      path: target,
      mountSource: stage,
      // The container's mount stays: it is its own mount of the directory, not this one.
      release: async () => {
        await unstage(stage);
        await held.close();
      },
    };
  } catch (err) {
    await held.close();
    throw err;
  }
}

/**
 * A work dir ARCH made belongs to the user the job runs as (its image's
 * USER, a pod's runAsUser, mapped through a user namespace): made as root
 * with mode 0755, a job that is not root could not write in it. One that
 * is still root's is given to the job; one that already belongs to
 * someone else is left as it is (that owner's choice, or an earlier job's).
 * Through the held descriptor: the very directory that was walked.
 */
async function giveToJob(fdPath: string, user: { uid: number; gid: number }): Promise<void> {
  const st = await fsp.stat(fdPath);
  if (st.uid === user.uid && st.gid === user.gid) return;
  if (st.uid !== 0 || st.gid !== 0) return;
  await fsp.chown(fdPath, user.uid, user.gid);
}

/**
 * The work dir of a container (shared mode), walked to from the allowed root
 * without following a symlink and held open: made when `create` (for its
 * mount), else undefined when it is not there (a checkpoint reads it). Also
 * undefined outside shared mode.
 */
export async function walkWorkDir(
  contract: EnabledContract,
  namespace: string,
  id: string,
  create: boolean,
): Promise<HeldDir | undefined> {
  const target = workDirOf(contract, namespace, id);
  if (!target) return undefined;
  return holdDir({ root: contract.allowedRoot, target, kind: 'work', create, mode: 0o755, field: ENV.sharedHostPath });
}

async function unstage(stage: string): Promise<void> {
  await runCommand('umount', ['-l', stage], { reject: false });
  await fsp.rmdir(stage).catch(() => undefined);
}

/** Stages of arch-runc processes that died before they released them. */
async function removeStaleStages(): Promise<void> {
  for (const name of await fsp.readdir(STAGE_DIR).catch(() => [] as string[])) {
    const pid = Number(/-(\d+)-[0-9a-f]{6}$/.exec(name)?.[1]);
    if (Number.isInteger(pid) && pid > 0 && !isAlive(pid)) await unstage(path.join(STAGE_DIR, name));
  }
}

/** Remove a work dir after its job finished, only when ARCH made it and it belongs to `namespace`/`id`. */
export async function removeWorkDir(
  where: { allowedRoot: string; workDir: string },
  namespace: string,
  id: string,
): Promise<{ removed: boolean; why?: string }> {
  const held = await holdDir({
    root: where.allowedRoot,
    target: where.workDir,
    kind: 'work',
    create: false,
    field: ENV.sharedHostPath,
  });
  if (!held) return { removed: false, why: 'it does not exist' };
  try {
    const may = mayRemove(held.record, 'work', namespace, id);
    if (!may.ok) return { removed: false, why: may.why };
    await held.removeAll();
    return { removed: true };
  } finally {
    await held.close();
  }
}
