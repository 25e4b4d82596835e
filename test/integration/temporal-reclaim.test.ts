import { randomBytes } from 'node:crypto';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import type { DrainResult, ReclaimWatchInput, ReclaimWatchState } from '../../contract/types.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { FakeAwsImds } from '../support/fake-metadata.js';
import {
  drainsDone,
  runCli,
  runningOn,
  startCluster,
  stopAllTemporal,
  waitUntil,
  type TestCluster,
} from '../support/temporal.js';
import { nodeReclaimWatch } from '../../workflows/index.js';

/**
 * A reclaim notice for node A reaches its reclaim watcher (a long-running
 * workflow): every ARCH container of A is checkpointed within the deadline
 * and runs on B afterwards, in whatever containerd namespace it lived.
 */
let cluster: TestCluster;
const A = 'rec-a';
const B = 'rec-b';

beforeAll(async () => {
  await cleanupStaleNodes();
  cluster = await startCluster('reclaim', [A, B]);
});

// A test that fails half-way must not leave its watcher to the next test.
afterEach(async () => {
  await cluster?.temporal.client.workflow
    .getHandle(workflowIds.reclaimWatch(A))
    .terminate('test done')
    .catch(() => undefined);
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

/** Each container's outcome, with its error if any: what a failed expectation should show. */
const outcomes = (d: DrainResult): string[] =>
  d.containers.map((c) => `${c.namespace}/${c.id}: ${c.outcome}${c.error ? ` (${c.error})` : ''}`).sort();

test('reclaim signal → every ARCH container of A runs on B, checkpoints within the deadline', async () => {
  await cluster.runCounter(A, 'r1', ['ARCH_PRIORITY=5']);
  await cluster.runCounter(A, 'r2');
  await cluster.runCounter(A, 'r3', [], 'batch');
  const before = {
    r1: await cluster.waitCount(A, 'r1', 3),
    r2: await cluster.waitCount(A, 'r2', 3),
    r3: await cluster.waitCount(A, 'r3', 3, 20_000, 'batch'),
  };
  // The watcher continues-as-new after each drain here, to prove nothing is lost across runs.
  const client = cluster.temporal.client;
  const watchId = workflowIds.reclaimWatch(A);
  const first = await client.workflow.start(nodeReclaimWatch, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: watchId,
    args: [{ node: A, targets: [B], maxDrainsPerRun: 1 } satisfies ReclaimWatchInput],
  });
  const t0 = Date.now();
  const r = await runCli(cluster, ['--json', 'reclaim', A, '--deadline', '60s', '--reason', 'spot notice (test)']);
  expect(r.code).toBe(0);
  const deadline = Date.parse((r.json as { signal: { deadline: string } }).signal.deadline);

  const state = await drainsDone(cluster, A);
  const rec = state.history[0]!;
  const drain = (await client.workflow.getHandle(rec.drainWorkflowId).result()) as DrainResult;
  expect(outcomes(drain)).toEqual(['batch/r3: migrated', 'default/r1: migrated', 'default/r2: migrated']);
  expect(rec).toMatchObject({
    status: 'completed',
    migrated: 3,
    failed: 0,
    withinDeadline: true,
    reason: 'spot notice (test)',
  });
  expect(Date.now()).toBeLessThan(deadline);

  expect(drain.withinDeadline).toBe(true);
  expect(drain.plan.notExpectedToFit).toEqual([]);
  expect(drain.containers.map((c) => `${c.namespace}/${c.id}`)[0]).toBe('default/r1'); // highest ARCH_PRIORITY first
  for (const c of drain.containers) {
    expect(c).toMatchObject({ outcome: 'migrated', runningOn: B, checkpointedInTime: true, expectedToFit: true });
    expect(c.checkpointMs).toBeGreaterThan(0);
    expect(c.restoreMs).toBeGreaterThan(0);
  }
  expect(await runningOn(cluster, 'r1')).toEqual([B]);
  expect(await runningOn(cluster, 'r2')).toEqual([B]);
  expect(await runningOn(cluster, 'r3', 'batch')).toEqual([B]);
  await cluster.waitCount(B, 'r1', before.r1 + 2);
  await cluster.waitCount(B, 'r2', before.r2 + 2);
  await cluster.waitCount(B, 'r3', before.r3 + 2, 20_000, 'batch');
  expect(await cluster.nodes[A]!.containerd.listContainers()).toEqual([]);
  console.log(`reclaim: all moved in ${Date.now() - t0} ms; checkpoint phase ${drain.checkpointPhaseMs} ms`);

  // It continued as new and still answers, with its history carried over.
  const desc = await client.workflow.getHandle(watchId).describe();
  expect(desc.runId).not.toBe(first.firstExecutionRunId);
  expect(desc.status.name).toBe('RUNNING');
  const status = await runCli(cluster, ['--json', 'reclaim', A, '--status']);
  expect((status.json as ReclaimWatchState).history).toHaveLength(1);

  // A second notice on the now empty node is handled as well (nothing to move).
  await client.workflow
    .getHandle(watchId)
    .signal('reclaim', { reason: 'second notice', deadline: new Date(Date.now() + 30_000).toISOString() });
  const s2 = await drainsDone(cluster, A, 2, 60_000);
  expect(s2.history[1]).toMatchObject({ status: 'completed', migrated: 0, failed: 0 });
});

test('drain through the CLI: checkpoint-only drain reports per-container results', async () => {
  await cluster.runCounter(B, `d-${randomBytes(2).toString('hex')}`);
  const r = await runCli(cluster, ['--json', 'drain', B, '--deadline', '60s', '--wait']);
  expect(r.code).toBe(0);
  const res = r.json as DrainResult;
  expect(res.targets).toEqual([]);
  expect(res.containers.length).toBeGreaterThanOrEqual(4);
  expect(outcomes(res).filter((o) => !o.endsWith(': checkpointed'))).toEqual([]);
  expect(res.containers.every((c) => c.checkpointedInTime)).toBe(true);
  // Checkpointed and stopped: nothing runs on B any more.
  expect((await cluster.nodes[B]!.containerd.listTasks()).filter((t) => t.status === 'RUNNING')).toEqual([]);
});

test("a cloud reclaim notice (AWS spot interruption, loopback fake IMDS) moves the node's containers", async () => {
  const imds = await FakeAwsImds.start();
  try {
    await cluster.workers[A]!.stop();
    await cluster.startWorker(A, ['--reclaim-targets', B], {
      ARCH_CLOUD_PROVIDER: 'aws',
      ARCH_METADATA_URL: imds.url,
      ARCH_NOTICE_POLL_MS: '200',
    });
    await cluster.runCounter(A, 'cloud1');
    const before = await cluster.waitCount(A, 'cloud1', 3);
    const client = cluster.temporal.client;
    const watchId = workflowIds.reclaimWatch(A);
    const t0 = Date.now();
    imds.scheduleNotice({
      action: 'terminate',
      time: new Date(Date.now() + 120_000).toISOString().replace(/\.\d+Z$/, 'Z'),
    });
    await waitUntil(
      'cloud1 running on B',
      async () => ((await runningOn(cluster, 'cloud1')).join() === B ? true : undefined),
      120_000,
      500,
    );
    await cluster.waitCount(B, 'cloud1', before + 2);
    // The drain that moved it may still be cleaning up (current) or be done (history).
    const s = await client.workflow.getHandle(watchId).query<ReclaimWatchState>('state');
    expect([...s.history, s.current].map((r) => r?.reason)).toContainEqual(expect.stringMatching(/^aws termination/));
    console.log(`cloud notice → running on B in ${Date.now() - t0} ms`);
  } finally {
    await imds.close();
  }
});
