/**
 * clusterLiveness: one long-running workflow per Temporal namespace
 * (workflow id arch-cluster), started by whichever worker reports first
 * (signalWithStart). Every worker reports its node on each beat: its ARCH
 * containers, their last checkpoints, its free memory. A node whose reports
 * stop for its ARCH_NODE_DEAD_AFTER is declared dead (on Temporal's clock,
 * the same for everyone). It continues-as-new with what it knows, so its
 * history stays small however long the cluster lives.
 */
import {
  allHandlersFinished,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  ParentClosePolicy,
  patched,
  setHandler,
  startChild,
  workflowInfo,
} from '@temporalio/workflow';
import { isValidNodeName, workflowIds } from '../contract/names.js';
import type { ClusterInput, ClusterView, NodeLiveness, NodeRecoveryInput, NodeReport } from '../contract/liveness.js';
import { rootMessage, track } from './common.js';
import { recoverNode } from './recover.js';

export const nodeSeenSignal = defineSignal<[NodeReport]>('nodeSeen');
export const clusterNodesQuery = defineQuery<ClusterView>('nodes');

const EVENTS_KEPT = 10;

/**
 * Runs recorded before recovery existed only marked a silent node dead;
 * replayed, patched() is false there and they keep that course. New runs
 * start a recoverNode workflow for every node they declare dead.
 */
export const RECOVERY_PATCH = 'arch-recovery-v1';
const DEFAULT_MAX_REPORTS = 2000;

export async function clusterLiveness(input: ClusterInput = {}): Promise<void> {
  const nodes = new Map<string, NodeLiveness>((input.nodes ?? []).map((n) => [n.node, n]));
  const maxReports = input.maxReportsPerRun ?? DEFAULT_MAX_REPORTS;
  const now = () => new Date(Date.now()).toISOString();
  const note = (n: NodeLiveness, line: string) => {
    n.events.push(`${now()} ${line}`);
    if (n.events.length > EVENTS_KEPT) n.events.splice(0, n.events.length - EVENTS_KEPT);
  };
  let reports = 0;
  let changed = false;
  setHandler(nodeSeenSignal, (r) => {
    // A report that is not one (an old or foreign sender) must not break the cluster's view.
    if (!r || typeof r !== 'object' || !isValidNodeName(r.node) || !(r.deadAfterMs > 0)) return;
    const at = now();
    let n = nodes.get(r.node);
    if (!n) {
      n = { node: r.node, firstSeen: at, lastSeen: at, status: 'alive', report: r, events: [] };
      nodes.set(r.node, n);
      note(n, 'first seen');
    }
    if (n.status === 'dead') {
      n.status = 'alive';
      n.cameBackAt = at;
      note(n, `came back after being declared dead at ${n.declaredDeadAt}; its jobs were not its own any more`);
    }
    if (r.fenced) note(n, `had fenced itself at ${r.fenced.at} (stopped ${r.fenced.stopped.join(', ') || 'nothing'})`);
    for (const s of r.staleStopped ?? [])
      note(n, `stopped stale ${s.namespace}/${s.id} (its job runs on ${s.owner}, generation ${s.generation})`);
    n.lastSeen = at;
    n.report = r;
    reports++;
    changed = true;
  });
  setHandler(clusterNodesQuery, () => ({ nodes: [...nodes.values()], at: now() }));
  track({ operation: 'cluster', phase: 'watching' }, 'watching node liveness');

  for (;;) {
    const t = Date.now();
    let next = Infinity;
    for (const n of nodes.values()) {
      if (n.status !== 'alive') continue;
      const due = Date.parse(n.lastSeen) + n.report.deadAfterMs;
      if (due <= t) {
        n.status = 'dead';
        n.declaredDeadAt = now();
        note(n, `declared dead: silent since ${n.lastSeen} (ARCH_NODE_DEAD_AFTER ${n.report.deadAfterMs} ms)`);
        if (patched(RECOVERY_PATCH))
          await startRecovery(
            n,
            [...nodes.values()].filter((m) => m.status === 'alive'),
            note,
          );
      } else next = Math.min(next, due);
    }
    if (reports >= maxReports || workflowInfo().continueAsNewSuggested) break;
    changed = false;
    const wake = () => changed || workflowInfo().continueAsNewSuggested;
    if (next === Infinity) await condition(wake);
    else await condition(wake, Math.max(1, next - Date.now()));
  }
  await condition(allHandlersFinished);
  await continueAsNew<typeof clusterLiveness>({ ...input, nodes: [...nodes.values()] });
}

/** Its jobs go to the live nodes: one recoverNode workflow, which outlives this run (ABANDON). */
async function startRecovery(
  n: NodeLiveness,
  alive: NodeLiveness[],
  note: (n: NodeLiveness, line: string) => void,
): Promise<void> {
  const at = Date.parse(n.declaredDeadAt!);
  const workflowId = workflowIds.recoverNode(n.node, at);
  const input: NodeRecoveryInput = {
    deadNode: n.node,
    declaredDeadAt: n.declaredDeadAt!,
    containers: n.report.containers,
    candidates: alive.map((m) => ({ node: m.node, freeMemBytes: m.report.freeMemBytes })),
  };
  try {
    const child = await startChild(recoverNode, {
      workflowId,
      taskQueue: workflowInfo().taskQueue,
      args: [input],
      parentClosePolicy: ParentClosePolicy.ABANDON,
    });
    n.recovery = { workflowId, startedAt: new Date(Date.now()).toISOString() };
    const rec = n.recovery;
    void child.result().then(
      (r) => {
        rec.result = r;
        for (const c of r.containers)
          note(
            n,
            `${c.namespace}/${c.id}: ${c.outcome}${c.runningOn ? ` on ${c.runningOn}` : ''}${c.reason ? ` (${c.reason})` : ''}`,
          );
      },
      (err: unknown) => note(n, `recovery ${workflowId} failed: ${rootMessage(err)}`),
    );
  } catch (err) {
    note(n, `recovery not started: ${rootMessage(err)}`);
  }
}
