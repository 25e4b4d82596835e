/**
 * arch-cli reclaim NODE [--deadline 2m] [--reason R] [--to B,C]
 * Signals the node's reclaim watcher (starting it if needed), exactly what a
 * cloud reclaim notice does.
 */
import type { Command } from 'commander';
import { WORKFLOW_TASK_QUEUE, WORKFLOW_TYPES, workflowIds } from '../../core/temporal/names.js';
import { attributePairs } from '../../core/temporal/search-attributes.js';
import type { ReclaimSignal, ReclaimWatchInput, ReclaimWatchState } from '../../workflows/types.js';
import { requireWorkers } from '../connect.js';
import { nodeArg, nodeList, type CliContext } from '../context.js';
import { ms } from '../output.js';
import { parseDeadline } from '../time.js';

export function formatWatch(s: ReclaimWatchState): string {
  const lines = [`reclaim watcher of ${s.node}: ${s.status}; restore targets ${s.targets.join(', ') || '(none)'}; ${s.pending} pending`];
  if (s.current) lines.push(`draining now: deadline ${s.current.deadline}, drain ${s.current.drainWorkflowId}`);
  for (const r of s.history.slice(-5)) {
    lines.push(`  ${r.receivedAt} ${r.reason ?? ''} → ${r.status}${r.migrated !== undefined ? ` (${r.migrated} migrated, ${r.failed} failed, ${r.withinDeadline ? 'in time' : 'LATE'})` : ''}${r.error ? `: ${r.error}` : ''}`);
  }
  return lines.join('\n');
}

export function registerReclaim(program: Command, ctx: CliContext): void {
  program
    .command('reclaim')
    .description("tell a node's reclaim watcher the node is going away: it drains the node within the deadline")
    .argument('<node>', 'node being reclaimed', nodeArg)
    .option('--deadline <time>', 'when the node goes: duration from now (2m) or ISO time', '2m')
    .option('--reason <text>', 'why (shown in the UI)', 'arch-cli reclaim')
    .option('--to <nodes>', 'restore targets (default: the watcher\'s)', nodeList)
    .option('--status', 'only show the watcher\'s state')
    .action(async (node: string, o: { deadline: string; reason: string; to?: string[]; status?: boolean }) => {
      const out = ctx.out();
      const client = await ctx.client();
      const workflowId = workflowIds.reclaimWatch(node);
      if (o.status) {
        const s = await client.workflow.getHandle(workflowId).query<ReclaimWatchState>('state');
        out.result(s, () => formatWatch(s));
        return;
      }
      await requireWorkers(client, [node, ...(o.to ?? [])]);
      const signal: ReclaimSignal = { deadline: parseDeadline(o.deadline), reason: o.reason, targets: o.to };
      const watchInput: ReclaimWatchInput = { node, targets: o.to ?? [] };
      const t0 = Date.now();
      const handle = await client.workflow.signalWithStart(WORKFLOW_TYPES.reclaimWatch, {
        taskQueue: WORKFLOW_TASK_QUEUE,
        workflowId,
        args: [watchInput],
        signal: 'reclaim',
        signalArgs: [signal],
        typedSearchAttributes: attributePairs({ sourceNode: node, targetNode: (o.to ?? []).join(','), operation: 'reclaim-watch', phase: 'watching' }) as never,
        staticSummary: `reclaim watcher of ${node}`,
      });
      out.result({ workflowId, runId: handle.signaledRunId, signal }, () => `reclaim of ${node} signalled (deadline ${signal.deadline}, ${ms(Date.now() - t0)}); watcher ${workflowId}.\nFollow it: arch-cli reclaim ${node} --status`);
    });
}
