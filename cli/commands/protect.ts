/** arch-cli protect NS/ID --every 10m | --off | --default [--node N]: a running container's periodic checkpoints. */
import type { Client } from '@temporalio/client';
import type { Command } from 'commander';
import { ArchInputError } from '../../contract/errors.js';
import { parseContainerRef } from '../../contract/ids.js';
import { workflowIds } from '../../contract/names.js';
import type { ContainerSummary, ProtectedContainer, ProtectRequest, ProtectWatchState } from '../../contract/types.js';
import { parseCheckpointIntervalMs } from '../../core/checkpoint-interval.js';
import { formatDurationMs } from '../../core/duration.js';
import { nodeArg, type CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';

export function formatProtect(node: string, c: ProtectedContainer): string {
  const ref = `${c.namespace}/${c.id}`;
  if (!c.intervalMs)
    return `${ref} on ${node}: no periodic checkpoints${c.source === 'off' ? ' (protect --off)' : ''}; its last checkpoint stays current`;
  const from = c.source === 'protect' ? 'set by protect' : 'its own ARCH_CHECKPOINT_INTERVAL or the node default';
  return `${ref} on ${node}: checkpointed every ${formatDurationMs(c.intervalMs)} (${from}), left running${c.nextAt ? `; next at ${c.nextAt}` : ''}`;
}

/** The node's protect workflow state, or undefined when it is not running (no worker started it yet). */
export async function protectState(client: Client, node: string): Promise<ProtectWatchState | undefined> {
  try {
    return await client.workflow.getHandle(workflowIds.protect(node)).query<ProtectWatchState>('protectState');
  } catch {
    return undefined;
  }
}

/** ls: the interval in force is the protect workflow's (it knows `arch-cli protect`), where it knows the container. */
export function withProtectState(list: ContainerSummary[], s: ProtectWatchState | undefined): ContainerSummary[] {
  if (!s) return list;
  const known = new Map(s.containers.map((c) => [`${c.namespace}/${c.id}`, c]));
  return list.map((c) => {
    const p = known.get(`${c.namespace}/${c.id}`);
    if (!p) return c;
    const { checkpointIntervalMs: _own, ...rest } = c;
    return p.intervalMs ? { ...rest, checkpointIntervalMs: p.intervalMs } : rest;
  });
}

export function registerProtect(program: Command, ctx: CliContext): void {
  program
    .command('protect')
    .description('change the periodic checkpoint interval of a running container, without a restart')
    .argument('<container>', 'NAMESPACE/ID, e.g. default/job-1')
    .option('--every <duration>', 'checkpoint it (left running) this often: 30s, 10m, 1h; at least 5s')
    .option('--off', 'no periodic checkpoints (its last checkpoint stays current)')
    .option('--default', "back to the container's own ARCH_CHECKPOINT_INTERVAL (or the node's default)")
    .option('--node <node>', 'the node it runs on (default: this one)', nodeArg)
    .action(async (container: string, o: { every?: string; off?: boolean; default?: boolean; node?: string }) => {
      const ref = parseContainerRef(container);
      const chosen = [o.every !== undefined, !!o.off, !!o.default].filter(Boolean).length;
      if (chosen !== 1)
        throw new ArchInputError('--every', 'pass exactly one of --every, --off and --default', 'e.g. --every 10m');
      const intervalMs = o.off ? 0 : o.default ? null : parseCheckpointIntervalMs(o.every!, '--every');
      const node = o.node ?? ctx.settings.nodeName;
      const [{ requireWorkers }, { failureToCliError }, { WorkflowNotFoundError }] = await Promise.all([
        import('../connect.js'),
        import('../follow.js'),
        import('@temporalio/client'),
      ]);
      const client = await ctx.client();
      await requireWorkers(client, [node]);
      let r: ProtectedContainer;
      try {
        r = await client.workflow
          .getHandle(workflowIds.protect(node))
          .executeUpdate<ProtectedContainer, [ProtectRequest]>('protect', { args: [{ ...ref, intervalMs }] });
      } catch (err) {
        if (err instanceof WorkflowNotFoundError)
          throw new CliError(
            `node ${node} has no periodic-checkpoint workflow (${workflowIds.protect(node)}). Fix: restart its arch-worker, which starts it`,
            EXIT.unavailable,
          );
        throw failureToCliError(err, `protect ${container}`);
      }
      ctx.out().result({ node, ...r }, () => formatProtect(node, r));
    });
}
