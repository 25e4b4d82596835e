/**
 * The steps of moving a container from one node to another, shared by the
 * migrate, drain and pause workflows: preflight and image shipping,
 * checkpoint, transfer and restore, compensation, phase bookkeeping, and the
 * withdrawal of transfer offers.
 */
import {
  ApplicationFailure,
  CancellationScope,
  getExternalWorkflowHandle,
  isCancellation,
  patched,
  workflowInfo,
} from '@temporalio/workflow';
import { workflowIds } from '../contract/names.js';
import { protectHandOverSignal } from './protect.js';
import { FailureType } from '../contract/failures.js';
import { isManaged, managedMoveRefusal } from '../contract/managers.js';
import { reachableEverywhere } from '../contract/types.js';
import { cpuShortfall } from '../contract/cpu.js';
import { failureTypeOf, inputFailure, nodeUnavailable, onNode, refString, rootMessage, DEFAULTS } from './common.js';
import type {
  ActivityTimeouts,
  CheckpointInfo,
  ContainerRef,
  ContainerSpec,
  ExpectedCheckpoint,
  PhaseTiming,
  ReceiveResult,
  RestoreResult,
  TransferOffer,
} from '../contract/types.js';

/**
 * Runs started before this change keep their old course (patched() is false
 * when their history is replayed); new runs withdraw every transfer offer
 * they made as soon as it is not needed, on every path, and make none
 * where nothing will be transferred. A token in a history then opens nothing.
 */
export const OFFERS_PATCH = 'arch-withdraw-offers-v1';

/** Decided once at the start of a run: see OFFERS_PATCH. */
export function withdrawsOffers(): boolean {
  return patched(OFFERS_PATCH);
}

/**
 * Drain and resume leave a container Docker or Kubernetes manages to it
 * (drain: checkpoint and stop, no restore on a target; resume: not created).
 * Runs recorded before treated it like a plain one: replayed, patched() is
 * false and they keep that course. Asked only for a managed container, at
 * the point of that decision.
 */
export const MANAGED_PATCH = 'arch-managed-v1';

/**
 * New runs hand a container's `protect` choice over (handOverProtection) in
 * the same workflow task that schedules its restore, so the signal's round
 * trip runs beside the restore instead of between the restore and the
 * source's clean-up (~one workflow task, 30-40 ms of every move). Sending it
 * early is safe: the source keeps its choice (the signal only copies it to
 * the target), and a target whose restore fails drops the carried choice
 * when the container never shows up there. Runs recorded before this change
 * replay with the signal after the restore (patched() is false for them).
 */
export const EARLY_HAND_OVER_PATCH = 'arch-protect-hand-over-early-v1';

/** Decided once at the start of a run: see EARLY_HAND_OVER_PATCH. */
export function handsOverEarly(): boolean {
  return patched(EARLY_HAND_OVER_PATCH);
}

export function leavesToManager(manager: string | undefined): boolean {
  return isManaged(manager) && patched(MANAGED_PATCH);
}

/**
 * Best effort, and also while the workflow is being cancelled: a source
 * that is gone took its offers with it (they live in its worker's memory).
 */
export async function withdrawOffer(
  node: string,
  offer: TransferOffer | undefined,
  t: ActivityTimeouts,
): Promise<void> {
  if (!offer) return;
  const quick = { ...t, nodeStartTimeoutMs: Math.min(t.nodeStartTimeoutMs ?? DEFAULTS.nodeStartTimeoutMs, 10_000) };
  await CancellationScope.nonCancellable(() =>
    onNode(node, 'quick', quick).withdrawOffer({ token: offer.token }),
  ).catch(() => undefined);
}

/** Phase bookkeeping shared by migrate and drain. */
export class Timeline {
  readonly phases: PhaseTiming[] = [];
  /** Activities report their own duration as `ms` (or `totalMs`); others count as overhead. */
  async step<T>(phase: string, node: string, fn: () => Promise<T>, parallelGroup?: string): Promise<T> {
    const s = Date.now();
    const r = await fn();
    const own = r as { ms?: unknown; totalMs?: unknown } | undefined;
    const activityMs =
      typeof own?.ms === 'number' ? own.ms : typeof own?.totalMs === 'number' ? own.totalMs : undefined;
    this.phases.push({ phase, node, ms: Date.now() - s, activityMs, ...(parallelGroup ? { parallelGroup } : {}) });
    return r;
  }
  /** Time inside activities on the critical path: steps run in parallel count once (the longest). */
  activityMs(): number {
    const groups = new Map<string, number>();
    let sum = 0;
    for (const p of this.phases) {
      if (p.parallelGroup) groups.set(p.parallelGroup, Math.max(groups.get(p.parallelGroup) ?? 0, p.activityMs ?? 0));
      else sum += p.activityMs ?? 0;
    }
    for (const v of groups.values()) sum += v;
    return sum;
  }
}

