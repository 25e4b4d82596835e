/**
 * The CLI's Temporal client: TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE (or
 * --address / --temporal-namespace), reachable or a clear exit 3.
 */
import type { Client } from '@temporalio/client';
import type { Settings } from '../core/settings.js';
import { connectClient, temporalTarget, type TemporalTarget } from '../temporal/connection.js';
import { nodeTaskQueue } from '../contract/names.js';
import { CliError, EXIT } from './exit-codes.js';

export interface GlobalOpts {
  json?: boolean;
  address?: string;
  temporalNamespace?: string;
}

export function targetFrom(settings: Settings, g: GlobalOpts): TemporalTarget {
  return temporalTarget({
    temporalAddress: g.address ?? settings.temporalAddress,
    temporalNamespace: g.temporalNamespace ?? settings.temporalNamespace,
  });
}

export async function connect(settings: Settings, g: GlobalOpts): Promise<Client> {
  const t = targetFrom(settings, g);
  try {
    const client = await connectClient(t, { connectTimeoutMs: 5000 });
    await client.connection.withDeadline(Date.now() + 5000, () => client.workflowService.getSystemInfo({}));
    return client;
  } catch (err) {
    throw new CliError(
      `cannot reach Temporal at ${t.address} (namespace ${t.namespace}): ${(err as Error).message.split('\n')[0]}. Fix: start it with \`arch-cli dev\`, or set TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE (--address / --temporal-namespace)`,
      EXIT.unavailable,
    );
  }
}

/** Does any worker poll this node's activity queue right now? */
export async function nodeHasWorker(client: Client, node: string): Promise<boolean> {
  const r = await client.workflowService.describeTaskQueue({
    namespace: client.options.namespace,
    taskQueue: { name: nodeTaskQueue(node), kind: 1 }, // TASK_QUEUE_KIND_NORMAL
    taskQueueType: 2, // TASK_QUEUE_TYPE_ACTIVITY
  });
  return (r.pollers ?? []).length > 0;
}

/** Refuse early (exit 3) when a node has no worker: the workflow would only wait and fail. */
export async function requireWorkers(client: Client, nodes: string[]): Promise<void> {
  for (const n of nodes) {
    if (!(await nodeHasWorker(client, n))) {
      throw new CliError(
        `node "${n}" has no worker: nothing polls task queue ${nodeTaskQueue(n)}. Fix: start \`arch-worker --node ${n}\` on that node, or check the name (\`arch-cli status --nodes\`)`,
        EXIT.unavailable,
      );
    }
  }
}
