import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { workflowIds } from '../../contract/names.js';
import type { ContainerSummary, ProtectedContainer, ProtectWatchState } from '../../contract/types.js';
import { CheckpointStore } from '../../core/store.js';
import { readLogLines } from '../support/arch-env.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { runCli, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';

/**
 * Periodic checkpoints on the real stack (issue 11): a worker, containerd,
 * arch-runc, CRIU and a Temporal dev server. The node's protect workflow,
 * which its worker starts, checkpoints a container with
 * ARCH_CHECKPOINT_INTERVAL=5s at that pace while it keeps counting;
 * `arch-cli protect --off` stops that, `--every` starts it again, a worker
 * restart keeps it; a bad interval starts the container with ARCH but
 * without periodic checkpoints, and says so in arch-runc's log.
 */
let cluster: TestCluster;
const N = 'per-a';

beforeAll(async () => {
  await cleanupStaleNodes();
  cluster = await startCluster('periodic', [N]);
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

afterEach(async () => {
  for (const id of await cluster.nodes[N]!.containerd.listContainers())
    await cluster.nodes[N]!.containerd.removeContainer(id).catch(() => undefined);
});

const storeOf = (id: string) => new CheckpointStore(path.join(cluster.dir, 'checkpoints', 'default', id));
const protectState = () =>
  cluster.temporal.client.workflow.getHandle(workflowIds.protect(N)).query<ProtectWatchState>('protectState');
const protectedOf = async (id: string): Promise<ProtectedContainer | undefined> =>
  (await protectState().catch(() => undefined))?.containers.find((c) => c.id === id);
const takenOf = async (id: string) => (await protectedOf(id))?.taken ?? 0;

test('ARCH_CHECKPOINT_INTERVAL=5s: checkpointed at that pace while it keeps counting, each freeze recorded; protect --off stops it, --every starts it again', async () => {
  const id = 'paced';
  await cluster.runCounter(N, id, ['ARCH_CHECKPOINT_INTERVAL=5s']);
  const cd = cluster.nodes[N]!.containerd;
  const pid = (await cd.task(id))!.pid;
  const seen = new Set<string>();
  const counts: number[] = [];
  // Three published checkpoints, each a new one; the counter counts on between them.
  await waitUntil(
    'three periodic checkpoints',
    async () => {
      const dir = await storeOf(id).current();
      if (dir && !seen.has(dir)) {
        seen.add(dir);
        counts.push(cluster.count(N, id) ?? -1);
      }
      return seen.size >= 3 ? true : undefined;
    },
    60_000,
    200,
  );
  expect(await cd.task(id)).toMatchObject({ status: 'RUNNING', pid }); // never stopped, never restarted
  for (let i = 1; i < counts.length; i++) expect(counts[i]!).toBeGreaterThan(counts[i - 1]!);
  const m = await storeOf(id).readManifest();
  expect(m).toMatchObject({ leaveRunning: true, freezeMs: expect.any(Number) as number });
  const p = await protectedOf(id);
  expect(p).toMatchObject({ intervalMs: 5000, source: 'container', last: { ok: true } });
  expect(p!.last!.freezeMs).toEqual(expect.any(Number));
  // The pace: started about 5 s apart (jitter ±10 %, never closer than the interval's minimum).
  const published = readLogLines(cluster.workers[N]!.archLog).filter(
    (l) => l.msg === 'checkpoint published' && l.container === id,
  );
  expect(published.length).toBeGreaterThanOrEqual(3);
  const publishedAt = published.map((l) => Date.parse(String(l.time)));
  const gaps = publishedAt.slice(1).map((t, i) => t - publishedAt[i]!);
  const medianGap = [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)]!;
  expect(medianGap).toBeGreaterThanOrEqual(4500);
  expect(medianGap).toBeLessThanOrEqual(10_000); // the interval, not interval + checkpoint time + a gap
  expect(published.every((l) => typeof l.freezeMs === 'number')).toBe(true);

  const ls = await runCli(cluster, ['--json', 'ls', '--node', N]);
  expect(ls.code).toBe(0);
  const row = (ls.json as { containers: ContainerSummary[] }).containers.find((c) => c.id === id)!;
  expect(row.checkpointIntervalMs).toBe(5000);
  expect(row.checkpoint).toMatchObject({
    sizeBytes: expect.any(Number) as number,
    freezeMs: expect.any(Number) as number,
  });
  const human = await runCli(cluster, ['ls', '--node', N]);
  expect(human.stdout).toMatch(/FROZEN/);
  expect(human.stdout).toMatch(new RegExp(`default/${id} .* ago .*\\b5 s\\b`));

  const off = await runCli(cluster, ['protect', `default/${id}`, '--off', '--node', N]);
  expect({ code: off.code, stderr: off.stderr }).toEqual({ code: 0, stderr: '' });
  expect(off.stdout).toContain(`default/${id} on ${N}: no periodic checkpoints (protect --off)`);
  await waitUntil(
    'no checkpoint in flight',
    async () => ((await protectState()).running === 0 ? true : undefined),
    30_000,
  );
  const before = await takenOf(id);
  const dirBefore = await storeOf(id).current();
  const at = cluster.count(N, id)!;
  await sleep(12_000); // more than two intervals
  expect(await takenOf(id)).toBe(before);
  expect(await storeOf(id).current()).toBe(dirBefore);
  expect(cluster.count(N, id)!).toBeGreaterThan(at);

  const on = await runCli(cluster, ['--json', 'protect', `default/${id}`, '--every', '5s', '--node', N]);
  expect(on.code).toBe(0);
  expect(on.json).toMatchObject({ intervalMs: 5000, source: 'protect' });
  await waitUntil(
    'a checkpoint after protect --every',
    async () => ((await takenOf(id)) > before ? true : undefined),
    30_000,
  );

  const bad = await runCli(cluster, ['protect', `default/${id}`, '--every', '2', '--node', N]);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toContain('--every: "2" is not a duration. Fix:');
  const unknown = await runCli(cluster, ['protect', 'default/nope', '--every', '1m', '--node', N]);
  expect(unknown.code).toBe(2);
  expect(unknown.stderr).toMatch(/default\/nope is not an ARCH container on node per-a/);
}, 180_000);

test('a worker restart keeps the schedule: the same workflow goes on checkpointing', async () => {
  const id = 'kept';
  await cluster.runCounter(N, id, ['ARCH_CHECKPOINT_INTERVAL=5s']);
  await waitUntil('a first periodic checkpoint', async () => ((await takenOf(id)) >= 1 ? true : undefined), 60_000);
  const handle = cluster.temporal.client.workflow.getHandle(workflowIds.protect(N));
  const runBefore = (await handle.describe()).runId;
  expect(await cluster.workers[N]!.stop(60_000)).toBe(0);
  await sleep(2000);
  await cluster.startWorker(N);
  const after = await takenOf(id);
  await waitUntil(
    'two more checkpoints after the restart',
    async () => ((await takenOf(id)) >= after + 2 ? true : undefined),
    60_000,
  );
  const d = await handle.describe();
  expect(d.status.name).toBe('RUNNING');
  expect(d.runId).toBe(runBefore); // the same run: nothing started over
  const m = await storeOf(id).readManifest();
  expect(m?.freezeMs).toEqual(expect.any(Number));
}, 180_000);

test.each(['0', '-1s', '2', '1ms'])(
  'ARCH_CHECKPOINT_INTERVAL=%j: the container starts with ARCH, without periodic checkpoints; the log names the field and the fix',
  async (v) => {
    const id = `bad-${v.replace(/[^a-z0-9]/g, 'x')}`;
    await cluster.runCounter(N, id, [`ARCH_CHECKPOINT_INTERVAL=${v}`]);
    await cluster.waitCount(N, id, 3, 30_000);
    const lines = readLogLines(cluster.archRuncLog).filter(
      (l) => l.container === id && l.field === 'ARCH_CHECKPOINT_INTERVAL',
    );
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      msg: 'invalid ARCH_CHECKPOINT_INTERVAL; the container starts with ARCH but without periodic checkpoints',
      fix: 'set ARCH_CHECKPOINT_INTERVAL to a duration of at least 5s with its unit, e.g. 30s, 10m or 1h',
    });
    expect(String(lines[0]!.err)).toContain(`ARCH_CHECKPOINT_INTERVAL: "${v}"`);
    // Listed by the protect workflow as an ARCH container, with no interval; no checkpoint comes.
    await waitUntil('the protect workflow lists it', async () => ((await protectedOf(id)) ? true : undefined), 30_000);
    await sleep(7000);
    expect(await protectedOf(id)).toMatchObject({ taken: 0 });
    expect((await protectedOf(id))?.intervalMs).toBeUndefined();
    expect(await storeOf(id).current()).toBeNull();
    // ARCH still handles it: a checkpoint on demand works.
    const ls = await runCli(cluster, ['--json', 'ls', '--node', N]);
    expect((ls.json as { containers: ContainerSummary[] }).containers.map((c) => c.id)).toContain(id);
  },
  60_000,
);
