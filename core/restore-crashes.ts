/**
 * A checkpoint whose restored job keeps dying at once must not be restored
 * forever. Something the checkpoint cannot carry (a device, a driver, a
 * license server, a CPU quirk the CPU record misses) can make every restore
 * of it crash within moments; its orchestrator then creates the container
 * again, into the same restore, and the job never gets out of that loop.
 * Counted here: restores of one checkpoint in a row whose job crashed (a
 * non-zero exit, an OOM kill) within ARCH_RESTORE_CRASH_WINDOW of its
 * restore. At ARCH_RESTORE_CRASH_LIMIT of them the next create starts the
 * job fresh, with the reason `crash-loop`, and the checkpoint stays where it
 * is until the fresh job's own checkpoints replace it.
 *
 * The count lives in the job's lease (core/lease.ts): signed, beside the
 * checkpoint, so it follows the job to whichever node creates it next.
 */
import path from 'node:path';
import { validateContainerId } from '../contract/ids.js';
import { OOM_KILLED, stoppedReason } from './checkpoint-holder.js';
import { formatDurationMs } from './duration.js';
import type { Lease } from './lease.js';
import type { RestoreCrashes } from './restore-crash-record.js';
import { readShimState, recordedExit, type RecordedExit, type ShimState } from './shim-state.js';

/**
 * A container's end, as the restore crash count sees it: `crash` names it
 * when it was one (a non-zero exit or an OOM kill by itself; a stop from
 * outside, a checkpoint, a forced delete are not), `at` is when it ended.
 */
export interface ContainerEnd {
  crash?: string;
  at: Date;
}

/**
 * The count once the container in `s` has ended as `end`:
 *   - not restored (a fresh start): unchanged, its end says nothing about the checkpoint;
 *   - a crash within the window of its restore: one more for that checkpoint;
 *   - ended after the window, whatever the reason: cleared, the restore held;
 *   - anything else (stopped from outside early): unchanged.
 */
export function afterEnd(
  prev: RestoreCrashes | undefined,
  s: Pick<ShimState, 'restoredFrom' | 'createdAt'>,
  end: ContainerEnd,
  node: string,
  windowMs: number,
): RestoreCrashes | undefined {
  if (!s.restoredFrom) return prev;
  const ranMs = end.at.getTime() - Date.parse(s.createdAt);
  if (!(ranMs <= windowMs)) return undefined; // ran past the window (or the times are unreadable: no count)
  if (!end.crash) return prev;
  const checkpoint = path.basename(s.restoredFrom);
  return {
    checkpoint,
    count: prev?.checkpoint === checkpoint ? prev.count + 1 : 1,
    last: `${end.crash} ${formatDurationMs(Math.max(0, ranMs))} after its restore on ${node}`,
    at: end.at.toISOString(),
  };
}

/** Why the checkpoint named `checkpoint` is not restored (a crash loop), or undefined: restore it. */
export function crashLoopRefusal(
  crashes: RestoreCrashes | undefined,
  checkpoint: string,
  limit: number,
): string | undefined {
  if (!crashes || limit <= 0 || crashes.checkpoint !== checkpoint || crashes.count < limit) return undefined;
  return (
    `the job crashed soon after each of its last ${crashes.count} restores (last: ${crashes.last}); ` +
    `starting fresh instead of restoring ${checkpoint} again. The checkpoint stays in the store until ` +
    `the fresh job's checkpoints replace it. Fix: find why the restored job crashes (its own log, the node's ` +
    `arch-runc log); ARCH_RESTORE_CRASH_LIMIT (0: always restore) and ARCH_RESTORE_CRASH_WINDOW set when this happens`
  );
}

/** What a container's end was, from what delete knows: stopped (the reason, if any), and its recorded exit. */
export function endOf(stopped: string | undefined, exit: RecordedExit | undefined): ContainerEnd {
  const at = exit?.exitedAt ? new Date(exit.exitedAt) : new Date();
  if (stopped === OOM_KILLED) return { crash: stopped, at };
  if (stopped || !exit || exit.exitStatus === 0) return { at };
  return { crash: `exited with code ${exit.exitStatus}`, at };
}

/**
 * The lease's count once the container the lease names has ended, when its
 * end is known here but was never counted: a Kubernetes restart creates the
 * next container of a pod before the crashed one is deleted (whose delete
 * would have counted it). Only a predecessor in this runc root, with a
 * recorded exit, and still holding the job by the lease.
 */
export async function countPredecessor(
  root: string,
  lease: Lease | undefined,
  id: string,
  mine: ReadonlySet<string>,
  windowMs: number,
): Promise<RestoreCrashes | undefined> {
  const prev = lease?.restoreCrashes;
  if (!lease || lease.state !== 'running' || !mine.has(lease.node) || lease.containerId === id) return prev;
  const before = lease.containerId;
  try {
    validateContainerId(before); // from storage: it becomes a path below the runc root
  } catch {
    return prev;
  }
  const s = await readShimState(root, before);
  const exit = s && (await recordedExit(root, before));
  if (!s || !exit) return prev;
  return afterEnd(prev, s, endOf(await stoppedReason(root, before, s.checkpointed), exit), lease.node, windowMs);
}