/** Rethrow an activity failure as an ApplicationFailure that says where and what. */
function wrap(err: unknown, node: string, what: string, t: ActivityTimeouts): ApplicationFailure {
  if (isCancellation(err)) throw err;
  const type = failureTypeOf(err);
  if (type === FailureType.nodeUnavailable)
    return nodeUnavailable(node, t.nodeStartTimeoutMs ?? DEFAULTS.nodeStartTimeoutMs, err);
  return ApplicationFailure.create({
    type: type ?? 'ActivityFailed',
    message: `${what} on node ${node} failed: ${rootMessage(err)}`,
    nonRetryable: true,
    cause: err instanceof Error ? err : undefined,
  });
}

export interface Prepared {
  spec: ContainerSpec;
}

/**
 * Everything that can be refused before the container is touched. The
 * source and the target are checked in parallel (one round trip less).
 */
export async function prepareMove(
  ref: ContainerRef,
  from: string,
  to: string,
  t: ActivityTimeouts,
  tl: Timeline,
  tidy = false,
): Promise<Prepared> {
  const [described, target] = await Promise.all([
    tl
      .step('describe', from, () => onNode(from, 'quick', t).describeContainer(ref), 'preflight')
      .catch((err: unknown) => {
        throw wrap(err, from, `describing ${refString(ref)}`, t);
      })
      .then((d) => {
        // Recreating it on `to` would make a copy its orchestrator does not know: refused before anything stops.
        // (Histories from before describe reported a manager have none here: their course is unchanged.)
        if (isManaged(d.manager)) throw inputFailure(managedMoveRefusal(refString(ref), d.manager));
        return d;
      }),
    tl
      .step('check-target', to, () => onNode(to, 'quick', t).checkTarget({ ref }), 'preflight')
      .catch((err: unknown) => {
        throw wrap(err, to, `checking target for ${refString(ref)}`, t);
      }),
  ]);
  if (described.status !== 'RUNNING') {
    throw ApplicationFailure.create({
      type: FailureType.containerNotRunning,
      message: `${refString(ref)} is ${described.status} on node ${from}, not running: nothing to move`,
      nonRetryable: true,
    });
  }
  // Restored on a CPU without the instructions it started with, the job would die (SIGILL): refused before it stops.
  // (Histories from before the nodes reported their CPUs have none here: their course is unchanged.)
  const short = cpuShortfall(described.cpu, target.cpu);
  if (short)
    throw inputFailure(
      `${refString(ref)} cannot move from node ${from} to node ${to}: ${to}'s CPU ${short.what}; the job's processes chose their instructions when they started on ${from} and would die there (SIGILL). Fix: pick a target whose CPU has them`,
    );
  const spec = described.spec;
  if (!target.images.includes(spec.image)) await shipImage(spec, from, to, t, tl, tidy);
  return { spec };
}

/**
 * Ship the image from the source before anything stops: a target that
 * cannot get it must refuse now, not after the processes are gone.
 */
export async function shipImage(
  spec: ContainerSpec,
  from: string,
  to: string,
  t: ActivityTimeouts,
  tl: Timeline,
  tidy = false,
): Promise<void> {
  let offer: TransferOffer | undefined;
  try {
    offer = await tl.step('image-export', from, () =>
      onNode(from, 'transfer', t).offerImage({ namespace: spec.namespace, image: spec.image }),
    );
    await tl.step('image-import', to, () =>
      onNode(to, 'transfer', t).ensureImage({ namespace: spec.namespace, image: spec.image, offer }),
    );
  } catch (err) {
    throw wrap(err, to, `getting image ${spec.image}`, t);
  } finally {
    if (tidy) await withdrawOffer(from, offer, t);
    else if (offer)
      await onNode(from, 'quick', t)
        .withdrawOffer({ token: offer.token })
        .catch(() => undefined);
  }
}

/** `offer`: also offer it for transfer (default: node-local storage, where a target must copy it). */
export async function checkpointOn(
  ref: ContainerRef,
  node: string,
  spec: ContainerSpec,
  t: ActivityTimeouts,
  tl: Timeline,
  leaveRunning = false,
  offer?: boolean,
) {
  try {
    return await tl.step('checkpoint', node, () =>
      onNode(node, 'checkpoint', t).checkpointContainer({
        ref,
        leaveRunning,
        offer: offer ?? !reachableEverywhere(spec.mode),
        notBefore: workflowInfo().startTime.toISOString(),
      }),
    );
  } catch (err) {
    throw wrap(err, node, `checkpoint of ${refString(ref)} (the container keeps running there)`, t);
  }
}

export const expectedOf = (ck: CheckpointInfo): ExpectedCheckpoint => ({
  manifestSha256: ck.manifestSha256,
  node: ck.node,
  createdAt: ck.createdAt,
});

/**
 * Transfer (re-offering if the source's offer went away) and restore on `to`.
 * `tidy` (OFFERS_PATCH): the offer is withdrawn once the bytes are on `to`,
 * while the restore runs, and ck.offer says what is still offered (nothing
 * then; a next target asks for a new offer).
 */
