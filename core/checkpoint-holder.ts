/**
 * Who may remove or reuse a checkpoint the shim made (the policy arch-runc's
 * create and delete follow): a container that was stopped (checkpointed,
 * killed from outside, OOM-killed) keeps it; a clean exit removes it,
 * unless a newer container named with the same ARCH_CHECKPOINT_ID has
 * published to it since; and a new container does not restore from the
 * checkpoint of a predecessor whose job finished (exit 0).
 */
import { validateContainerId } from '../contract/ids.js';
import { readShimState, recordedExit, wasKilled, wasOomKilled } from './shim-state.js';
import type { CheckpointStore } from './store.js';

/** The stop reason of a container the kernel's OOM killer ended: a crash, where the others are stops from outside. */
export const OOM_KILLED = 'OOM-killed';

/** Why a container was stopped rather than finishing its job (undefined: it exited by itself). */
export async function stoppedReason(root: string, id: string, checkpointed: boolean): Promise<string | undefined> {
  if (checkpointed) return 'checkpointed';
  if (await wasKilled(root, id)) return 'stopped from outside';
  if (await wasOomKilled(root, id)) return OOM_KILLED;
  return undefined;
}

/** The current checkpoint and the container that published it (undefined: none, or unreadable). */
async function currentPublisher(store: CheckpointStore): Promise<{ dir: string; containerId: string } | undefined> {
  try {
    const dir = await store.current();
    const m = dir ? await store.readManifest() : null;
    return dir && m ? { dir, containerId: m.containerId } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The container that published the current checkpoint, when it is not this
 * one and this one did not restore from it: that container carries the job
 * on now (a successor with the same ARCH_CHECKPOINT_ID, e.g. a restarted
 * pod), and this one's clean exit must not remove its checkpoint. An
 * unreadable checkpoint is removed by a clean exit, as before.
 */
export async function newerOwner(
  store: CheckpointStore,
  id: string,
  restoredFrom: string | undefined,
): Promise<string | undefined> {
  const p = await currentPublisher(store);
  return p && p.dir !== restoredFrom && p.containerId !== id ? p.containerId : undefined;
}

/**
 * The container that published the current checkpoint, if it is another one
 * still in this runc root that exited 0 by itself (known from its exit record,
 * not assumed) and was not stopped. An unreadable checkpoint is left to
 * restore, which falls back to a fresh start.
 */
export async function finishedPredecessor(
  root: string,
  store: CheckpointStore,
  id: string,
): Promise<string | undefined> {
  const owner = (await currentPublisher(store))?.containerId;
  if (!owner || owner === id) return undefined;
  try {
    validateContainerId(owner); // from storage: it becomes a path below the runc root
  } catch {
    return undefined;
  }
  const s = await readShimState(root, owner);
  if (!s || (await recordedExit(root, owner))?.exitStatus !== 0) return undefined;
  return (await stoppedReason(root, owner, s.checkpointed)) ? undefined : owner;
}
