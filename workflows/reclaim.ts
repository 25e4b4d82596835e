/**
 * nodeReclaimWatch(node): one long-running workflow per node (workflow id
 * arch-reclaim-watch-<node>) that waits for `reclaim` signals — from the
 * cloud notice poller on the node, from `arch-cli reclaim`, from anything
 * that can signal Temporal — and drains the node as a child workflow within
 * the notice's deadline. It continues-as-new after a few drains or when the
 * server suggests it, carrying its recent history, so its own history stays
 * small however long the node lives.
 */
import {
  allHandlersFinished,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  executeChild,
  ParentClosePolicy,
  setHandler,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import { workflowIds } from '../contract/names.js';
import { checkDeadline, checkNode, inputFailure, rootMessage, track } from './common.js';
import { drainNode } from './drain.js';
import { drainCounts } from './drain-outcomes.js';
import type { ReclaimRecord, ReclaimSignal, ReclaimWatchInput, ReclaimWatchState } from '../contract/types.js';

export const reclaimSignal = defineSignal<[ReclaimSignal]>('reclaim');
export const reclaimStateQuery = defineQuery<ReclaimWatchState>('state');

const HISTORY_KEPT = 20;

interface Pending {
  receivedAt: string;
  deadline: string;
  reason?: string;
  targets?: string[];
}

export async function nodeReclaimWatch(input: ReclaimWatchInput): Promise<void> {
  const node = checkNode(input.node, 'node');
  const targets = (input.targets ?? []).map((n, i) => checkNode(n, `targets[${i}]`));
  const leadSec = input.defaultDeadlineSec ?? 120;
  if (!(leadSec > 0))
    throw inputFailure(
      `defaultDeadlineSec: ${leadSec} is not positive. Fix: pass the notice lead time in seconds, e.g. 120`,
    );
  const maxDrains = input.maxDrainsPerRun ?? 10;
  const history: ReclaimRecord[] = [...(input.history ?? [])];
  const pending: Pending[] = [];
  const state: ReclaimWatchState = { node, targets, status: 'watching', history, pending: 0, runsSinceStart: 0 };

  const accept = (s: ReclaimSignal) => {
    const now = new Date(Date.now());
    let deadline: string;
    try {
      deadline = s.deadline ? checkDeadline(s.deadline) : new Date(now.getTime() + leadSec * 1000).toISOString();
    } catch {
      // A malformed notice must not be lost: assume the default lead time.
      deadline = new Date(now.getTime() + leadSec * 1000).toISOString();
    }
    const tgs = s.targets?.filter((n) => typeof n === 'string' && n !== node);
    pending.push({
      receivedAt: now.toISOString(),
      deadline,
      reason: s.reason,
      targets: tgs && tgs.length ? tgs : undefined,
    });
    state.pending = pending.length;
  };
  for (const s of input.pending ?? []) accept(s);
  setHandler(reclaimSignal, accept);
  setHandler(reclaimStateQuery, () => state);

  const show = (phase: string, details: string) =>
    track(
      { sourceNode: node, targetNode: targets.join(','), operation: 'reclaim-watch', phase },
      `**${phase}** — node ${node}, restore targets ${targets.join(', ') || '(none)'}\n\n${details}`,
    );
  show('watching', last(history));

  let drains = 0;
  for (;;) {
    await condition(() => pending.length > 0 || workflowInfo().continueAsNewSuggested);
    if (pending.length === 0 || drains >= maxDrains || workflowInfo().continueAsNewSuggested) break;
    // Several notices while idle: drain once, for the earliest deadline.
    pending.sort((a, b) => a.deadline.localeCompare(b.deadline));
    const p = pending.shift()!;
    state.pending = pending.length;
    const record: ReclaimRecord = {
      receivedAt: p.receivedAt,
      deadline: p.deadline,
      reason: p.reason,
      drainWorkflowId: workflowIds.drain(node, uuid4().slice(0, 8)),
      status: 'running',
    };
    state.current = record;
    state.status = 'draining';
    show(
      'draining',
      `reclaim (${p.reason ?? 'no reason given'}) received ${p.receivedAt}, deadline ${p.deadline}; drain ${record.drainWorkflowId}`,
    );
    try {
      const r = await executeChild(drainNode, {
        workflowId: record.drainWorkflowId,
        taskQueue: workflowInfo().taskQueue,
        args: [{ node, targets: p.targets ?? targets, deadline: p.deadline, reason: p.reason }],
        // The drain must finish even if this watcher is terminated or reset.
        parentClosePolicy: ParentClosePolicy.ABANDON,
      });
      record.status = 'completed';
      const counts = drainCounts(r.containers);
      record.migrated = counts.migrated;
      record.failed = counts.failed;
      record.skipped = counts.skipped;
      if (counts.leftToManager) record.leftToManager = counts.leftToManager;
      if (r.plan.notExpectedToFit.length) record.notExpectedToFit = r.plan.notExpectedToFit;
      record.withinDeadline = r.withinDeadline;
    } catch (err) {
      record.status = 'failed';
      record.error = rootMessage(err);
    }
    history.push(record);
    if (history.length > HISTORY_KEPT) history.splice(0, history.length - HISTORY_KEPT);
    state.current = undefined;
    state.status = 'watching';
    drains++;
    state.runsSinceStart = drains;
    show('watching', last(history));
    if (drains >= maxDrains) break;
  }
  // Signals accepted up to here travel in `pending`; none may be lost across the boundary.
  await condition(allHandlersFinished);
  await continueAsNew<typeof nodeReclaimWatch>({
    ...input,
    history,
    pending: pending.map((p) => ({ deadline: p.deadline, reason: p.reason, targets: p.targets })),
  });
}

function last(history: ReclaimRecord[]): string {
  const r = history[history.length - 1];
  if (!r) return 'no reclaim yet';
  return `last reclaim: ${r.receivedAt} (${r.reason ?? 'no reason'}) → ${r.status}${r.migrated !== undefined ? `, ${r.migrated} migrated, ${r.failed} failed` : ''}${r.notExpectedToFit?.length ? `; not expected to fit: ${r.notExpectedToFit.join(', ')}` : ''}${r.error ? `: ${r.error}` : ''}`;
}