export async function moveCheckpointed(
  spec: ContainerSpec,
  ck: CheckpointInfo & { offer?: TransferOffer },
  to: string,
  t: ActivityTimeouts,
  tl: Timeline,
  onPhase: (p: string) => void,
  tidy = false,
  beforeRestore?: () => Promise<void>,
): Promise<{ received: ReceiveResult; restored: RestoreResult; offer?: TransferOffer }> {
  const ref = { namespace: spec.namespace, id: spec.id };
  const expected = expectedOf(ck);
  let offer = ck.offer;
  if (tidy && !offer && !reachableEverywhere(ck.mode)) {
    offer = ck.offer = await tl.step('offer', ck.node, () =>
      onNode(ck.node, 'quick', t).offerCheckpoint({ ref, dir: ck.dir, manifestSha256: ck.manifestSha256 }),
    );
  }
  let received: ReceiveResult | undefined;
  // Shared storage or object storage: the target reads the very same checkpoint; the
  // restore itself checks that it sees it (one activity round trip less).
  if (reachableEverywhere(ck.mode)) received = { kind: 'present', dir: ck.dir, bytes: 0, files: 0, ms: 0 };
  else onPhase('transfer');
  for (let i = 0; !received; i++) {
    try {
      received = await tl.step('transfer', to, () =>
        onNode(to, 'transfer', t).receiveCheckpoint({ spec, expected, offer }),
      );
    } catch (err) {
      if (failureTypeOf(err) !== FailureType.offerGone || i >= 3 || reachableEverywhere(spec.mode))
        throw wrap(err, to, `transfer of ${refString(ref)}`, t);
      offer = await tl.step('offer', ck.node, () =>
        onNode(ck.node, 'quick', t).offerCheckpoint({ ref, dir: ck.dir, manifestSha256: ck.manifestSha256 }),
      );
      if (tidy) ck.offer = offer;
    }
  }
  // Runs beside the restore: no time added to the move.
  let withdrawn: Promise<void> = Promise.resolve();
  if (tidy && offer) {
    withdrawn = withdrawOffer(ck.node, offer, t);
    ck.offer = undefined;
  }
  onPhase('restore');
  // Scheduled in the same workflow task as the restore (EARLY_HAND_OVER_PATCH); never fails.
  const handedOver = beforeRestore?.() ?? Promise.resolve();
  try {
    const restored = await tl.step('restore', to, () => onNode(to, 'restore', t).restoreContainer({ spec, expected }));
    return { received, restored, offer: tidy ? undefined : offer };
  } catch (err) {
    throw wrap(err, to, `restore of ${refString(ref)}`, t);
  } finally {
    await withdrawn;
    await handedOver;
  }
}

/**
 * The move failed after the checkpoint: remove whatever copy `to` may have,
 * then restore on the source from the same checkpoint. Returns where it
 * runs, or throws MigrationFailed with what to do by hand.
 */
export async function compensate(
  spec: ContainerSpec,
  ck: CheckpointInfo,
  from: string,
  to: string,
  cause: unknown,
  t: ActivityTimeouts,
  tl: Timeline,
): Promise<RestoreResult> {
  const ref = { namespace: spec.namespace, id: spec.id };
  return CancellationScope.nonCancellable(async () => {
    try {
      // A dead target cannot hold a running copy for long; do not wait on it.
      await tl.step('remove-target-copy', to, () =>
        onNode(to, 'quick', {
          ...t,
          nodeStartTimeoutMs: Math.min(t.nodeStartTimeoutMs ?? DEFAULTS.nodeStartTimeoutMs, 10_000),
        }).removeContainer({ ref }),
      );
    } catch {
      // node gone or containerd down: nothing of ours runs there
    }
    try {
      return await tl.step('compensate-restore', from, () =>
        onNode(from, 'restore', t).restoreContainer({ spec, expected: expectedOf(ck) }),
      );
    } catch (err2) {
      throw ApplicationFailure.create({
        type: FailureType.migrationFailed,
        message: `${refString(ref)}: restore failed on ${to} (${rootMessage(cause)}) and again on ${from} (${rootMessage(err2)}). Its checkpoint is kept in ${ck.dir} on ${from}: create the container again there (same namespace, id and environment, runtime arch-runc) to restore it`,
        nonRetryable: true,
        details: [{ checkpointDir: ck.dir, node: from }],
      });
    }
  });
}

/**
 * The container is moving from `from` to `to`: the protect workflow of
 * `from` hands its `arch-cli protect` choice on to the one of `to`
 * (workflows/protect.ts). Sent before the source's clean-up, so the choice
 * is still there to hand on (new runs: as the restore is scheduled, see
 * EARLY_HAND_OVER_PATCH). A node without a protect workflow has no choice
 * to carry: nothing to do. Never fails.
 */
export async function handOverProtection(ref: ContainerRef, from: string, to: string): Promise<void> {
  if (!patched('protect-hand-over')) return; // a move started before this existed replays as it ran
  try {
    await getExternalWorkflowHandle(workflowIds.protect(from)).signal(protectHandOverSignal, {
      namespace: ref.namespace,
      id: ref.id,
      to,
    });
  } catch {
    // no protect workflow on `from`
  }
}
