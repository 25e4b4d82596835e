/** arch-cli drain NODE --to B[,C] [--deadline 2m] [--wait] */
import type { Command } from 'commander';
import { ArchInputError } from '../../contract/errors.js';
import { validateNamespace } from '../../contract/ids.js';
import { leftToManager } from '../../contract/managers.js';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import { drainCounts } from '../../workflows/drain-outcomes.js';
import type { DrainInput, DrainResult } from '../../contract/types.js';
import { nodeArg, nodeList, suffix, type CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';
import { bytes, ms, table } from '../output.js';
import { parseDeadline } from '../time.js';

export function formatDrain(r: DrainResult): string {
  const rows = r.containers.map((c) => [
    `${c.namespace}/${c.id}`,
    c.outcome,
    c.runningOn ?? '-',
    ms(c.checkpointMs),
    c.checkpointedInTime === undefined ? '-' : c.checkpointedInTime ? 'yes' : 'NO',
    c.expectedToFit === undefined ? '-' : c.expectedToFit ? 'yes' : 'NO',
    ms(c.transferMs),
    ms(c.restoreMs),
    bytes(c.sizeBytes),
    c.error ?? (c.outcome === 'left-to-manager' && c.manager ? leftToManager(c.manager) : ''),
  ]);
  const late =
    r.plan?.notExpectedToFit ??
    r.containers.filter((c) => c.expectedToFit === false).map((c) => `${c.namespace}/${c.id}`);
  return [
    `drain of ${r.node} → ${r.targets.join(', ') || '(checkpoint only)'}: ${r.containers.length} containers, checkpoints ${r.withinDeadline ? 'within' : 'NOT within'} the deadline ${r.deadline} (${ms(r.checkpointPhaseMs)}), total ${ms(r.totalMs)}`,
    ...(late.length ? [`not expected to fit: ${late.join(', ')}`] : []),
    table(rows, [
      'CONTAINER',
      'OUTCOME',
      'RUNS ON',
      'CHECKPOINT',
      'IN TIME',
      'FIT',
      'TRANSFER',
      'RESTORE',
      'SIZE',
      'NOTE',
    ]),
  ].join('\n');
}

export function drainExitCode(r: DrainResult): number {
  return drainCounts(r.containers).failed > 0 || !r.withinDeadline ? EXIT.failed : EXIT.ok;
}

export function registerDrain(program: Command, ctx: CliContext): void {
  program
    .command('drain')
    .description('checkpoint every ARCH container of a node before a deadline, then restore each on the target nodes')
    .argument('<node>', 'node to drain', nodeArg)
    .option('--to <nodes>', 'comma-separated target nodes (none: checkpoint only)', nodeList)
    .option('--deadline <time>', 'checkpoints must be done by then: a duration from now (2m) or an ISO time', '2m')
    .option('--parallelism <n>', 'checkpoints at once, at most', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1)
        throw new ArchInputError('--parallelism', `"${v}" is not a whole number >= 1`, 'pass e.g. 2');
      return n;
    })
    .option('-n, --namespace <ns>', 'only this containerd namespace')
    .option('--wait', 'wait and show per-container results')
    .action(
      async (
        node: string,
        o: { to?: string[]; deadline: string; parallelism?: number; namespace?: string; wait?: boolean },
      ) => {
        const out = ctx.out();
        if (o.namespace) validateNamespace(o.namespace, '--namespace');
        const targets = o.to ?? [];
        if (targets.includes(node))
          throw new ArchInputError('--to', `includes the drained node ${node}`, 'restore on other nodes');
        const input: DrainInput = {
          node,
          targets,
          deadline: parseDeadline(o.deadline),
          parallelism: o.parallelism,
          selector: o.namespace ? { namespace: o.namespace } : undefined,
          reason: 'arch-cli drain',
        };
        const [{ attributePairs }, { requireWorkers }, { follow }] = await Promise.all([
          import('../../contract/search-attributes.js'),
          import('../connect.js'),
          import('../follow.js'),
        ]);
        const client = await ctx.client();
        await requireWorkers(client, [node, ...targets]);
        const workflowId = workflowIds.drain(node, suffix());
        // The workflow module (and @temporalio/workflow) only when a workflow starts: the CLI's other commands do not load it.
        const { drainNode } = await import('../../workflows/drain.js');
        const handle = await client.workflow.start(drainNode, {
          taskQueue: WORKFLOW_TASK_QUEUE,
          workflowId,
          args: [input],
          typedSearchAttributes: attributePairs({
            sourceNode: node,
            targetNode: targets.join(','),
            operation: 'drain',
            phase: 'queued',
          }),
          staticSummary: `drain ${node} → ${targets.join(', ') || '(checkpoint only)'} by ${input.deadline}`,
        });
        out.info(`drain ${workflowId} started (deadline ${input.deadline})`);
        if (!o.wait) {
          out.result({ workflowId, deadline: input.deadline }, () => `Follow it: arch-cli status ${workflowId}`);
          return;
        }
        const r = await follow<DrainResult>(handle, { out, label: `drain ${node}` });
        out.result({ workflowId, ...r }, () => formatDrain(r));
        const code = drainExitCode(r);
        if (code !== EXIT.ok)
          throw new CliError(`drain of ${node}: not every container was moved in time`, code, undefined, true);
      },
    );
}
