/**
 * The node's periodic-checkpoint workflow (workflows/protect.ts), started
 * by its worker: signal-with-start on the node's fixed workflow id, so a
 * worker that starts again finds the running one (its schedule intact) and
 * only hands it the node's current settings. Temporal may not be reachable
 * yet when the worker starts: it tries again in the background.
 */
import { Client, Connection } from '@temporalio/client';
import type { NodeContext } from '../core/context.js';
import { errorMessage } from '../contract/errors.js';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../contract/names.js';
import { attributePairs } from '../contract/search-attributes.js';
import type { ProtectNodeSettings, ProtectWatchInput } from '../contract/types.js';
import { connectionOptions, type TemporalTarget } from '../temporal/connection.js';
import { clientDataConverter, type PayloadProtection } from '../temporal/data-converter.js';
import { nodeProtect, protectSettingsSignal } from '../workflows/protect.js';

export async function signalProtect(client: Client, node: string, settings: ProtectNodeSettings): Promise<void> {
  await client.workflow.signalWithStart(nodeProtect, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: workflowIds.protect(node),
    args: [{ node, settings } satisfies ProtectWatchInput],
    signal: protectSettingsSignal,
    signalArgs: [settings],
    typedSearchAttributes: attributePairs({
      sourceNode: node,
      targetNode: node,
      operation: 'protect',
      phase: 'watching',
    }),
  });
}

export interface ProtectStarter {
  stop(): void;
}

export function startProtect(o: {
  node: string;
  ctx: NodeContext;
  target: TemporalTarget;
  payloads: PayloadProtection;
}): ProtectStarter {
  const log = o.ctx.log.child({ phase: 'protect' });
  const settings: ProtectNodeSettings = { maxConcurrent: o.ctx.settings.maxConcurrentCheckpoints ?? 1 };
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const attempt = async (n: number): Promise<void> => {
    let connection: Connection | undefined;
    try {
      connection = await Connection.connect({ ...connectionOptions(o.target), connectTimeout: 5000 });
      const client = new Client({
        connection,
        namespace: o.target.namespace,
        dataConverter: clientDataConverter(o.payloads),
      });
      await signalProtect(client, o.node, settings);
      log.info(
        { workflowId: workflowIds.protect(o.node), maxConcurrent: settings.maxConcurrent },
        "periodic checkpoints: the node's protect workflow runs",
      );
    } catch (err) {
      const waitMs = Math.min(60_000, 2000 * 2 ** n);
      log.warn({ err: errorMessage(err), retryInMs: waitMs }, 'cannot start the periodic-checkpoint workflow yet');
      if (!stopped) timer = setTimeout(() => void attempt(n + 1), waitMs);
    } finally {
      await connection?.close().catch(() => undefined);
    }
  };
  void attempt(0);
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
