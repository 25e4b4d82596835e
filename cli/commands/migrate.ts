/** arch-cli migrate NS/ID --from A --to B [--wait] */
import type { Client, WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { Option, type Command } from 'commander';
import { ArchInputError } from '../../contract/errors.js';
import { parseContainerRef } from '../../contract/ids.js';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import type { MigrateInput, MigrateResult } from '../../contract/types.js';
import { parseDurationMs } from '../../core/option-parsers.js';
import { nodeArg, suffix, type CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';
import { bytes, ms, table } from '../output.js';

export function formatMigrate(r: MigrateResult): string {
  const head = `${r.namespace}/${r.id} ${r.outcome === 'migrated' ? 'migrated' : 'NOT migrated'} ${r.from} → ${r.to} in ${ms(r.totalMs)}; runs on ${r.runningOn}`;
  const ck = `checkpoint ${bytes(r.checkpoint.sizeBytes)}, ${r.checkpoint.mode} storage, ${r.checkpoint.transferred === 'copied' ? 'copied to the target' : 'already visible to the target'}`;
  const rows = r.phases.map((p) => [p.phase, p.node, ms(p.ms), ms(p.activityMs)]);
  const overhead = `orchestration overhead ${ms(r.totalMs - r.activityMs)} (wall time minus time inside activities)`;
  return [
    head,
    ck,
    table(rows, ['PHASE', 'NODE', 'WALL', 'IN ACTIVITY']),
    overhead,
    r.cleanupError ? `warning: cleanup on ${r.from} failed: ${r.cleanupError}` : '',
  ]
    .filter(Boolean)
    .join('\n');
}

/** Start the migrate workflow (with its search attributes and summary); `arch-cli demo` starts its migrations here too. */
export async function startMigration(
  client: Client,
  input: MigrateInput,
): Promise<WorkflowHandleWithFirstExecutionRunId> {
  // The workflow module (and @temporalio/workflow) only when a workflow starts: the CLI's other commands do not load it.
  const [{ migrateContainer }, { attributePairs }] = await Promise.all([
    import('../../workflows/migrate.js'),
    import('../../contract/search-attributes.js'),
  ]);
  return client.workflow.start(migrateContainer, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: workflowIds.migrate(input.namespace, input.id, suffix()),
    args: [input],
    typedSearchAttributes: attributePairs({
      container: `${input.namespace}/${input.id}`,
      namespace: input.namespace,
      sourceNode: input.from,
      targetNode: input.to,
      operation: 'migrate',
      phase: 'queued',
    }),
    staticSummary: `migrate ${input.namespace}/${input.id}: ${input.from} → ${input.to}`,
  });
}

export function registerMigrate(program: Command, ctx: CliContext): void {
  program
    .command('migrate')
    .description('move a running container to another node: checkpoint, transfer, restore, verify, clean up')
    .argument('<container>', 'NAMESPACE/ID, e.g. default/job-1')
    .requiredOption('--from <node>', 'node it runs on now', nodeArg)
    .requiredOption('--to <node>', 'node to move it to', nodeArg)
    .option('--wait', 'wait for the migration and show its progress and phase timings')
    .addOption(new Option('--timeout <duration>', 'with --wait: give up waiting after this long (exit 5)'))
    .option('--node-timeout <duration>', 'how long a node may take to pick up work before it counts as down', '30s')
    .action(
      async (
        container: string,
        o: { from: string; to: string; wait?: boolean; timeout?: string; nodeTimeout: string },
      ) => {
        const out = ctx.out();
        const ref = parseContainerRef(container);
        if (o.from === o.to)
          throw new ArchInputError('--to', `is the same node as --from (${o.from})`, 'pass two different nodes');
        const input: MigrateInput = {
          ...ref,
          from: o.from,
          to: o.to,
          nodeStartTimeoutMs: parseDurationMs(o.nodeTimeout, '--node-timeout'),
        };
        const [{ requireWorkers }, { failureToCliError, follow, waitPastPreflight }] = await Promise.all([
          import('../connect.js'),
          import('../follow.js'),
        ]);
        const client = await ctx.client();
        await requireWorkers(client, [o.from, o.to]);
        const handle = await startMigration(client, input);
        const workflowId = handle.workflowId;
        out.info(`migration ${workflowId} started`);
        if (!o.wait) {
          let phase: string | undefined;
          try {
            phase = await waitPastPreflight(handle, ['queued', 'preflight']);
          } catch (err) {
            throw failureToCliError(err, `migrate ${container}`);
          }
          out.result(
            { workflowId, runId: handle.firstExecutionRunId, phase },
            () =>
              `${container}: ${o.from} → ${o.to} is under way (phase ${phase ?? 'starting'}).\nFollow it: arch-cli status ${workflowId}  (or the Temporal UI, search ArchContainer="${container}")`,
          );
          return;
        }
        const r = await follow<MigrateResult>(handle, {
          out,
          label: `migrate ${container}`,
          timeoutMs: o.timeout ? parseDurationMs(o.timeout, '--timeout') : undefined,
        });
        out.result({ workflowId, ...r }, () => formatMigrate(r));
        if (r.outcome !== 'migrated')
          throw new CliError(`${container} was not migrated`, EXIT.compensated, undefined, true);
      },
    );
}
