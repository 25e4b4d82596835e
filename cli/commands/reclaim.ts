/**
 * arch-cli reclaim NODE [--deadline 2m] [--reason R] [--to B,C] [--wait]
 * Signals the node's reclaim watcher (starting it if needed), exactly what a
 * cloud reclaim notice does. With --wait, follows the drain that signal
 * starts and shows its results (what was not expected to fit, too).
 */
import type { Command } from 'commander';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import type { ReclaimSignal, ReclaimWatchInput, ReclaimWatchState } from '../../contract/types.js';
import type { DrainResult } from '../../contract/types.js';
import { nodeArg, nodeList, type CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';
import { ms } from '../output.js';
import { parseDeadline } from '../time.js';
import { drainExitCode, formatDrain } from './drain.js';

export function formatWatch(s: ReclaimWatchState): string {
  const lines = [
    `reclaim watcher of ${s.node}: ${s.status}; restore targets ${s.targets.join(', ') || '(none)'}; ${s.pending} pending`,
  ];
  if (s.current) lines.push(`draining now: deadline ${s.current.deadline}, drain ${s.current.drainWorkflowId}`);
  for (const r of s.history.slice(-5)) {
    lines.push(
      `  ${r.receivedAt} ${r.reason ?? ''} → ${r.status}${r.migrated !== undefined ? ` (${r.migrated} migrated, ${r.leftToManager ? `${r.leftToManager} left to their manager, ` : ''}${r.failed} failed${r.skipped ? ` of which ${r.skipped} not started` : ''}, ${r.withinDeadline ? 'in time' : 'LATE'})` : ''}${r.error ? `: ${r.error}` : ''}`,
    );
    if (r.notExpectedToFit?.length) lines.push(`    not expected to fit: ${r.notExpectedToFit.join(', ')}`);
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
    .option('--to <nodes>', "restore targets (default: the watcher's)", nodeList)
    .option('--status', "only show the watcher's state")
    .option('--wait', 'follow the drain this reclaim starts and show its per-container results')
    .action(
      async (
        node: string,
        o: { deadline: string; reason: string; to?: string[]; status?: boolean; wait?: boolean },
      ) => {
        const out = ctx.out();
        const [{ attributePairs }, { waitForReclaimDrain }, { requireWorkers }, { follow }] = await Promise.all([
          import('../../contract/search-attributes.js'),
          import('../../temporal/reclaim-drain.js'),
          import('../connect.js'),
          import('../follow.js'),
        ]);
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
        // The workflow module (and @temporalio/workflow) only when a workflow starts: the CLI's other commands do not load it.
        const { nodeReclaimWatch, reclaimSignal } = await import('../../workflows/reclaim.js');
        const handle = await client.workflow.signalWithStart(nodeReclaimWatch, {
          taskQueue: WORKFLOW_TASK_QUEUE,
          workflowId,
          args: [watchInput],
          signal: reclaimSignal,
          signalArgs: [signal],
          typedSearchAttributes: attributePairs({
            sourceNode: node,
            targetNode: (o.to ?? []).join(','),
            operation: 'reclaim-watch',
            phase: 'watching',
          }),
          staticSummary: `reclaim watcher of ${node}`,
        });
        if (!o.wait) {
          out.result(
            { workflowId, runId: handle.signaledRunId, signal },
            () =>
              `reclaim of ${node} signalled (deadline ${signal.deadline}, ${ms(Date.now() - t0)}); watcher ${workflowId}.\nFollow it: arch-cli reclaim ${node} --status`,
          );
          return;
        }
        out.info(`reclaim of ${node} signalled (deadline ${signal.deadline}); waiting for its drain`);
        // A watcher busy with an earlier drain starts ours after it: wait up to the deadline (and a bit).
        const waitMs = Math.max(30_000, Date.parse(signal.deadline!) - Date.now() + 30_000);
        const drainWorkflowId = await waitForReclaimDrain(client, node, signal, { timeoutMs: waitMs, everyMs: 250 });
        if (!drainWorkflowId) {
          throw new CliError(
            `reclaim of ${node}: the watcher ${workflowId} did not start a drain within ${Math.round(waitMs / 1000)} s. See: arch-cli reclaim ${node} --status`,
            EXIT.waitTimeout,
          );
        }
        out.info(`drain ${drainWorkflowId} started`);
        const r = await follow<DrainResult>(client.workflow.getHandle(drainWorkflowId), {
          out,
          label: `drain ${node}`,
        });
        out.result({ workflowId, runId: handle.signaledRunId, signal, drainWorkflowId, drain: r }, () =>
          formatDrain(r),
        );
        const code = drainExitCode(r);
        if (code !== EXIT.ok)
          throw new CliError(`reclaim of ${node}: not every container was moved in time`, code, undefined, true);
      },
    );
}
