/**
 * drainNode(node, targets, deadline): get every ARCH container off a node
 * that is going away.
 *
 * Phase 1 races the deadline: checkpoint every container (highest priority
 * first, in the order and parallelism core/drain-plan.ts computes from the
 * node's measured disk throughput), so that what the node had is safe
 * before it dies. The containers the plan does not expect to finish in time
 * are reported before any checkpoint starts (node log, workflow details,
 * `expectedToFit` in the result) and tried last, each only if its estimate
 * still fits in the time left; otherwise it is reported as skipped and keeps
 * running (a checkpoint never half-publishes: its previous one stays). Phase 2 does not depend on the node any more (shared
 * storage) or only on its transfer server (local storage): each checkpoint
 * is restored on a target, round-robin, trying the next target if one fails.
 * A container Docker or Kubernetes manages is checkpointed and stopped in
 * phase 1 like the others but not restored: its orchestrator creates it
 * again (outcome left-to-manager).
 */
import { ApplicationFailure, log } from '@temporalio/workflow';
import { FailureType } from '../contract/failures.js';
import { cpuShortfall, type CpuRecord } from '../contract/cpu.js';
import {
  boundedAll,
  checkDeadline,
  checkNode,
  failureTypeOf,
  inputFailure,
  nodeUnavailable,
  onNode,
  rootMessage,
  track,
  DEFAULTS,
} from './common.js';
import { drainCounts } from './drain-outcomes.js';
import {
  checkpointOn,
  compensate,
  expectedOf,
  leavesToManager,
  handOverProtection,
  handsOverEarly,
  moveCheckpointed,
  shipImage,
  Timeline,
  withdrawOffer,
  withdrawsOffers,
} from './move-steps.js';
import type {
  ActivityTimeouts,
  CheckpointInfo,
  ContainerSpec,
  DrainContainerResult,
  DrainInput,
  DrainPlanSummary,
  DrainResult,
  PlannedContainer,
  TransferOffer,
} from '../contract/types.js';

const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

