import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import type { DrainResult, MigrateResult, ReclaimWatchInput, ReclaimWatchState } from '../../contract/types.js';
import { CHUNKS_DIR } from '../../core/chunk-dir.js';
import { workflowTimes } from '../../temporal/history.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { COUNTER_FILES } from '../support/images.js';
import { objectsIn, startS3Server, type S3TestServer } from '../support/s3-server.js';
import { runCli, runningOn, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';
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
const ID = 's3job';

/** Every activity that moves bytes between nodes (transfer server offers and fetches). */
const TRANSFER_ACTIVITIES = ['offerCheckpoint', 'receiveCheckpoint', 'offerImage', 'withdrawOffer'];

const jobObjects = () => path.join(s3.root, BUCKET, PREFIX, 'default', ID);
const currentInBucket = () => fs.readFileSync(path.join(jobObjects(), 'current'), 'utf8').trim();

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

afterEach(async () => {
  await cluster?.temporal.client.workflow
    .getHandle(workflowIds.reclaimWatch(B))
    .terminate('test done')
    .catch(() => undefined);
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

/** Nothing of the job in either node's checkpoint root: the bucket is its only home. */
function expectNothingOnTheNodes(): void {
  expect(fs.existsSync(path.join(cluster.dir, 'checkpoints', 'default', ID))).toBe(false);
}

test('migrate A → B through the bucket (nothing transferred between the nodes), then a reclaim drain of B through the bucket restores it on A', async () => {
  // The cluster's counters name a local checkpoint root; emptied here, as a URL excludes it.
  await cluster.runCounter(A, ID, [
    'ARCH_CHECKPOINT_HOST_PATH=',
    `ARCH_CHECKPOINT_URL=s3://${BUCKET}/${PREFIX}`,
    'COUNTER_START_FILES=1',
  ]);
  const before = await cluster.waitCount(A, ID, 3);

  // ---- migrate A → B
  const r = await runCli(cluster, ['--json', 'migrate', `default/${ID}`, '--from', A, '--to', B, '--wait']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const res = r.json as MigrateResult & { workflowId: string };
  expect(res.outcome).toBe('migrated');
  expect(res.checkpoint).toMatchObject({ mode: 's3', transferred: 'present' });
  expect(res.runningOn).toBe(B);
  expect(await runningOn(cluster, ID)).toEqual([B]);
  const onB = await cluster.waitCount(B, ID, before + 3);
  expect(onB).toBeGreaterThan(before);
  expect(cluster.nodes[B]!.readContainerFile(ID, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  expect(await cluster.nodes[A]!.containerd.listContainers()).not.toContain(ID);
  // No transfer: not as a phase, not as an activity; the checkpoint is the bucket's current one.
  expect(res.phases.map((p) => p.phase)).not.toContain('transfer');
  const migrateActivities = await activityTypes(res.workflowId);
  expect(migrateActivities).toEqual(expect.arrayContaining(['checkpointContainer', 'restoreContainer']));
  expect(migrateActivities.filter((a) => TRANSFER_ACTIVITIES.includes(a))).toEqual([]);
  const migrated = currentInBucket();
  expect(objectsIn(path.join(jobObjects(), CHUNKS_DIR)).length).toBeGreaterThan(0);
  expectNothingOnTheNodes();

  // ---- a reclaim notice for B: its drain checkpoints the job into the bucket and A restores it
  const client = cluster.temporal.client;
  const watchId = workflowIds.reclaimWatch(B);
  await client.workflow.start(nodeReclaimWatch, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: watchId,
    args: [{ node: B, targets: [A] } satisfies ReclaimWatchInput],
  });
  const sig = await runCli(cluster, ['--json', 'reclaim', B, '--deadline', '60s', '--reason', 'spot notice (s3 test)']);
  expect(sig.code).toBe(0);
  const state = await waitUntil(
    'the drain of B to finish',
    async () => {
      const s = await client.workflow.getHandle(watchId).query<ReclaimWatchState>('state');
      return s.history.length > 0 && s.status === 'watching' ? s : undefined;
    },
    120_000,
    500,
  );
  const rec = state.history[0]!;
  expect(rec).toMatchObject({ status: 'completed', migrated: 1, failed: 0, withinDeadline: true });
  const drain = (await client.workflow.getHandle(rec.drainWorkflowId).result()) as DrainResult;
  expect(drain.containers.map((c) => `${c.namespace}/${c.id}: ${c.outcome}${c.error ? ` (${c.error})` : ''}`)).toEqual([
    `default/${ID}: migrated`,
  ]);
  expect(drain.containers[0]).toMatchObject({ runningOn: A, checkpointedInTime: true });
  expect(await runningOn(cluster, ID)).toEqual([A]);
  await cluster.waitCount(A, ID, onB + 3);
  expect(cluster.nodes[A]!.readContainerFile(ID, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  expect(await cluster.nodes[B]!.containerd.listContainers()).not.toContain(ID);
  // Through the bucket again: a new checkpoint there, and no transfer activity in the drain.
  expect(currentInBucket()).not.toBe(migrated);
  const drainActivities = await activityTypes(rec.drainWorkflowId);
  expect(drainActivities).toEqual(expect.arrayContaining(['checkpointContainer', 'restoreContainer']));
  expect(drainActivities.filter((a) => TRANSFER_ACTIVITIES.includes(a))).toEqual([]);
  expectNothingOnTheNodes();
});
