/**
 * arch-cli nodes: every node the cluster workflow knows (workflows/cluster.ts),
 * whether it is alive (last seen), its ARCH containers with the age of each
 * one's last checkpoint, and what happened when a node was declared dead.
 */
import type { Command } from 'commander';
import type { ClusterView, NodeLiveness } from '../../contract/liveness.js';
import { workflowIds } from '../../contract/names.js';
import type { CliContext } from '../context.js';
import { table } from '../output.js';

/** "12 s", "3 min", "2 h": an age a person reads at a glance. */
export function age(fromIso: string | undefined, nowMs: number): string {
  if (!fromIso) return '-';
  const s = Math.max(0, Math.round((nowMs - Date.parse(fromIso)) / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

export function nodesText(v: ClusterView, nowMs: number): string {
  if (v.nodes.length === 0) return 'no node has reported yet';
  const rows: string[][] = [];
  const details: string[] = [];
  for (const n of [...v.nodes].sort((a, b) => a.node.localeCompare(b.node))) {
    rows.push([
      n.node,
      n.status === 'dead' ? `DEAD since ${n.declaredDeadAt}` : 'alive',
      `${age(n.lastSeen, nowMs)} ago`,
      String(n.report.containers.length),
    ]);
    details.push(...nodeDetails(n, nowMs));
  }
  return [table(rows, ['NODE', 'STATUS', 'LAST SEEN', 'CONTAINERS']), ...details].join('\n');
}

function nodeDetails(n: NodeLiveness, nowMs: number): string[] {
  const out: string[] = [];
  if (n.report.containers.length || n.recovery || n.cameBackAt) out.push('', `${n.node}:`);
  for (const c of n.report.containers)
    out.push(
      `  ${c.namespace}/${c.id}  ${c.status}  ${c.mode}${c.manager !== 'containerd' ? ` (${c.manager})` : ''}  last checkpoint ${c.lastCheckpointAt ? `${age(c.lastCheckpointAt, nowMs)} ago` : 'none'}${
        c.lastCheckpointFailedAt
          ? `, the last attempt FAILED ${age(c.lastCheckpointFailedAt, nowMs)} ago (arch-cli ls --node ${n.node} says why)`
          : ''
      }`,
    );
  if (n.recovery) {
    out.push(`  recovery ${n.recovery.workflowId}${n.recovery.result ? '' : ' (running)'}`);
    for (const c of n.recovery.result?.containers ?? [])
      out.push(
        `    ${c.namespace}/${c.id}: ${c.outcome}${c.runningOn ? ` on ${c.runningOn}` : ''}${c.reason ? ` (${c.reason})` : ''}`,
      );
  }
  if (n.cameBackAt) for (const e of n.events.slice(-4)) out.push(`  ${e}`);
  return out;
}

export function registerNodes(program: Command, ctx: CliContext): void {
  program
    .command('nodes')
    .description('nodes, their liveness (last seen), their ARCH containers and the age of each last checkpoint')
    .action(async () => {
      const out = ctx.out();
      const client = await ctx.client();
      const { WorkflowNotFoundError } = await import('@temporalio/client');
      let view: ClusterView;
      try {
        view = await client.workflow.getHandle(workflowIds.cluster()).query<ClusterView>('nodes');
      } catch (err) {
        if (!(err instanceof WorkflowNotFoundError)) throw err;
        view = { nodes: [], at: new Date().toISOString() };
      }
      out.result(view, () => nodesText(view, Date.now()));
    });
}