export async function drainNode(input: DrainInput): Promise<DrainResult> {
  const node = checkNode(input.node, 'node');
  const targets = (input.targets ?? []).map((n, i) => checkNode(n, `targets[${i}]`));
  if (targets.includes(node))
    throw inputFailure(`targets include the drained node ${node}. Fix: restore on other nodes`);
  const deadline = checkDeadline(input.deadline);
  const deadlineMs = Date.parse(deadline);
  const t0 = Date.now();
  const t: ActivityTimeouts = input;
  const tidy = withdrawsOffers();
  const early = handsOverEarly();
  const phase = (p: string, details: string) =>
    track(
      { sourceNode: node, targetNode: targets.join(','), operation: 'drain', phase: p },
      `**${p}** — drain ${node} → ${targets.join(', ') || '(checkpoint only)'} by ${deadline}${input.reason ? ` (${input.reason})` : ''}\n\n${details}`,
    );
  phase('plan', 'planning');

  let plan: DrainPlanSummary;
  try {
    plan = await onNode(node, 'quick', t).planDrain({
      deadline,
      maxParallel: input.parallelism ?? 2,
      selector: input.selector,
    });
  } catch (err) {
    if (failureTypeOf(err) === FailureType.nodeUnavailable)
      throw nodeUnavailable(node, t.nodeStartTimeoutMs ?? DEFAULTS.nodeStartTimeoutMs, err);
    throw ApplicationFailure.create({
      type: failureTypeOf(err) ?? FailureType.drainFailed,
      message: `planning the drain of ${node} failed: ${rootMessage(err)}`,
      nonRetryable: true,
    });
  }

  const results: DrainContainerResult[] = plan.order.map((c) => ({
    namespace: c.namespace,
    id: c.id,
    outcome: 'checkpoint-failed' as const,
    expectedToFit: c.expectedToFit,
  }));
  const checkpointed: {
    idx: number;
    spec: ContainerSpec;
    ck: CheckpointInfo & { offer?: TransferOffer };
    /** The CPU its processes started on (the drained node's): a target must have its instructions. */
    cpu?: CpuRecord;
  }[] = [];
  // Reported before any checkpoint starts: the node logged it too (planDrain).
  const late = plan.notExpectedToFit;
  if (late.length) {
    log.warn('drain: containers not expected to finish before the deadline', {
      node,
      deadline,
      budgetMs: plan.budgetMs,
      notExpectedToFit: late,
    });
  }
  phase(
    'checkpoint',
    `${plan.order.length} containers, ${plan.parallelism} at a time, ${plan.expectedToFit} expected in time` +
      (late.length ? `\n\nnot expected to fit: ${late.join(', ')} (tried last, only if time is left)` : ''),
  );

  const checkpointOne = async (c: PlannedContainer, idx: number): Promise<void> => {
    const r = results[idx]!;
    const ref = { namespace: c.namespace, id: c.id };
    if (!c.expectedToFit) {
      // Best effort, after every container that fits: start it only if its
      // estimate still fits in the time left. A hopeless checkpoint would
      // freeze the container for nothing; skipped, it keeps running here and
      // its previous checkpoint (if any) stays the one to restore.
      const leftMs = deadlineMs - Date.now() - plan.safetyMarginMs;
      if (c.estimatedMs > leftMs) {
        r.outcome = 'skipped';
        r.runningOn = node;
        r.checkpointedInTime = false;
        r.error = `not started: not expected to finish before the deadline (needs about ${secs(c.estimatedMs)}, ${secs(Math.max(0, leftMs))} left); it keeps running on ${node}, its previous checkpoint (if any) kept`;
        return;
      }
    }
    const tl = new Timeline();
    const s = Date.now();
    try {
      const described = await onNode(node, 'quick', t).describeContainer(ref);
      // Docker or Kubernetes creates it again (wherever it schedules it) and
      // arch-runc restores it then: a copy ARCH made on a target would be a
      // second one of the job.
      const managed = leavesToManager(described.manager);
      // Whatever time is left: a checkpoint that ends after the node is gone is worthless.
      const left = Math.max(5_000, deadlineMs - Date.now());
      // Checkpoint only (no targets, or left to its manager): nothing will be fetched, so nothing is offered.
      const offer = tidy && (targets.length === 0 || managed) ? false : undefined;
      const ck = await checkpointOn(
        ref,
        node,
        described.spec,
        {
          ...t,
          checkpointTimeoutMs: Math.min(left, t.checkpointTimeoutMs ?? DEFAULTS.checkpointTimeoutMs),
          checkpointDeadlineEpochMs: deadlineMs,
        },
        tl,
        false,
        offer,
      );
      r.checkpointMs = Date.now() - s;
      r.sizeBytes = ck.sizeBytes;
      r.checkpointedInTime = Date.now() <= deadlineMs;
      if (managed) {
        r.outcome = 'left-to-manager';
        r.manager = described.manager;
        return;
      }
      r.outcome = 'checkpointed';
      // The checkpoint's own record (the CPU its processes started on); the node's where it has none.
      checkpointed.push({ idx, spec: described.spec, ck, cpu: ck.cpu ?? described.cpu });
    } catch (err) {
      r.error = rootMessage(err);
      r.checkpointedInTime = false;
    }
  };
  const indexed = plan.order.map((c, idx) => ({ c, idx }));
  // The plan's estimates assume the containers that fit have the disk to
  // themselves: the others start only once all of them are done.
  await boundedAll(
    indexed.filter((x) => x.c.expectedToFit),
    plan.parallelism,
    ({ c, idx }) => checkpointOne(c, idx),
  );
  await boundedAll(
    indexed.filter((x) => !x.c.expectedToFit),
    plan.parallelism,
    ({ c, idx }) => checkpointOne(c, idx),
  );
  const checkpointPhaseMs = Date.now() - t0;

  if (targets.length > 0 && checkpointed.length > 0) {
    phase('restore', `${checkpointed.length} checkpointed in ${checkpointPhaseMs} ms; restoring`);
    checkpointed.sort((a, b) => a.idx - b.idx);
    await boundedAll(checkpointed, Math.max(plan.parallelism, 2), async ({ idx, spec, ck, cpu }, i) => {
      const r = results[idx]!;
      const errors: string[] = [];
      for (let k = 0; k < targets.length; k++) {
        const to = targets[(i + k) % targets.length]!;
        const tl = new Timeline();
        try {
          // The checks (CPU, image, shipped if missing) of a normal move; the container is already stopped.
          await prepareTarget(spec, node, to, t, tl, tidy, cpu);
          const moved = await moveCheckpointed(
            spec,
            ck,
            to,
            t,
            tl,
            () => undefined,
            tidy,
            early ? () => handOverProtection(spec, node, to) : undefined,
          );
          r.outcome = 'migrated';
          r.target = to;
          r.runningOn = to;
          r.transferMs = tl.phases.filter((p) => p.phase === 'transfer').reduce((a, p) => a + p.ms, 0);
          r.restoreMs = tl.phases.filter((p) => p.phase === 'restore').reduce((a, p) => a + p.ms, 0);
          r.error = undefined;
          if (!early) await handOverProtection(spec, node, to);
          // The source may be gone already: its clean-up is best effort and quick to give up.
          await onNode(node, 'quick', { ...t, nodeStartTimeoutMs: 5_000 })
            .cleanupSource({
              spec,
              removeCheckpoint: moved.received.kind === 'copied',
              expected: expectedOf(ck),
              offerToken: moved.offer?.token,
            })
            .catch(() => undefined);
          return;
        } catch (err) {
          errors.push(`${to}: ${rootMessage(err)}`);
        }
      }
      r.target = targets[i % targets.length];
      // Whatever happens to it now, its checkpoint is not fetched any more.
      if (tidy) await withdrawOffer(node, ck.offer, { ...t, nodeStartTimeoutMs: 5_000 });
      // No target took it. While the node is still there (a maintenance
      // drain, or time left before a reclaim), it goes back to running there.
      if (Date.now() < deadlineMs) {
        try {
          await compensate(
            spec,
            ck,
            node,
            r.target!,
            new Error(errors.join('; ')),
            { ...t, nodeStartTimeoutMs: 10_000 },
            new Timeline(),
          );
          r.outcome = 'compensated';
          r.runningOn = node;
          r.error = `no target could restore it (${errors.join('; ')}); it runs again on ${node}`;
          return;
        } catch (err) {
          errors.push(`${node} (back): ${rootMessage(err)}`);
        }
      }
      r.outcome = 'restore-failed';
      r.error = `${errors.join('; ')}. The checkpoint is kept on ${node}'s storage`;
    });
  }

  const result: DrainResult = {
    node,
    targets,
    deadline,
    reason: input.reason,
    containers: results,
    plan: {
      parallelism: plan.parallelism,
      budgetMs: plan.budgetMs,
      plannedAt: plan.plannedAt,
      throughputBytesPerSec: plan.throughputBytesPerSec,
      notExpectedToFit: late,
    },
    withinDeadline: results.every((r) => r.checkpointedInTime === true),
    checkpointPhaseMs,
    totalMs: Date.now() - t0,
  };
  const counts = drainCounts(results);
  const skipped = results.filter((r) => r.outcome === 'skipped').map((r) => `${r.namespace}/${r.id}`);
  phase(
    'done',
    `${targets.length ? `${counts.migrated} migrated` : `${counts.checkpointed} checkpointed`}, ${counts.leftToManager ? `${counts.leftToManager} left to their manager, ` : ''}${counts.failed} failed${skipped.length ? ` (${skipped.length} not started)` : ''} of ${results.length}; checkpoints ${result.withinDeadline ? 'within' : 'NOT within'} the deadline` +
      (late.length
        ? `\n\nnot expected to fit: ${late.join(', ')}${skipped.length ? `; not started (still on ${node}): ${skipped.join(', ')}` : ''}`
        : ''),
  );
  return result;
}

/** Make sure `to` can take the container (alive, not running it, a CPU with the job's instructions, has the image). */
async function prepareTarget(
  spec: ContainerSpec,
  from: string,
  to: string,
  t: ActivityTimeouts,
  tl: Timeline,
  tidy: boolean,
  cpu: CpuRecord | undefined,
): Promise<void> {
  const target = await tl.step('check-target', to, () =>
    onNode(to, 'quick', t).checkTarget({ ref: { namespace: spec.namespace, id: spec.id } }),
  );
  const short = cpuShortfall(cpu, target.cpu);
  if (short)
    throw inputFailure(
      `node ${to}'s CPU ${short.what}; the job's processes chose their instructions when they started on ${from} and would die there (SIGILL)`,
    );
  if (!target.images.includes(spec.image)) await shipImage(spec, from, to, t, tl, tidy);
}
