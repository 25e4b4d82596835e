/**
 * pauseContainers / resumeContainers(node, selector): checkpoint-and-stop
 * the matching running containers of a node (their containerd records stay,
 * with a stopped task), and later create them again in place so arch-runc
 * restores them. Started by hand (`arch-cli pause|resume`) or by the
 * Temporal Schedules `arch-cli schedule create` makes. A container Docker
 * or Kubernetes manages is paused the same way, but resume never creates it:
 * its orchestrator does, and arch-runc restores it then.
 */
import { ApplicationFailure } from '@temporalio/workflow';
import { FailureType } from '../contract/failures.js';
import {
  boundedAll,
  checkNode,
  failureTypeOf,
  nodeUnavailable,
  onNode,
  refString,
  rootMessage,
  track,
  DEFAULTS,
} from './common.js';
import { leftToManager, isManaged, resumeRefusal } from '../contract/managers.js';
import { checkpointOn, leavesToManager, Timeline, withdrawsOffers } from './move-steps.js';
import type { ContainerSummary, PauseInput, PauseItemResult, PauseResult } from '../contract/types.js';

async function select(input: PauseInput, node: string, action: 'pause' | 'resume'): Promise<ContainerSummary[]> {
  try {
    const a = onNode(node, 'quick', input);
    return action === 'pause'
      ? await a.selectContainers({ selector: input.selector, runningOnly: true })
      : await a.selectPaused({ selector: input.selector });
  } catch (err) {
    if (failureTypeOf(err) === FailureType.nodeUnavailable)
      throw nodeUnavailable(node, input.nodeStartTimeoutMs ?? DEFAULTS.nodeStartTimeoutMs, err);
    throw ApplicationFailure.create({
      type: failureTypeOf(err) ?? 'ActivityFailed',
      message: `selecting containers on ${node} failed: ${rootMessage(err)}`,
      nonRetryable: true,
    });
  }
}

function show(node: string, action: 'pause' | 'resume', phase: string, details: string, schedule?: string): void {
  track(
    { sourceNode: node, targetNode: node, operation: action, phase },
    `**${phase}** — ${action} on ${node}${schedule ? ` (schedule ${schedule})` : ''}\n\n${details}`,
  );
}

/** Pause and resume differ only in the per-container step; selection, parallelism and reporting are shared. */
async function forEachSelected(
  input: PauseInput,
  action: 'pause' | 'resume',
  what: { selecting: string; stepPhase: string; done: string },
  step: (c: ContainerSummary, node: string) => Promise<Partial<PauseItemResult>>,
): Promise<PauseResult> {
  const node = checkNode(input.node, 'node');
  const t0 = Date.now();
  show(node, action, 'select', what.selecting, input.schedule);
  const list = await select(input, node, action);
  show(
    node,
    action,
    what.stepPhase,
    `${list.length} containers: ${list.map(refString).join(', ') || 'none'}`,
    input.schedule,
  );
  const containers = await boundedAll(list, input.parallelism ?? 2, async (c): Promise<PauseItemResult> => {
    const ref = { namespace: c.namespace, id: c.id };
    const s = Date.now();
    try {
      const extra = await step(c, node);
      return { ...ref, outcome: action === 'pause' ? 'paused' : 'resumed', ms: Date.now() - s, ...extra };
    } catch (err) {
      return { ...ref, outcome: 'failed', ms: Date.now() - s, error: rootMessage(err) };
    }
  });
  const failed = containers.filter((c) => c.outcome === 'failed').length;
  const skipped = containers.filter((c) => c.outcome === 'skipped').length;
  show(
    node,
    action,
    'done',
    `${containers.length - failed - skipped} ${what.done}, ${skipped ? `${skipped} skipped (managed), ` : ''}${failed} failed`,
    input.schedule,
  );
  return { node, action, containers, totalMs: Date.now() - t0 };
}

export async function pauseContainers(input: PauseInput): Promise<PauseResult> {
  // A paused container is restored where it is: nothing to offer for transfer.
  const offer = withdrawsOffers() ? false : undefined;
  return forEachSelected(
    input,
    'pause',
    { selecting: 'selecting running ARCH containers', stepPhase: 'checkpoint', done: 'paused' },
    async (c, node) => {
      const ref = { namespace: c.namespace, id: c.id };
      const { spec, manager = c.manager } = await onNode(node, 'quick', input).describeContainer(ref);
      const ck = await checkpointOn(ref, node, spec, input, new Timeline(), false, offer);
      // The same checkpoint and stop; its orchestrator, not resume, starts it again.
      return isManaged(manager)
        ? { sizeBytes: ck.sizeBytes, manager, note: leftToManager(manager!) }
        : { sizeBytes: ck.sizeBytes };
    },
  );
}

export async function resumeContainers(input: PauseInput): Promise<PauseResult> {
  return forEachSelected(
    input,
    'resume',
    { selecting: 'selecting paused ARCH containers', stepPhase: 'restore', done: 'resumed' },
    async (c, node) => {
      const ref = { namespace: c.namespace, id: c.id };
      const { spec, manager = c.manager } = await onNode(node, 'quick', input).describeContainer(ref);
      // A copy ARCH created would be one Docker or Kubernetes does not know.
      if (leavesToManager(manager)) return { outcome: 'skipped', manager, note: resumeRefusal(manager!) };
      await onNode(node, 'restore', input).restoreContainer({ spec });
      return {};
    },
  );
}
