/**
 * Records the workflow histories the replay test replays
 * (test/fixtures/histories/<workflowType>-<case>.json), from REAL runs: the
 * installed Temporal CLI dev server, real arch-worker processes and real
 * containerd nodes with running counters, as the integration tests start
 * them (test/support/temporal.ts). Every workflow type of workflows/index.ts
 * gets at least one history; the reclaim watcher's is a notice arriving,
 * the drain it starts, and its continue-as-new.
 *
 * Payloads are encrypted with the TEST key committed beside the histories
 * (payload-test.key), so the replay decodes them with the same codec as
 * production workers.
 *
 *   npm run build && node dist/scripts/record-histories.js [case ...]
 *
 * Root, like the integration tests. Without arguments every case is
 * recorded again; name cases (e.g. `migrateContainer-migrated`) to record
 * only those. Record again only when a workflow changed on purpose, behind
 * patched() (README: "Workflow tests and replay").
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { checkpointContainer } from '../core/checkpoint.js';
import { createNodeContext } from '../core/context.js';
import type { ClusterView } from '../contract/liveness.js';
import type { WorkflowHandle } from '@temporalio/client';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../contract/names.js';
import type {
  DrainInput,
  ListNodeInput,
  MigrateInput,
  PauseInput,
  ProtectWatchInput,
  ProtectWatchState,
  ReclaimWatchInput,
  ReclaimWatchState,
} from '../contract/types.js';
import { cleanupStaleNodes } from '../test/support/containerd-node.js';
import { historyFile, historyToJson, testPayloadKey } from '../test/support/histories.js';
import { outcome, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../test/support/temporal.js';

const A = 'hist-a';
const B = 'hist-b';
/** Its CRIU always fails: every restore there falls back, and the migration compensates. */
const C = 'hist-c';
/** Loses power: the cluster workflow declares it dead and recovers its job. */
const D = 'hist-d';
const NODE_LOSS = ['clusterLiveness-node-lost', 'recoverNode-node-lost', 'recoverContainer-node-lost'];

const wanted = new Set(process.argv.slice(2));
const recorded: string[] = [];

