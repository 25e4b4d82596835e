import { randomBytes } from 'node:crypto';
import { WORKFLOW_TASK_QUEUE } from '../../core/temporal/names.js';
import { attributePairs } from '../../core/temporal/search-attributes.js';
import type { MigrateResult } from '../../workflows/types.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { outcome, runningOn, startCluster, stopAllTemporal, type TestCluster } from '../support/temporal.js';

/**
 * migrateContainer on the real stack: Temporal dev server, two containerd
 * nodes, an arch-worker per node, arch-runc restoring on the target.
 */

let cluster: TestCluster;

beforeAll(async () => {
  await cleanupStaleNodes();
  // The image only on node-a: the migration must ship it to node-b first.
  cluster = await startCluster('migrate', ['mig-a', 'mig-b'], { imageOn: ['mig-a'] });
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

function startMigrate(id: string, from: string, to: string) {
  const ref = { namespace: 'default', id };
  return cluster.temporal.client.workflow.start('migrateContainer', {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: `test-migrate-${id}-${randomBytes(3).toString('hex')}`,
    args: [{ ...ref, from, to }],
    typedSearchAttributes: attributePairs({ container: `default/${id}`, namespace: 'default', sourceNode: from, targetNode: to, operation: 'migrate', phase: 'queued' }) as never,
  });
}

test('a counter moves mig-a → mig-b and continues above its checkpointed count', async () => {
  await cluster.runCounter('mig-a', 'counter1', ['COUNTER_START_FILES=1']);
  const before = await cluster.waitCount('mig-a', 'counter1', 5);
  const handle = await startMigrate('counter1', 'mig-a', 'mig-b');
  const r = await outcome<MigrateResult>(handle, 120_000);
  if (!r.ok) throw r.error;
  expect(r.value.outcome).toBe('migrated');
  expect(r.value.runningOn).toBe('mig-b');
  expect(await runningOn(cluster, 'counter1')).toEqual(['mig-b']);
  // Continues from where it was, not from zero.
  const after = await cluster.waitCount('mig-b', 'counter1', before + 3);
  expect(after).toBeGreaterThan(before);
  expect(await cluster.nodes['mig-a']!.containerd.listContainers()).not.toContain('counter1');
  // Every phase is accounted for.
  expect(r.value.phases.map((p) => p.phase)).toEqual(expect.arrayContaining(['describe', 'check-target', 'image-import', 'checkpoint', 'transfer', 'restore', 'cleanup']));
  console.log(JSON.stringify({ totalMs: r.value.totalMs, activityMs: r.value.activityMs, phases: r.value.phases }));
});
