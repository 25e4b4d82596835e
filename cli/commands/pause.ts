/** arch-cli pause|resume --node N [-n|--namespace NS] [IDS...] [--wait] */
import type { Command } from 'commander';
import { validateContainerId, validateNamespace } from '../../contract/ids.js';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import type { PauseInput, PauseResult } from '../../contract/types.js';
import { nodeArg, suffix, type CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';
import { bytes, ms, table } from '../output.js';

export function formatPause(r: PauseResult): string {
  const rows = r.containers.map((c) => [
    `${c.namespace}/${c.id}`,
    c.outcome,
    ms(c.ms),
    bytes(c.sizeBytes),
    c.error ?? c.note ?? '',
  ]);
  return [
    `${r.action} on ${r.node}: ${r.containers.length} containers in ${ms(r.totalMs)}`,
    rows.length ? table(rows, ['CONTAINER', 'OUTCOME', 'TIME', 'SIZE', 'NOTE']) : '(nothing matched)',
  ].join('\n');
}

export function registerPauseResume(program: Command, ctx: CliContext): void {
  for (const action of ['pause', 'resume'] as const) {
    program
      .command(action)
      .description(
        action === 'pause'
          ? 'checkpoint and stop the matching ARCH containers of a node'
          : 'restore the paused ARCH containers of a node',
      )
      .argument('[ids...]', 'only these container ids (default: all)')
      .requiredOption('--node <node>', 'the node', nodeArg)
      .option('-n, --namespace <ns>', 'only this containerd namespace')
      .option('--wait', 'wait and show per-container results')
      .action(async (ids: string[], o: { node: string; namespace?: string; wait?: boolean }) => {
        const out = ctx.out();
        if (o.namespace) validateNamespace(o.namespace, '--namespace');
        ids.forEach((id) => validateContainerId(id));
        const input: PauseInput = {
          node: o.node,
          selector: { namespace: o.namespace, ids: ids.length ? ids : undefined },
        };
        const [{ attributePairs }, { requireWorkers }, { follow }] = await Promise.all([
          import('../../contract/search-attributes.js'),
          import('../connect.js'),
          import('../follow.js'),
        ]);
        const client = await ctx.client();
        await requireWorkers(client, [o.node]);
        const workflowId = (action === 'pause' ? workflowIds.pause : workflowIds.resume)(o.node, suffix());
        // The workflow module (and @temporalio/workflow) only when a workflow starts: the CLI's other commands do not load it.
        const { pauseContainers, resumeContainers } = await import('../../workflows/pause.js');
        const handle = await client.workflow.start(action === 'pause' ? pauseContainers : resumeContainers, {
          taskQueue: WORKFLOW_TASK_QUEUE,
          workflowId,
          args: [input],
          typedSearchAttributes: attributePairs({
            sourceNode: o.node,
            targetNode: o.node,
            operation: action,
            phase: 'queued',
          }),
          staticSummary: `${action} on ${o.node}`,
        });
        out.info(`${action} ${workflowId} started`);
        if (!o.wait) {
          out.result({ workflowId }, () => `Follow it: arch-cli status ${workflowId}`);
          return;
        }
        const r = await follow<PauseResult>(handle, { out, label: `${action} ${o.node}` });
        out.result({ workflowId, ...r }, () => formatPause(r));
        if (r.containers.some((c) => c.outcome === 'failed'))
          throw new CliError(`${action}: some containers failed`, EXIT.failed, undefined, true);
      });
  }
}