async function save(workflowType: string, kase: string, handle: WorkflowHandle): Promise<void> {
  const name = `${workflowType}-${kase}`;
  if (wanted.size && !wanted.has(name)) return;
  const history = await handle.fetchHistory();
  const first = history.events?.[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name;
  if (first !== workflowType) throw new Error(`${name}: the history starts ${first}, not ${workflowType}`);
  fs.writeFileSync(historyFile(workflowType, kase), `${JSON.stringify(historyToJson(history), null, 2)}\n`);
  recorded.push(`${name} (${history.events?.length ?? 0} events)`);
}

const suffix = (): string => randomBytes(3).toString('hex');

async function start(cluster: TestCluster, type: string, workflowId: string, input: unknown) {
  return cluster.temporal.client.workflow.start(type, { taskQueue: WORKFLOW_TASK_QUEUE, workflowId, args: [input] });
}

/** Settled as expected, or the recording is wrong: a history of an accident is no reference. */
async function settle(h: WorkflowHandle, expectOk: boolean): Promise<void> {
  const o = await outcome(h, 240_000);
  if (o.ok !== expectOk)
    throw new Error(
      `${h.workflowId}: expected ${expectOk ? 'success' : 'failure'}, got ${o.ok ? 'success' : `failure: ${o.error.message} (${(o.error.cause as Error | undefined)?.message ?? ''})`}`,
    );
}

/**
 * A's periodic-checkpoint workflow (its worker started one: replaced by one
 * that continues as new after a few wake-ups): a container checkpointed at
 * its ARCH_CHECKPOINT_INTERVAL, a `protect` update, and the continue-as-new.
 */
async function recordProtect(cluster: TestCluster): Promise<void> {
  const client = cluster.temporal.client;
  const id = workflowIds.protect(A);
  await client.workflow
    .getHandle(id)
    .terminate('replaced for recording')
    .catch(() => undefined);
  await cluster.runCounter(A, 'paced', ['ARCH_CHECKPOINT_INTERVAL=5s']);
  await cluster.waitCount(A, 'paced', 3);
  const h = await start(cluster, 'nodeProtect', id, {
    node: A,
    settings: { maxConcurrent: 1 },
    discoverEveryMs: 2000,
    maxRoundsPerRun: 12,
  } satisfies ProtectWatchInput);
  try {
    const firstRun = client.workflow.getHandle(id, h.firstExecutionRunId);
    await waitUntil(
      'a periodic checkpoint',
      async () =>
        ((await firstRun.query<ProtectWatchState>('protectState')).containers.find((c) => c.id === 'paced')?.taken ??
          0) >= 1,
      120_000,
      500,
    );
    await firstRun.executeUpdate('protect', { args: [{ namespace: 'default', id: 'paced', intervalMs: 6000 }] });
    await waitUntil(
      'the protect workflow to continue as new',
      async () => (await firstRun.describe()).status.name === 'CONTINUED_AS_NEW',
      240_000,
      500,
    );
    await save('nodeProtect', 'periodic', firstRun);
  } finally {
    await client.workflow
      .getHandle(id)
      .terminate('histories recorded')
      .catch(() => undefined);
    await cluster.nodes[A]!.containerd.removeContainer('paced').catch(() => undefined);
  }
}

async function record(cluster: TestCluster): Promise<void> {
  const client = cluster.temporal.client;
  if (wanted.size === 0 || wanted.has('nodeProtect-periodic')) await recordProtect(cluster);
  if (wanted.size && [...wanted].every((n) => n.startsWith('nodeProtect-'))) return;

  await cluster.runCounter(A, 'mig');
  await cluster.waitCount(A, 'mig', 3);
  const migrated = await start(cluster, 'migrateContainer', workflowIds.migrate('default', 'mig', suffix()), {
    namespace: 'default',
    id: 'mig',
    from: A,
    to: B,
  } satisfies MigrateInput);
  await settle(migrated, true);
  await save('migrateContainer', 'migrated', migrated);

  await cluster.runCounter(A, 'comp');
  await cluster.waitCount(A, 'comp', 3);
  const compensated = await start(cluster, 'migrateContainer', workflowIds.migrate('default', 'comp', suffix()), {
    namespace: 'default',
    id: 'comp',
    from: A,
    to: C,
    restoreAttempts: 1,
  } satisfies MigrateInput);
  await settle(compensated, false);
  await save('migrateContainer', 'compensated', compensated);

  await cluster.runCounter(A, 'pz');
  await cluster.waitCount(A, 'pz', 3);
  const pauseInput: PauseInput = { node: A, selector: { ids: ['pz'] } };
  const paused = await start(cluster, 'pauseContainers', workflowIds.pause(A, suffix()), pauseInput);
  await settle(paused, true);
  await save('pauseContainers', 'one', paused);
  const resumed = await start(cluster, 'resumeContainers', workflowIds.resume(A, suffix()), pauseInput);
  await settle(resumed, true);
  await save('resumeContainers', 'one', resumed);

  const listed = await start(cluster, 'listNodeContainers', `arch-list-${A}-${suffix()}`, {
    node: A,
  } satisfies ListNodeInput);
  await settle(listed, true);
  await save('listNodeContainers', 'node', listed);

  // A now runs comp (compensated back) and pz (resumed): both move to B.
  const drained = await start(cluster, 'drainNode', workflowIds.drain(A, suffix()), {
    node: A,
    targets: [B],
    deadline: new Date(Date.now() + 120_000).toISOString(),
    reason: 'recording histories',
  } satisfies DrainInput);
  await settle(drained, true);
  await save('drainNode', 'to-target', drained);

  // The watcher of B, a notice, its drain (to A), and its continue-as-new after that one drain.
  const watchId = workflowIds.reclaimWatch(B);
  const watcher = await start(cluster, 'nodeReclaimWatch', watchId, {
    node: B,
    targets: [A],
    maxDrainsPerRun: 1,
  } satisfies ReclaimWatchInput);
  try {
    const firstRun = client.workflow.getHandle(watchId, watcher.firstExecutionRunId);
    await firstRun.signal('reclaim', {
      deadline: new Date(Date.now() + 120_000).toISOString(),
      reason: 'spot notice (recording)',
    });
    await waitUntil(
      'the reclaim watcher to continue as new after its drain',
      async () => (await firstRun.describe()).status.name === 'CONTINUED_AS_NEW',
      240_000,
      500,
    );
    await save('nodeReclaimWatch', 'notice', firstRun);
    const state = await client.workflow.getHandle(watchId).query<ReclaimWatchState>('state');
    const rec = state.history[0];
    if (rec?.status !== 'completed') throw new Error(`the reclaim drain did not complete: ${JSON.stringify(rec)}`);
    await save('drainNode', 'reclaim', client.workflow.getHandle(rec.drainWorkflowId));
  } finally {
    await client.workflow
      .getHandle(watchId)
      .terminate('histories recorded')
      .catch(() => undefined);
  }
}

/** D's shared-mode job, D powered off, the recovery on a live node. */
async function recordNodeLoss(cluster: TestCluster): Promise<void> {
  const shared = path.join(cluster.dir, 'shared');
  await cluster.runCounter(D, 'lost', [`ARCH_SHAREDFS_HOST_PATH=${shared}`, 'ARCH_WORKDIR_CONTAINER_PATH=/work']);
  await cluster.waitCount(D, 'lost', 3);
  await checkpointContainer(
    createNodeContext('record', {
      ...process.env,
      ARCH_CONFIG: cluster.archConfig,
      ARCH_NODE_NAME: D,
      ARCH_RUNC_ROOT: cluster.nodes[D]!.runcRootBase,
    }),
    { namespace: 'default', id: 'lost', runcRoot: cluster.nodes[D]!.runcRoot('default'), leaveRunning: true },
  );
  const cl = cluster.temporal.client.workflow.getHandle(workflowIds.cluster());
  await waitUntil(
    "D's report with its checkpoint",
    async () =>
      (await cl.query<ClusterView>('nodes')).nodes.find((n) => n.node === D)?.report.containers[0]?.lastCheckpointAt,
    60_000,
    500,
  );
  await Promise.all([cluster.workers[D]!.kill(), cluster.nodes[D]!.kill()]);
  const d = await waitUntil(
    "D's recovery",
    async () => (await cl.query<ClusterView>('nodes')).nodes.find((n) => n.node === D && n.recovery?.result),
    120_000,
    500,
  );
  const job = d.recovery!.result!.containers[0]!;
  if (job.outcome !== 'recovered') throw new Error(`D's job was not recovered: ${JSON.stringify(job)}`);
  await save('recoverNode', 'node-lost', cluster.temporal.client.workflow.getHandle(d.recovery!.workflowId));
  await save('recoverContainer', 'node-lost', cluster.temporal.client.workflow.getHandle(job.workflowId!));
  await save('clusterLiveness', 'node-lost', cl);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new Error('run as root: real containerd nodes, runc and CRIU (like the integration tests)');
  // Client and workers (they inherit this environment) encrypt with the test key.
  process.env.ARCH_PAYLOAD_KEY = testPayloadKey();
  delete process.env.ARCH_PAYLOAD_KEY_FILE;
  await cleanupStaleNodes();
  const cluster = await startCluster('record-histories', [A, B, C, D], {
    nodeSettings: {
      [A]: { ARCH_NODE_NAME: A },
      [B]: { ARCH_NODE_NAME: B },
      [C]: { ARCH_NODE_NAME: C, ARCH_CRIU: '/bin/false' },
      [D]: { ARCH_NODE_NAME: D, ARCH_NODE_DEAD_AFTER: '5s' },
    },
  });
  try {
    const wants = (names: string[]) => !wanted.size || [...wanted].some((w) => names.includes(w));
    if (!wanted.size || [...wanted].some((w) => !NODE_LOSS.includes(w))) await record(cluster);
    if (wants(NODE_LOSS)) await recordNodeLoss(cluster);
  } catch (err) {
    console.error(cluster.logDigest());
    throw err;
  } finally {
    await cluster.stop();
    await stopAllTemporal();
  }
  console.log(`recorded:\n  ${recorded.join('\n  ')}`);
}

main().catch((err: unknown) => {
  console.error('recording histories failed:', err);
  process.exit(1);
});
