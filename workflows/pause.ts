/**
 * pauseContainers / resumeContainers(node, selector): checkpoint-and-stop
 * the matching running containers of a node (their containerd records stay,
 * with a stopped task), and later create them again in place so arch-runc
 * restores them. Started by hand (`arch-cli pause|resume`) or by the
 * Temporal Schedules `arch-cli schedule create` makes.
 */
import { ApplicationFailure } from '@temporalio/workflow';
import { FailureType } from '../core/temporal/failures.js';
import { boundedAll, checkNode, failureTypeOf, nodeUnavailable, onNode, refString, rootMessage, track, DEFAULTS } from './common.js';
import { checkpointOn, Timeline } from './migrate.js';
import type { ContainerSummary, PauseInput, PauseItemResult, PauseResult } from './types.js';

async function select(input: PauseInput, node: string, action: 'pause' | 'resume'): Promise<ContainerSummary[]> {
  try {
    const a = onNode(node, 'quick', input);
    return action === 'pause'
      ? await a.selectContainers({ selector: input.selector, runningOnly: true })
      : await a.selectPaused({ selector: input.selector });
  } catch (err) {
    if (failureTypeOf(err) === FailureType.nodeUnavailable) throw nodeUnavailable(node, input.nodeStartTimeoutMs ?? DEFAULTS.nodeStartTimeoutMs, err);
    throw ApplicationFailure.create({ type: failureTypeOf(err) ?? 'ActivityFailed', message: `selecting containers on ${node} failed: ${rootMessage(err)}`, nonRetryable: true });
  }
}

function show(node: string, action: 'pause' | 'resume', phase: string, details: string, schedule?: string): void {
  track({ sourceNode: node, targetNode: node, operation: action, phase }, `**${phase}** — ${action} on ${node}${schedule ? ` (schedule ${schedule})` : ''}\n\n${details}`);
}

export async function pauseContainers(input: PauseInput): Promise<PauseResult> {
  const node = checkNode(input.node, 'node');
  const t0 = Date.now();
  show(node, 'pause', 'select', 'selecting running ARCH containers', input.schedule);
  const list = await select(input, node, 'pause');
  show(node, 'pause', 'checkpoint', `${list.length} containers: ${list.map(refString).join(', ') || 'none'}`, input.schedule);
  const containers = await boundedAll(list, input.parallelism ?? 2, async (c): Promise<PauseItemResult> => {
    const ref = { namespace: c.namespace, id: c.id };
    const s = Date.now();
    try {
      const { spec } = await onNode(node, 'quick', input).describeContainer(ref);
      const ck = await checkpointOn(ref, node, spec, input, new Timeline());
      return { ...ref, outcome: 'paused', ms: Date.now() - s, sizeBytes: ck.sizeBytes };
    } catch (err) {
      return { ...ref, outcome: 'failed', ms: Date.now() - s, error: rootMessage(err) };
    }
  });
  const failed = containers.filter((c) => c.outcome === 'failed').length;
  show(node, 'pause', 'done', `${containers.length - failed} paused, ${failed} failed`, input.schedule);
  return { node, action: 'pause', containers, totalMs: Date.now() - t0 };
}

export async function resumeContainers(input: PauseInput): Promise<PauseResult> {
  const node = checkNode(input.node, 'node');
  const t0 = Date.now();
  show(node, 'resume', 'select', 'selecting paused ARCH containers', input.schedule);
  const list = await select(input, node, 'resume');
  show(node, 'resume', 'restore', `${list.length} containers: ${list.map(refString).join(', ') || 'none'}`, input.schedule);
  const containers = await boundedAll(list, input.parallelism ?? 2, async (c): Promise<PauseItemResult> => {
    const ref = { namespace: c.namespace, id: c.id };
    const s = Date.now();
    try {
      const { spec } = await onNode(node, 'quick', input).describeContainer(ref);
      await onNode(node, 'restore', input).restoreContainer({ spec });
      return { ...ref, outcome: 'resumed', ms: Date.now() - s };
    } catch (err) {
      return { ...ref, outcome: 'failed', ms: Date.now() - s, error: rootMessage(err) };
    }
  });
  const failed = containers.filter((c) => c.outcome === 'failed').length;
  show(node, 'resume', 'done', `${containers.length - failed} resumed, ${failed} failed`, input.schedule);
  return { node, action: 'resume', containers, totalMs: Date.now() - t0 };
}
