/** arch-cli ls [--node N] [--namespace NS]: ARCH containers of a node and their checkpoints. */
import type { Command } from 'commander';
import { validateNamespace } from '../../core/ids.js';
import { WORKFLOW_TASK_QUEUE } from '../../core/temporal/names.js';
import type { ContainerSummary, ListNodeInput } from '../../workflows/types.js';
import { requireWorkers } from '../connect.js';
import { nodeArg, suffix, type CliContext } from '../context.js';
import { failureToCliError } from '../follow.js';
import { bytes, table } from '../output.js';

export function formatLs(node: string, list: ContainerSummary[]): string {
  if (list.length === 0) return `no ARCH containers on ${node}`;
  const rows = list.map((c) => [
    `${c.namespace}/${c.id}`, c.status, c.pid ? String(c.pid) : '-', c.mode ?? '-', String(c.priority), bytes(c.rssBytes),
    c.checkpoint ? `${c.checkpoint.createdAt} (${bytes(c.checkpoint.sizeBytes)})` : '-',
  ]);
  return table(rows, ['CONTAINER', 'STATUS', 'PID', 'MODE', 'PRIO', 'RSS', 'CHECKPOINT']);
}

export function registerLs(program: Command, ctx: CliContext): void {
  program
    .command('ls')
    .description("list a node's ARCH containers and their checkpoints (asks the node's worker)")
    .option('--node <node>', 'the node (default: this one)', nodeArg)
    .option('--namespace <ns>', 'only this containerd namespace')
    .action(async (o: { node?: string; namespace?: string }) => {
      const node = o.node ?? ctx.settings.nodeName;
      if (o.namespace) validateNamespace(o.namespace, '--namespace');
      const client = await ctx.client();
      await requireWorkers(client, [node]);
      const input: ListNodeInput = { node, namespaces: o.namespace ? [o.namespace] : undefined };
      let list: ContainerSummary[];
      try {
        list = await client.workflow.execute('listNodeContainers', {
          taskQueue: WORKFLOW_TASK_QUEUE,
          workflowId: `arch-ls-${node}-${suffix()}`,
          args: [input],
          workflowExecutionTimeout: '60s',
        });
      } catch (err) {
        throw failureToCliError(err, `ls ${node}`);
      }
      ctx.out().result({ node, containers: list }, () => formatLs(node, list));
    });
}
