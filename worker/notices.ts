/**
 * Cloud reclaim notices → Temporal. The worker watches this VM's metadata
 * service (core/cloud, ARCH_CLOUD_PROVIDER) and turns a notice into a
 * `reclaim` signal to the node's reclaim watcher workflow (started if it is
 * not running), which drains the node within the notice's deadline. The
 * notice counts as handled (for exactly-once delivery, and for Azure's
 * acknowledgement) once that drain has started, or after a bounded wait.
 *
 * If Temporal cannot be reached, the node does not wait for it: it
 * checkpoints its own containers before the deadline (core/finalize), so
 * they can be restored wherever they are created again.
 */
import { Client, Connection } from '@temporalio/client';
import { createWatcher, loadCloudConfig, type CloudWatcher, type ReclaimNotice } from '../core/cloud/index.js';
import type { NodeContext } from '../core/context.js';
import { errorMessage } from '../contract/errors.js';
import { finalizeNode } from '../core/finalize.js';
import { settingsVars } from '../core/settings.js';
import { connectionOptions, type TemporalTarget } from '../temporal/connection.js';
import { clientDataConverter, type PayloadProtection } from '../temporal/data-converter.js';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../contract/names.js';
import { waitForReclaimDrain } from '../temporal/reclaim-drain.js';
import { attributePairs } from '../contract/search-attributes.js';
import type { ReclaimSignal, ReclaimWatchInput } from '../contract/types.js';
import { nodeReclaimWatch, reclaimSignal } from '../workflows/reclaim.js';

/** How long a notice's handler waits for its drain to start before letting go. */
const DRAIN_START_WAIT_MS = 15_000;

export interface NoticeOptions {
  node: string;
  targets: string[];
  ctx: NodeContext;
  target: TemporalTarget;
  /** The worker's payload codec: the signal's arguments are payloads too. */
  payloads: PayloadProtection;
  env?: NodeJS.ProcessEnv;
  /** The node's measured checkpoint throughput (shared with the drain planning activity). */
  throughputFile?: string;
}

export async function signalReclaim(
  client: Client,
  node: string,
  targets: string[],
  signal: ReclaimSignal,
): Promise<void> {
  await client.workflow.signalWithStart(nodeReclaimWatch, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: workflowIds.reclaimWatch(node),
    args: [{ node, targets } satisfies ReclaimWatchInput],
    signal: reclaimSignal,
    signalArgs: [signal],
    typedSearchAttributes: attributePairs({
      sourceNode: node,
      targetNode: targets.join(','),
      operation: 'reclaim-watch',
      phase: 'watching',
    }),
  });
}

export async function startNoticeWatcher(o: NoticeOptions): Promise<CloudWatcher | undefined> {
  const cfg = loadCloudConfig(settingsVars({ ...(o.env ?? process.env), ARCH_CONFIG: o.ctx.settings.configFile }).vars);
  if (cfg.provider === 'none') return undefined;
  const log = o.ctx.log.child({ phase: 'reclaim-notice' });
  const watcher = await createWatcher({
    provider: cfg.provider,
    logger: log,
    baseUrl: cfg.baseUrl,
    pollMs: cfg.pollMs,
    rebalance: cfg.rebalance,
    azureVmName: cfg.azureVmName,
  });
  const onNotice = async (n: ReclaimNotice): Promise<void> => {
    const signal: ReclaimSignal = {
      deadline: n.deadline.toISOString(),
      reason: `${n.provider} ${n.kind}: ${n.reason}`,
    };
    let connection: Connection | undefined;
    try {
      connection = await Connection.connect({ ...connectionOptions(o.target), connectTimeout: 3000 });
      const client = new Client({
        connection,
        namespace: o.target.namespace,
        dataConverter: clientDataConverter(o.payloads),
      });
      await signalReclaim(client, o.node, o.targets, signal);
      log.warn(
        { deadline: signal.deadline, reason: signal.reason },
        "reclaim notice signalled to the node's reclaim watcher",
      );
      // Resolving tells the watcher the notice is handled (Azure then
      // acknowledges it, letting the platform proceed): only once the drain
      // runs. Never throws from here on: the signal is delivered, and a
      // retry would signal a second drain.
      const waitMs = Math.max(0, Math.min(DRAIN_START_WAIT_MS, n.deadline.getTime() - Date.now()));
      const drainId = await waitForReclaimDrain(client, o.node, signal, { timeoutMs: waitMs }).catch(() => undefined);
      if (drainId) log.info({ drainWorkflowId: drainId }, 'drain for the reclaim notice started');
      else
        log.warn(
          { waitedMs: waitMs },
          'drain for the reclaim notice not seen starting yet (watcher busy?); the notice stays signalled',
        );
      return;
    } catch (err) {
      log.error(
        { err: errorMessage(err), deadline: signal.deadline },
        "cannot reach Temporal with the reclaim notice: checkpointing this node's containers locally",
      );
    } finally {
      await connection?.close().catch(() => undefined);
    }
    // Without Temporal nobody will restore them elsewhere now, but their
    // checkpoints exist: created again anywhere, they resume.
    const report = await finalizeNode(o.ctx, { deadline: n.deadline, throughputFile: o.throughputFile });
    log.warn({ ok: report.ok, items: report.items.length }, 'local checkpoint of every ARCH container done');
  };
  watcher.start(onNotice);
  log.info({ provider: watcher.provider, targets: o.targets }, 'watching for reclaim notices');
  return watcher;
}
