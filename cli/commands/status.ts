/**
 * arch-cli status [WORKFLOW_ID]: recent and running ARCH workflows from
 * Temporal visibility (the same search attributes the UI filters on), or one
 * workflow in detail.
 */
import type { Client, WorkflowExecutionInfo } from '@temporalio/client';
import type { Command } from 'commander';
import { ArchInputError } from '../../contract/errors.js';
import { parseContainerRef } from '../../contract/ids.js';
import { ARCH_VISIBILITY_QUERY } from '../../contract/names.js';
import { nodeArg, type CliContext } from '../context.js';
import { ms, table } from '../output.js';

type SearchAttributeKeys = (typeof import('../../contract/search-attributes.js'))['SA'];

export interface StatusRow {
  workflowId: string;
  type: string;
  status: string;
  operation?: string;
  container?: string;
  sourceNode?: string;
  targetNode?: string;
  phase?: string;
  startTime: string;
  closeTime?: string;
  durationMs?: number;
}

function row(w: WorkflowExecutionInfo, SA: SearchAttributeKeys): StatusRow {
  const sa = w.typedSearchAttributes;
  return {
    workflowId: w.workflowId,
    type: w.type,
    status: w.status.name,
    operation: sa.get(SA.operation),
    container: sa.get(SA.container),
    sourceNode: sa.get(SA.sourceNode),
    targetNode: sa.get(SA.targetNode),
    phase: sa.get(SA.phase),
    startTime: w.startTime.toISOString(),
    closeTime: w.closeTime?.toISOString(),
    durationMs: w.closeTime ? w.closeTime.getTime() - w.startTime.getTime() : undefined,
  };
}

const quote = (v: string) => `"${v.replace(/["\\]/g, '')}"`;

export async function listArchWorkflows(
  client: Client,
  o: { running?: boolean; node?: string; container?: string; operation?: string; limit: number },
): Promise<StatusRow[]> {
  const q = [ARCH_VISIBILITY_QUERY];
  if (o.running) q.push(`ExecutionStatus = "Running"`);
  if (o.node) q.push(`(ArchSourceNode = ${quote(o.node)} OR ArchTargetNode = ${quote(o.node)})`);
  if (o.container) q.push(`ArchContainer = ${quote(o.container)}`);
  if (o.operation) q.push(`ArchOperation = ${quote(o.operation)}`);
  const { SA } = await import('../../contract/search-attributes.js');
  const out: StatusRow[] = [];
  for await (const w of client.workflow.list({ query: q.join(' AND '), pageSize: Math.min(o.limit, 100) })) {
    out.push(row(w, SA));
    if (out.length >= o.limit) break;
  }
  return out;
}

export function registerStatus(program: Command, ctx: CliContext): void {
  program
    .command('status')
    .description('recent and running ARCH workflows (migrations, drains, reclaims, pauses), or one in detail')
    .argument('[workflowId]', 'show this workflow in detail')
    .option('--running', 'only running ones')
    .option('--node <node>', 'only those involving this node', nodeArg)
    .option('--container <ref>', 'only those of this container (NAMESPACE/ID)')
    .option('--operation <op>', 'migrate, drain, reclaim-watch, pause, resume, cluster, recover-node or recover')
    .option('--limit <n>', 'at most this many', '20')
    .action(
      async (
        workflowId: string | undefined,
        o: { running?: boolean; node?: string; container?: string; operation?: string; limit: string },
      ) => {
        const out = ctx.out();
        const client = await ctx.client();
        if (workflowId) {
          const [{ SA }, { rootFailure }] = await Promise.all([
            import('../../contract/search-attributes.js'),
            import('../follow.js'),
          ]);
          const h = client.workflow.getHandle(workflowId);
          const d = await h.describe();
          const info: Record<string, unknown> = {
            ...row(d as unknown as WorkflowExecutionInfo, SA),
            runId: d.runId,
            historyLength: d.historyLength,
          };
          if (d.status.name === 'COMPLETED') info.result = await h.result();
          else if (d.status.name !== 'RUNNING')
            info.failure = await h.result().then(
              () => undefined,
              (err: unknown) => rootFailure(err),
            );
          else if (d.type === 'migrateContainer') info.progress = await h.query('progress').catch(() => undefined);
          else if (d.type === 'nodeReclaimWatch') info.state = await h.query('state').catch(() => undefined);
          out.result(info, () => {
            const r = info as unknown as StatusRow & { failure?: { message: string } };
            return [
              `${r.workflowId} (${r.type}): ${r.status}${r.phase ? `, phase ${r.phase}` : ''}`,
              `  ${r.container ?? ''} ${r.sourceNode ?? ''}${r.targetNode ? ` → ${r.targetNode}` : ''}`.trimEnd(),
              `  started ${r.startTime}${r.closeTime ? `, closed ${r.closeTime} (${ms(r.durationMs)})` : ''}`,
              r.failure ? `  failure: ${r.failure.message}` : '',
              info.result !== undefined ? `  result: ${JSON.stringify(info.result)}` : '',
            ]
              .filter(Boolean)
              .join('\n');
          });
          return;
        }
        const limit = Number(o.limit);
        if (!Number.isInteger(limit) || limit < 1)
          throw new ArchInputError('--limit', `"${o.limit}" is not a whole number >= 1`, 'pass e.g. 20');
        if (o.container) parseContainerRef(o.container, '--container');
        const rows = await listArchWorkflows(client, { ...o, limit });
        out.result(rows, () =>
          rows.length
            ? table(
                rows.map((r) => [
                  r.workflowId,
                  r.operation ?? r.type,
                  r.container ?? '-',
                  `${r.sourceNode ?? '-'}${r.targetNode && r.targetNode !== r.sourceNode ? ` → ${r.targetNode}` : ''}`,
                  r.phase ?? '-',
                  r.status,
                  r.startTime.replace(/\.\d+Z$/, 'Z'),
                  ms(r.durationMs),
                ]),
                ['WORKFLOW', 'OPERATION', 'CONTAINER', 'NODES', 'PHASE', 'STATUS', 'STARTED', 'TOOK'],
              )
            : 'no ARCH workflows',
        );
      },
    );
}
