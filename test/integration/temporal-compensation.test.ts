import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ApplicationFailure, CancelledFailure, WorkflowFailedError } from '@temporalio/client';
import { FailureType } from '../../contract/failures.js';
import { WORKFLOW_TASK_QUEUE } from '../../contract/names.js';
import type { DrainResult, MigrateInput, MigrateResult } from '../../contract/types.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import {
  outcome,
  runCli,
  runningOn,
  startCluster,
  stopAllTemporal,
  waitUntil,
  type TestCluster,
} from '../support/temporal.js';
import { migrateContainer } from '../../workflows/index.js';

/**
 * A restore that fails on the target: node B's arch-runc is given a CRIU
 * that always fails, so every restore there falls back to a fresh start,
 * which the restore activity detects and removes. After its retries the
 * migration compensates: the container is restored on A from the same
 * checkpoint and continues from where it was.
 */
let cluster: TestCluster;
const A = 'comp-a';
const B = 'comp-b';

beforeAll(async () => {
  await cleanupStaleNodes();
  cluster = await startCluster('compensation', [A, B], { nodeSettings: { [B]: { ARCH_CRIU: '/bin/false' } } });
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

test('restore fails on B → restored on A, counter continues, no copy on B', async () => {
  await cluster.runCounter(A, 'victim', ['COUNTER_START_FILES=1']);
  const before = await cluster.waitCount(A, 'victim', 20);
  const handle = await cluster.temporal.client.workflow.start(migrateContainer, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: `test-comp-${randomBytes(3).toString('hex')}`,
    args: [{ namespace: 'default', id: 'victim', from: A, to: B, restoreAttempts: 2 } satisfies MigrateInput],
  });
  const o = await outcome<MigrateResult>(handle, 180_000);
  expect(o.ok).toBe(false);
  const failure = (o as unknown as { error: WorkflowFailedError }).error.cause as ApplicationFailure;
  expect(failure).toBeInstanceOf(ApplicationFailure);
  expect(failure.type).toBe(FailureType.compensated);
  expect(failure.nonRetryable).toBe(true);
  expect(failure.message).toMatch(/could not move to comp-b .*started fresh by arch-runc.*; it runs again on comp-a/);
  const result = failure.details?.[0] as MigrateResult;
  expect(result.runningOn).toBe(A);
  expect(result.phases.map((p) => p.phase)).toEqual(
    expect.arrayContaining(['checkpoint', 'remove-target-copy', 'compensate-restore']),
  );

  // Restored, not restarted: right away the count is where it was, then it goes on.
  expect(await runningOn(cluster, 'victim')).toEqual([A]);
  const now = cluster.count(A, 'victim')!;
  expect(now).toBeGreaterThanOrEqual(before);
  await cluster.waitCount(A, 'victim', now + 3);
  expect(cluster.nodes[A]!.readContainerFile('victim', '/state/starts')).toBe('start\n');
  expect(await cluster.nodes[B]!.containerd.listContainers()).not.toContain('victim');
  // arch-runc on B said why it started the container fresh.
  const log = fs
    .readFileSync(cluster.archRuncLog, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  expect(log.some((l) => l.container === 'victim' && l.reason === 'restore-failed')).toBe(true);
});

test('the CLI reports a compensated migration with exit code 4', async () => {
  const before = cluster.count(A, 'victim')!;
  const r = await runCli(cluster, ['migrate', 'default/victim', '--from', A, '--to', B, '--wait']);
  expect(r.code).toBe(4);
  expect(r.stderr).toMatch(/it runs again on comp-a/);
  expect(await runningOn(cluster, 'victim')).toEqual([A]);
  expect(cluster.count(A, 'victim')!).toBeGreaterThanOrEqual(before);
});

test('migration cancelled during the checkpoint: the container keeps running on A, nothing half-published', async () => {
  await cluster.runCounter(A, 'cancelme', ['COUNTER_MEM_MB=384']);
  const before = await cluster.waitCount(A, 'cancelme', 3, 60_000);
  const handle = await cluster.temporal.client.workflow.start(migrateContainer, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: `test-cancel-${randomBytes(3).toString('hex')}`,
    args: [{ namespace: 'default', id: 'cancelme', from: A, to: B } satisfies MigrateInput],
  });
  await waitUntil(
    'the checkpoint activity to run',
    async () => {
      const d = await handle.describe();
      return (d.raw.pendingActivities ?? []).some(
        (a) => a.activityType?.name === 'checkpointContainer' && Number(a.state) === 2,
      );
    },
    60_000,
    20,
  );
  await handle.cancel();
  const o = await outcome(handle, 120_000);
  expect(o.ok).toBe(false);
  expect((o as unknown as { error: WorkflowFailedError }).error.cause).toBeInstanceOf(CancelledFailure);
  expect((await handle.describe()).status.name).toBe('CANCELLED');
  // Thawed (dump aborted) or restored (dump had finished): either way it runs on A only, and goes on.
  expect(await runningOn(cluster, 'cancelme')).toEqual([A]);
  const now = await cluster.waitCount(A, 'cancelme', before);
  await cluster.waitCount(A, 'cancelme', now + 3);
  const store = path.join(cluster.dir, 'checkpoints', 'default', 'cancelme');
  const left = fs.existsSync(store) ? fs.readdirSync(store).filter((n) => n.startsWith('.staging')) : [];
  expect(left).toEqual([]);
});

test('a drain whose target cannot restore puts the container back on the drained node', async () => {
  const r = await runCli(cluster, ['--json', 'drain', A, '--to', B, '--deadline', '90s', '--wait']);
  expect(r.code).toBe(1);
  expect(r.stderr).toBe('');
  const res = r.json as DrainResult;
  expect(res.containers.map((c) => [c.id, c.outcome, c.runningOn]).sort()).toEqual([
    ['cancelme', 'compensated', A],
    ['victim', 'compensated', A],
  ]);
  for (const id of ['victim', 'cancelme']) expect(await runningOn(cluster, id)).toEqual([A]);
  const human = await runCli(cluster, ['status', '--operation', 'drain']);
  expect(human.stdout).toMatch(/arch-drain-comp-a-.*drain.*COMPLETED/);
});
