/** arch-cli ls [--node N] [-n|--namespace NS]: ARCH containers of a node and their checkpoints. */
import type { Command } from 'commander';
import { validateNamespace } from '../../contract/ids.js';
import { WORKFLOW_TASK_QUEUE } from '../../contract/names.js';
import type { ContainerSummary, ListNodeInput } from '../../contract/types.js';
import { nodeArg, suffix, type CliContext } from '../context.js';
import { bytes, ms, printable, table } from '../output.js';
import { formatDurationMs } from '../../core/duration.js';

export function formatLs(node: string, list: ContainerSummary[], now = Date.now()): string {
  if (list.length === 0) return `no ARCH containers on ${node}`;
  const rows = list.map((c) => [
    `${c.namespace}/${c.id}`,
    c.status,
    c.pid ? String(c.pid) : '-',
    c.mode ?? '-',
    c.manager ?? '-',
    String(c.priority),
    bytes(c.rssBytes),
    checkpointCell(c, now),
    c.checkpoint ? bytes(c.checkpoint.sizeBytes) : '-',
    ms(c.checkpoint?.freezeMs),
    c.checkpointIntervalMs ? formatDurationMs(c.checkpointIntervalMs) : '-',
    c.lastRestoreFailure ? `FAILED (${c.lastRestoreFailure.reason})` : '-',
  ]);
  const out = table(rows, [
    'CONTAINER',
    'STATUS',
    'PID',
    'MODE',
    'MANAGER',
    'PRIO',
    'RSS',
    'CHECKPOINT',
    'SIZE',
    'FROZEN',
    'EVERY',
    'RESTORE',
  ]);
  // A failed restore means lost progress, a failed checkpoint an unprotected job: their causes in full, below the table.
  const failures = list.flatMap((c) => {
    const lines: string[] = [];
    const f = c.lastRestoreFailure;
    if (f)
      lines.push(
        printable(
          `${c.namespace}/${c.id}: restore failed at ${f.at} (${f.reason}), started fresh: ${f.message} [checkpoint ${f.checkpointDir}]`,
        ),
      );
    const k = c.lastCheckpointFailure;
    if (k)
      lines.push(
        printable(
          `${c.namespace}/${c.id}: checkpoint failed at ${k.at}${
            c.checkpoint ? `, the one of ${c.checkpoint.createdAt} stays current` : ', it has no checkpoint'
          }: ${k.message}`,
        ),
      );
    return lines;
  });
  return failures.length ? `${out}\n\n${failures.join('\n')}` : out;
}

/** How old its last checkpoint is; FAILED (with how long ago) while its last attempt failed. */
function checkpointCell(c: ContainerSummary, now: number): string {
  const ago = (at: string) => `${formatDurationMs(Math.max(0, now - Date.parse(at)))} ago`;
  if (c.lastCheckpointFailure) return `FAILED ${ago(c.lastCheckpointFailure.at)}`;
  return c.checkpoint ? ago(c.checkpoint.createdAt) : '-';
}

export function registerLs(program: Command, ctx: CliContext): void {
  program
    .command('ls')
    .description("list a node's ARCH containers and their checkpoints (asks the node's worker)")
    .option('--node <node>', 'the node (default: this one)', nodeArg)
    .option('-n, --namespace <ns>', 'only this containerd namespace')
    .option('--local', 'this node only, read directly (no Temporal or worker needed)')
    .action(async (o: { node?: string; namespace?: string; local?: boolean }) => {
      const node = o.node ?? ctx.settings.nodeName;
      if (o.namespace) validateNamespace(o.namespace, '--namespace');
      if (o.local) {
        // `runc list` first (a small module): the rest loads while runc runs.
        const listing = import('../../core/runc-listing.js').then((m) =>
          m.startRuncListing(ctx.settings, { namespaces: o.namespace ? [o.namespace] : undefined }),
        );
        // Loading blocks this thread: only once every runc runs (a few file-system replies away).
        await listing.catch(() => undefined); // findArchContainers reports a failure
        const [{ createLazyLogger }, { containerSummary, findArchContainers }, { describeSearched }] =
          await Promise.all([
            import('../../core/log.js'),
            import('../../core/node-containers.js'),
            import('../../core/runc-roots.js'),
          ]);
        const found = await findArchContainers(
          { settings: ctx.settings, log: createLazyLogger(ctx.settings, 'arch-cli') },
          { listing },
        );
        const list: ContainerSummary[] = found.containers.map(containerSummary);
        const { searched, warnings } = found.roots;
        ctx
          .out()
          .result({ node: ctx.settings.nodeName, containers: list, runcRoots: searched, warnings }, () =>
            [
              ...warnings.map((w) => `warning: ${w.field}: ${w.message}`),
              formatLs(ctx.settings.nodeName, list),
              ...(list.length ? [] : [`searched the runc roots: ${describeSearched(found.roots)}`]),
            ].join('\n'),
          );
        return;
      }
      const [{ requireWorkers }, { failureToCliError }] = await Promise.all([
        import('../connect.js'),
        import('../follow.js'),
      ]);
      const client = await ctx.client();
      await requireWorkers(client, [node]);
      const input: ListNodeInput = { node, namespaces: o.namespace ? [o.namespace] : undefined };
      let list: ContainerSummary[];
      try {
        // The workflow module (and @temporalio/workflow) only when a workflow starts: the CLI's other commands do not load it.
        const { listNodeContainers } = await import('../../workflows/list.js');
        list = await client.workflow.execute(listNodeContainers, {
          taskQueue: WORKFLOW_TASK_QUEUE,
          workflowId: `arch-ls-${node}-${suffix()}`,
          args: [input],
          workflowExecutionTimeout: '60s',
        });
      } catch (err) {
        throw failureToCliError(err, `ls ${node}`);
      }
      const { protectState, withProtectState } = await import('./protect.js');
      list = withProtectState(list, await protectState(client, node));
      ctx.out().result({ node, containers: list }, () => formatLs(node, list));
    });
}
