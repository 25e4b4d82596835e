import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { FailureType } from '../../contract/failures.js';
import { workflowOverhead } from '../../temporal/history.js';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import { attributePairs, SA } from '../../contract/search-attributes.js';
import type { MigrateInput, MigrateResult, ProtectWatchState } from '../../contract/types.js';
import { readLogLines } from '../support/arch-env.js';
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
 * migrateContainer on the real stack: a Temporal dev server, two containerd
 * nodes, an arch-worker process per node, arch-runc restoring on the target.
 */

let cluster: TestCluster;
const A = 'mig-a';
const B = 'mig-b';

beforeAll(async () => {
  await cleanupStaleNodes();
  // The image only on node A: the first migration must ship it to B first.
  // B's worker keeps restored containers under watch for 3 s, which gives the
  // worker-kill test a window in the middle of the restore activity.
  cluster = await startCluster('migrate', [A, B], { imageOn: [A] });
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

function startMigrate(id: string, from: string, to: string, extra: Partial<MigrateInput> = {}) {
  return cluster.temporal.client.workflow.start(migrateContainer, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: `test-migrate-${id}-${randomBytes(3).toString('hex')}`,
    args: [{ namespace: 'default', id, from, to, ...extra } satisfies MigrateInput],
    typedSearchAttributes: attributePairs({
      container: `default/${id}`,
      namespace: 'default',
      sourceNode: from,
      targetNode: to,
      operation: 'migrate',
      phase: 'queued',
    }),
  });
}

test('a counter moves A → B (image shipped), continues above its checkpointed count; A no longer runs it', async () => {
  await cluster.runCounter(A, 'counter1', ['COUNTER_START_FILES=1']);
  const before = await cluster.waitCount(A, 'counter1', 5);
  const r = await runCli(cluster, ['--json', 'migrate', 'default/counter1', '--from', A, '--to', B, '--wait']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const res = r.json as MigrateResult & { workflowId: string };
  expect(res.outcome).toBe('migrated');
  expect(res.runningOn).toBe(B);
  expect(await runningOn(cluster, 'counter1')).toEqual([B]);
  const after = await cluster.waitCount(B, 'counter1', before + 3);
  expect(after).toBeGreaterThan(before);
  // The writable layer came along: the file the counter created before the checkpoint.
  expect(cluster.nodes[B]!.readContainerFile('counter1', '/state/created.txt')).toBe('created before checkpoint\n');
  expect(await cluster.nodes[A]!.containerd.listContainers()).not.toContain('counter1');
  // describe (A) and check-target (B) run in parallel: either may finish first.
  const phases = res.phases.map((p) => p.phase);
  expect(phases.slice(0, 2).sort()).toEqual(['check-target', 'describe']);
  expect(phases.slice(2)).toEqual(['image-export', 'image-import', 'checkpoint', 'transfer', 'restore', 'cleanup']);
  // Visible in Temporal with its search attributes, final phase "done".
  const d = await cluster.temporal.client.workflow.getHandle(res.workflowId).describe();
  expect(d.typedSearchAttributes.get(SA.phase)).toBe('done');
  expect(d.typedSearchAttributes.get(SA.container)).toBe('default/counter1');
  expect(d.typedSearchAttributes.get(SA.targetNode)).toBe(B);
  const status = await runCli(cluster, ['--json', 'status', '--container', 'default/counter1']);
  expect(status.code).toBe(0);
  expect(
    (status.json as { workflowId: string; status: string }[]).find((w) => w.workflowId === res.workflowId)?.status,
  ).toBe('COMPLETED');
  const o = await workflowOverhead(cluster.temporal.client.workflow.getHandle(res.workflowId));
  console.log(
    `migrate A→B from history: total ${o.totalMs} ms, inside activities ${o.activityMs} ms, orchestration overhead ${o.overheadMs} ms`,
    JSON.stringify(o.activities),
  );
  expect(o.overheadMs).toBeLessThan(o.totalMs);
  if (process.env.DEBUG_HISTORY) {
    const h = await cluster.temporal.client.workflow.getHandle(res.workflowId).fetchHistory();
    const t0 = Number(h.events![0]!.eventTime!.seconds) * 1000 + Math.floor(h.events![0]!.eventTime!.nanos! / 1e6);
    console.log(
      h
        .events!.map(
          (e) => `${Number(e.eventTime!.seconds) * 1000 + Math.floor(e.eventTime!.nanos! / 1e6) - t0} ${e.eventType}`,
        )
        .join('\n'),
    );
  }
});

test("B's worker killed in the middle of the restore: the workflow completes once it is back, one running copy", async () => {
  // Restart B's worker with a long post-restore watch: the restore activity
  // then certainly runs while we kill it.
  await cluster.workers[B]!.stop();
  await cluster.startWorker(B, ['--verify-stable', '4s']);
  await cluster.runCounter(A, 'counter2');
  const before = await cluster.waitCount(A, 'counter2', 3);
  const handle = await startMigrate('counter2', A, B);
  // The container already runs on B (restored), the activity is still verifying it.
  await waitUntil(
    'counter2 restored on B',
    async () => (await cluster.nodes[B]!.containerd.task('counter2'))?.status === 'RUNNING',
    60_000,
    50,
  );
  await cluster.workers[B]!.kill();
  await sleep(2000);
  expect((await handle.describe()).status.name).toBe('RUNNING');
  await cluster.startWorker(B);
  const r = await outcome<MigrateResult>(handle, 120_000);
  if (!r.ok) throw r.error;
  expect(r.value.outcome).toBe('migrated');
  expect(await runningOn(cluster, 'counter2')).toEqual([B]);
  await cluster.waitCount(B, 'counter2', before + 3);
});

describe('bad input: clear error, non-retryable failure, nothing changed', () => {
  beforeAll(async () => {
    await cluster.runCounter(A, 'stays');
    await cluster.waitCount(A, 'stays', 2);
  });

  async function unchanged(): Promise<void> {
    expect(await runningOn(cluster, 'stays')).toEqual([A]);
    expect(await cluster.nodes[B]!.containerd.listContainers()).not.toContain('stays');
  }

  test('unknown container', async () => {
    const r = await runCli(cluster, ['migrate', 'default/nope', '--from', A, '--to', B]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/default\/nope is not a container on node mig-a/);
    const handle = await startMigrate('nope', A, B);
    const o = await outcome(handle, 30_000);
    expect(o.ok).toBe(false);
    const cause = (o as unknown as { error: WorkflowFailedError }).error.cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect((cause as ApplicationFailure).type).toBe(FailureType.containerNotFound);
    expect((cause as ApplicationFailure).nonRetryable).toBe(true);
    await unchanged();
  });

  test('malformed container ref and same node twice', async () => {
    const r1 = await runCli(cluster, ['migrate', 'no-namespace', '--from', A, '--to', B]);
    expect(r1.code).toBe(2);
    expect(r1.stderr).toMatch(/has no namespace.*Fix: write it as NAMESPACE\/ID/);
    const r2 = await runCli(cluster, ['migrate', 'default/stays', '--from', A, '--to', A]);
    expect(r2.code).toBe(2);
    const r3 = await runCli(cluster, ['migrate', 'default/stays', '--from', A, '--to', 'bad/node']);
    expect(r3.code).toBe(2);
    await unchanged();
  });

  test('unknown node (no worker polls its queue)', async () => {
    const r = await runCli(cluster, ['--json', 'migrate', 'default/stays', '--from', A, '--to', 'ghost']);
    expect(r.code).toBe(3);
    expect((r.json as { error: string }).error).toMatch(/node "ghost" has no worker/);
    // The workflow itself, started past the CLI's check, fails fast and for good.
    const handle = await startMigrate('stays', A, 'ghost', { nodeStartTimeoutMs: 2000 });
    const o = await outcome(handle, 60_000);
    expect(o.ok).toBe(false);
    const cause = (o as unknown as { error: WorkflowFailedError }).error.cause as ApplicationFailure;
    expect(cause.type).toBe(FailureType.nodeUnavailable);
    expect(cause.nonRetryable).toBe(true);
    expect(cause.message).toMatch(/no arch-worker polls task queue arch-node-ghost/);
    await unchanged();
  });

  test('node whose worker is stopped', async () => {
    await cluster.workers[B]!.stop();
    try {
      // The server remembers a poller for a while after its worker stopped, so
      // the CLI's quick check may pass; the workflow's scheduleToStart then fails it.
      const r = await runCli(cluster, [
        'migrate',
        'default/stays',
        '--from',
        A,
        '--to',
        B,
        '--wait',
        '--node-timeout',
        '4s',
      ]);
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(
        /node "mig-b" has no worker|node mig-b did not answer within 4 s: no arch-worker polls task queue arch-node-mig-b/,
      );
      await unchanged();
    } finally {
      await cluster.startWorker(B);
    }
  });

  test('a different container of the same name on the target', async () => {
    await cluster.runCounter(A, 'clash');
    const b = cluster.nodes[B]!.containerd;
    await b.run({ image: 'localhost/arch-test/counter:1', id: 'clash', detach: true }); // plain runc, no ARCH
    await b.waitStatus('clash', 'RUNNING');
    await b.taskKill('clash', 'SIGKILL');
    await b.waitStatus('clash', 'STOPPED');
    const r = await runCli(cluster, ['migrate', 'default/clash', '--from', A, '--to', B]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/already has a container default\/clash that is not ARCH-enabled; refusing to replace it/);
    expect(await runningOn(cluster, 'clash')).toEqual([A]);
    expect(await b.listContainers()).toContain('clash');
    await b.removeContainer('clash');
  });

  test('bad calendar and time zone', async () => {
    const r = await runCli(cluster, [
      'schedule',
      'create',
      'x',
      '--node',
      A,
      '--pause',
      '25:00',
      '--resume',
      '0 6 * * *',
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--pause: "25:00": hour "25" is not in 0-23/);
    const r2 = await runCli(cluster, [
      'schedule',
      'create',
      'x',
      '--node',
      A,
      '--pause',
      '0 22 * * *',
      '--resume',
      '0 6 * * *',
      '--tz',
      'Mars/Olympus',
    ]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/--tz: "Mars\/Olympus" is not a time zone/);
    const ls = await runCli(cluster, ['--json', 'schedule', 'ls']);
    expect(ls.json).toEqual([]);
  });
});

test('an `arch-cli protect` choice moves with its container: --every 5s on A, migrated to B, B checkpoints it at that pace', async () => {
  const id = 'guarded';
  const protectedOn = async (node: string) =>
    (
      await cluster.temporal.client.workflow
        .getHandle(workflowIds.protect(node))
        .query<ProtectWatchState>('protectState')
        .catch(() => undefined)
    )?.containers.find((c) => c.id === id);
  await cluster.runCounter(A, id); // no ARCH_CHECKPOINT_INTERVAL: only the protect choice asks for checkpoints
  await cluster.waitCount(A, id, 2);
  const on = await runCli(cluster, ['--json', 'protect', `default/${id}`, '--every', '5s', '--node', A]);
  expect(on.code).toBe(0);
  expect(on.json).toMatchObject({ intervalMs: 5000, source: 'protect' });
  const r = await runCli(cluster, ['--json', 'migrate', `default/${id}`, '--from', A, '--to', B, '--wait']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(await runningOn(cluster, id)).toEqual([B]);
  const onB = await waitUntil(
    "B's protect workflow checkpoints it with the interval chosen on A",
    async () => {
      const p = await protectedOn(B);
      return p && p.taken >= 2 ? p : undefined;
    },
    90_000,
    500,
  );
  expect(onB).toMatchObject({ intervalMs: 5000, source: 'protect', last: { ok: true } });
  const published = readLogLines(cluster.workers[B]!.archLog).filter(
    (l) => l.msg === 'checkpoint published' && l.container === id,
  );
  expect(published.length).toBeGreaterThanOrEqual(2);
  await waitUntil('A no longer lists it', async () => ((await protectedOn(A)) ? undefined : true), 60_000, 500);
  const count = cluster.count(B, id)!;
  await cluster.waitCount(B, id, count + 2); // still counting on B: the checkpoints leave it running
  await cluster.nodes[B]!.containerd.removeContainer(id);
}, 240_000);

test('the workers log structured lines with container, namespace, node and phase', () => {
  const lines = fs
    .readFileSync(cluster.workers[A]!.archLog, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const ck = lines.find((l) => l.phase === 'checkpoint' && l.container === 'counter1');
  expect(ck).toMatchObject({ namespace: 'default', node: A });
});
