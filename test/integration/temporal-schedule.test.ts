import { setTimeout as sleep } from 'node:timers/promises';
import type { ArchScheduleInfo } from '../../cli/commands/schedule.js';
import type { StatusRow } from '../../cli/commands/status.js';
import type { PauseResult } from '../../contract/types.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { runCli, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';

/**
 * Calendar pause/resume through Temporal Schedules: `arch-cli schedule
 * create` makes the two Schedules; triggering them pauses the container
 * (checkpoint + stop) and resumes it (restore), and its counter continues.
 */
let cluster: TestCluster;
const N = 'sch-a';

beforeAll(async () => {
  await cleanupStaleNodes();
  cluster = await startCluster('schedule', [N]);
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

async function lastCompleted(operation: 'pause' | 'resume', after: number): Promise<StatusRow> {
  return waitUntil(
    `a completed ${operation} workflow`,
    async () => {
      const r = await runCli(cluster, ['--json', 'status', '--operation', operation, '--node', N]);
      return (r.json as StatusRow[]).find((w) => w.status === 'COMPLETED' && Date.parse(w.startTime) >= after);
    },
    90_000,
    500,
  );
}

test('schedule create / ls / trigger pause / trigger resume / pause / rm', async () => {
  await cluster.runCounter(N, 'nightly-job', ['COUNTER_START_FILES=1']);
  await cluster.runCounter(N, 'other-job');
  await cluster.waitCount(N, 'nightly-job', 5);

  const c = await runCli(cluster, [
    '--json',
    'schedule',
    'create',
    'nightly',
    '--node',
    N,
    '--pause',
    '0 3 * * *',
    '--resume',
    'mon-fri 06:30',
    '--tz',
    'Europe/Paris',
    '--ids',
    'nightly-job',
    // The containerd namespace (issue 13: this once moved the schedules to Temporal namespace "default").
    '--namespace',
    'default',
  ]);
  expect(c.stderr).toBe('');
  expect(c.code).toBe(0);
  expect(c.json).toMatchObject({
    name: 'nightly',
    pause: '0 3 * * *',
    resume: '30 6 * * 1-5',
    timeZone: 'Europe/Paris',
  });
  const again = await runCli(cluster, [
    'schedule',
    'create',
    'nightly',
    '--node',
    N,
    '--pause',
    '0 3 * * *',
    '--resume',
    '0 4 * * *',
  ]);
  expect(again.code).toBe(2);
  expect(again.stderr).toMatch(/already exists/);

  const ls = await runCli(cluster, ['--json', 'schedule', 'ls']);
  const list = ls.json as ArchScheduleInfo[];
  expect(list.map((s) => [s.name, s.action, s.calendar, s.paused])).toEqual([
    ['nightly', 'pause', '0 3 * * *', false],
    ['nightly', 'resume', '30 6 * * 1-5', false],
  ]);
  expect(list[0]!.nextRuns.length).toBeGreaterThan(0);
  // --temporal-namespace is honoured, over TEMPORAL_NAMESPACE.
  const there = await runCli(
    cluster,
    ['--json', '--temporal-namespace', cluster.temporal.namespace, 'schedule', 'ls'],
    {
      TEMPORAL_NAMESPACE: 'arch-no-such-namespace',
    },
  );
  expect((there.json as ArchScheduleInfo[]).map((s) => s.name)).toEqual(['nightly', 'nightly']);
  const elsewhere = await runCli(cluster, ['schedule', 'ls', '--temporal-namespace', 'arch-no-such-namespace']);
  expect(elsewhere.code).not.toBe(0);
  expect(elsewhere.stderr).toMatch(/arch-no-such-namespace/);

  // Pause now.
  const t1 = Date.now() - 1000;
  expect((await runCli(cluster, ['schedule', 'trigger', 'nightly', '--action', 'pause'])).code).toBe(0);
  const paused = await lastCompleted('pause', t1);
  const pr = (await runCli(cluster, ['--json', 'status', paused.workflowId])).json as { result: PauseResult };
  expect(pr.result.containers).toEqual([
    expect.objectContaining({ namespace: 'default', id: 'nightly-job', outcome: 'paused' }),
  ]);
  expect((await cluster.nodes[N]!.containerd.task('nightly-job'))?.status).toBe('STOPPED');
  expect((await cluster.nodes[N]!.containerd.task('other-job'))?.status).toBe('RUNNING'); // not selected
  const frozen = cluster.count(N, 'nightly-job')!;
  await sleep(1000);
  expect(cluster.count(N, 'nightly-job')).toBe(frozen);
  const lsNode = await runCli(cluster, ['--json', 'ls', '--node', N]);
  const row = (lsNode.json as { containers: { id: string; status: string; checkpoint?: unknown }[] }).containers.find(
    (x) => x.id === 'nightly-job',
  );
  expect(row?.checkpoint).toBeDefined();
  expect(row?.status).not.toBe('running');

  // Resume now: restored, the count goes on from where it was.
  const t2 = Date.now() - 1000;
  expect((await runCli(cluster, ['schedule', 'trigger', 'nightly', '--action', 'resume'])).code).toBe(0);
  await lastCompleted('resume', t2);
  expect((await cluster.nodes[N]!.containerd.task('nightly-job'))?.status).toBe('RUNNING');
  const resumedAt = cluster.count(N, 'nightly-job')!;
  expect(resumedAt).toBeGreaterThanOrEqual(frozen);
  await cluster.waitCount(N, 'nightly-job', frozen + 3);
  expect(cluster.nodes[N]!.readContainerFile('nightly-job', '/state/starts')).toBe('start\n');

  // Schedule-level pause/unpause and removal.
  expect((await runCli(cluster, ['schedule', 'pause', 'nightly'])).code).toBe(0);
  expect(
    ((await runCli(cluster, ['--json', 'schedule', 'ls'])).json as ArchScheduleInfo[]).every((s) => s.paused),
  ).toBe(true);
  expect((await runCli(cluster, ['schedule', 'unpause', 'nightly'])).code).toBe(0);
  expect((await runCli(cluster, ['schedule', 'rm', 'nightly'])).code).toBe(0);
  expect((await runCli(cluster, ['--json', 'schedule', 'ls'])).json).toEqual([]);
  const gone = await runCli(cluster, ['schedule', 'trigger', 'nightly', '--action', 'pause']);
  expect(gone.code).toBe(2);
  expect(gone.stderr).toMatch(/no ARCH schedule named "nightly"/);
});

test('pause and resume by hand, with --wait', async () => {
  const p = await runCli(cluster, ['--json', 'pause', '--node', N, 'other-job', '--wait']);
  expect(p.code).toBe(0);
  expect((p.json as PauseResult).containers).toEqual([expect.objectContaining({ id: 'other-job', outcome: 'paused' })]);
  const r = await runCli(cluster, ['--json', 'resume', '--node', N, '--wait']);
  expect(r.code).toBe(0);
  expect((r.json as PauseResult).containers).toEqual([
    expect.objectContaining({ id: 'other-job', outcome: 'resumed' }),
  ]);
  expect((await cluster.nodes[N]!.containerd.task('other-job'))?.status).toBe('RUNNING');
});
