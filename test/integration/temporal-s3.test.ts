import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import type { DrainResult, MigrateResult, ReclaimWatchInput } from '../../contract/types.js';
import { CHUNKS_DIR } from '../../core/chunk-dir.js';
import { workflowTimes } from '../../temporal/history.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { COUNTER_FILES } from '../support/images.js';
import { objectsIn, startS3Server, type S3TestServer } from '../support/s3-server.js';
import { drainsDone, runCli, runningOn, startCluster, stopAllTemporal, type TestCluster } from '../support/temporal.js';
import { nodeReclaimWatch } from '../../workflows/index.js';

/**
 * Issue 12 on the real stack: two containerd nodes with a worker each, a
 * Temporal dev server and a real S3 server (versitygw on loopback) that both
 * nodes allow. A job whose checkpoints live in the bucket moves between the
 * nodes through it: no offer, no transfer activity, nothing in either node's
 * checkpoint root; the target reads the very checkpoint the source published.
 */
let cluster: TestCluster;
let s3: S3TestServer;
let work: string;
const A = 's3f-a';
const B = 's3f-b';
const BUCKET = 'arch-flows';
const PREFIX = 'jobs';
const MIG = 's3mig';
const DRAIN = 's3drain';
const URL_ENV = [
  // The cluster's counters name a local checkpoint root; emptied here, as a URL excludes it.
  'ARCH_CHECKPOINT_HOST_PATH=',
  `ARCH_CHECKPOINT_URL=s3://${BUCKET}/${PREFIX}`,
  'COUNTER_START_FILES=1',
];

/** Every activity that moves bytes between nodes (transfer server offers and fetches). */
const TRANSFER_ACTIVITIES = ['offerCheckpoint', 'receiveCheckpoint', 'offerImage', 'withdrawOffer'];

const jobObjects = (id: string) => path.join(s3.root, BUCKET, PREFIX, 'default', id);
const currentInBucket = (id: string) => fs.readFileSync(path.join(jobObjects(id), 'current'), 'utf8').trim();

beforeAll(async () => {
  await cleanupStaleNodes();
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-s3f-'));
  s3 = await startS3Server();
  await s3.createBucket(BUCKET);
  // Each node its own cache (node-local staging), the same bucket and credentials.
  const node = (n: string) => ({
    ARCH_ALLOWED_BUCKETS: `${BUCKET}/${PREFIX}`,
    ARCH_S3_CACHE_PATH: path.join(work, `cache-${n}`),
    ...s3.settings(),
  });
  cluster = await startCluster('s3flows', [A, B], { nodeSettings: { [A]: node(A), [B]: node(B) } });
});

// A test that fails half-way leaves neither its watcher nor its job to the next one.
afterEach(async () => {
  await cluster?.temporal.client.workflow
    .getHandle(workflowIds.reclaimWatch(B))
    .terminate('test done')
    .catch(() => undefined);
  for (const n of Object.values(cluster?.nodes ?? {}))
    for (const id of [MIG, DRAIN]) await n.containerd.removeContainer(id).catch(() => undefined);
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
  await s3?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

/** The activity types a workflow ran, from its history. */
async function activityTypes(workflowId: string): Promise<string[]> {
  const t = await workflowTimes(cluster.temporal.client.workflow.getHandle(workflowId));
  return t.activities.map((a) => a.type);
}

/** Nothing of the job in the nodes' checkpoint root: the bucket is its only home. */
function expectNothingOnTheNodes(id: string): void {
  expect(fs.existsSync(path.join(cluster.dir, 'checkpoints', 'default', id))).toBe(false);
}

test('migrate A → B through the bucket: the counter continues on B, nothing is transferred between the nodes', async () => {
  const id = MIG;
  await cluster.runCounter(A, id, URL_ENV);
  const before = await cluster.waitCount(A, id, 3);
  const r = await runCli(cluster, ['--json', 'migrate', `default/${id}`, '--from', A, '--to', B, '--wait']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const res = r.json as MigrateResult & { workflowId: string };
  expect(res.outcome).toBe('migrated');
  expect(res.checkpoint).toMatchObject({ mode: 's3', transferred: 'present' });
  expect(res.runningOn).toBe(B);
  expect(await runningOn(cluster, id)).toEqual([B]);
  const onB = await cluster.waitCount(B, id, before + 3);
  expect(onB).toBeGreaterThan(before);
  expect(cluster.nodes[B]!.readContainerFile(id, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  expect(await cluster.nodes[A]!.containerd.listContainers()).not.toContain(id);
  // No transfer: not as a phase, not as an activity; the checkpoint is the bucket's current one.
  expect(res.phases.map((p) => p.phase)).not.toContain('transfer');
  const migrateActivities = await activityTypes(res.workflowId);
  expect(migrateActivities).toEqual(expect.arrayContaining(['checkpointContainer', 'restoreContainer']));
  expect(migrateActivities.filter((a) => TRANSFER_ACTIVITIES.includes(a))).toEqual([]);
  expect(currentInBucket(id)).toMatch(/^ckpt-/);
  expect(objectsIn(path.join(jobObjects(id), CHUNKS_DIR)).length).toBeGreaterThan(0);
  expectNothingOnTheNodes(id);
});

test('a reclaim drain of B through the bucket restores the job on A: no transfer, the counter continues', async () => {
  const id = DRAIN;
  await cluster.runCounter(B, id, URL_ENV);
  const onB = await cluster.waitCount(B, id, 3);
  const client = cluster.temporal.client;
  const watchId = workflowIds.reclaimWatch(B);
  await client.workflow.start(nodeReclaimWatch, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: watchId,
    args: [{ node: B, targets: [A] } satisfies ReclaimWatchInput],
  });
  const sig = await runCli(cluster, ['--json', 'reclaim', B, '--deadline', '60s', '--reason', 'spot notice (s3 test)']);
  expect(sig.code).toBe(0);
  const state = await drainsDone(cluster, B);
  const rec = state.history[0]!;
  expect(rec).toMatchObject({ status: 'completed', migrated: 1, failed: 0, withinDeadline: true });
  const drain = (await client.workflow.getHandle(rec.drainWorkflowId).result()) as DrainResult;
  expect(drain.containers.map((c) => `${c.namespace}/${c.id}: ${c.outcome}${c.error ? ` (${c.error})` : ''}`)).toEqual([
    `default/${id}: migrated`,
  ]);
  expect(drain.containers[0]).toMatchObject({ runningOn: A, checkpointedInTime: true });
  expect(await runningOn(cluster, id)).toEqual([A]);
  await cluster.waitCount(A, id, onB + 3);
  expect(cluster.nodes[A]!.readContainerFile(id, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  expect(await cluster.nodes[B]!.containerd.listContainers()).not.toContain(id);
  // Through the bucket: its checkpoint there, and no transfer activity in the drain.
  expect(currentInBucket(id)).toMatch(/^ckpt-/);
  expect(objectsIn(path.join(jobObjects(id), CHUNKS_DIR)).length).toBeGreaterThan(0);
  const drainActivities = await activityTypes(rec.drainWorkflowId);
  expect(drainActivities).toEqual(expect.arrayContaining(['checkpointContainer', 'restoreContainer']));
  expect(drainActivities.filter((a) => TRANSFER_ACTIVITIES.includes(a))).toEqual([]);
  expectNothingOnTheNodes(id);
});
