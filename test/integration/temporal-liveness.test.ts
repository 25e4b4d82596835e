import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { checkpointContainer } from '../../core/checkpoint.js';
import { createNodeContext } from '../../core/context.js';
import type { ClusterView, NodeLiveness } from '../../contract/liveness.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { readLease, type Lease } from '../../core/lease.js';
import { CheckpointStore } from '../../core/store.js';
import { trustOf } from '../../core/trust.js';
import { thisCpu } from '../../core/cpu-features.js';
import { readManifest, writeManifest } from '../support/checkpoint-copies.js';
import { readLogLines } from '../support/arch-env.js';
import { startTcpLink } from '../support/tcp-link.js';
import { runCli, runningOn, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';

/**
 * Node liveness on the real stack: two containerd nodes, a worker each, a
 * Temporal dev server. Every worker reports its node to the cluster
 * workflow; `arch-cli nodes` lists them with their ARCH containers and the
 * age of each last checkpoint; a node whose worker dies is declared dead
 * after ARCH_NODE_DEAD_AFTER.
 */
let cluster: TestCluster;
const A = 'live-a';
const B = 'live-b';
const C = 'live-c';
/** Each node's own settings: its name (arch-runc records it in the job's lease) and a short dead-after. */
const settingsOf = (name: string) => ({ ARCH_NODE_NAME: name, ARCH_NODE_DEAD_AFTER: '10s' });

/** A fresh cluster per test: a test that kills a node must not leave the next one without it. */
beforeEach(async () => {
  await cleanupStaleNodes();
  cluster = await startCluster('liveness', [A, B, C], {
    nodeSettings: { [A]: settingsOf(A), [B]: settingsOf(B), [C]: settingsOf(C) },
  });
});

afterEach(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

const sharedEnv = () => [
  `ARCH_SHAREDFS_HOST_PATH=${path.join(cluster.dir, 'shared')}`,
  'ARCH_WORKDIR_CONTAINER_PATH=/work',
];

const nodeCtx = (node: string) =>
  createNodeContext('test', {
    ...process.env,
    ARCH_CONFIG: cluster.archConfig,
    ARCH_NODE_NAME: node,
    ARCH_RUNC_ROOT: cluster.nodes[node]!.runcRootBase,
  });

/** A checkpoint that leaves the container running (what periodic checkpoints will do). */
async function checkpointLeavingRunning(node: string, id: string): Promise<void> {
  await checkpointContainer(nodeCtx(node), {
    namespace: 'default',
    id,
    runcRoot: cluster.nodes[node]!.runcRoot('default'),
    leaveRunning: true,
  });
}

async function leaseOfJob(id: string): Promise<Lease | undefined> {
  const ctx = nodeCtx(A);
  const store = new CheckpointStore(path.join(cluster.dir, 'shared/checkpoint/default', id), {
    root: path.join(cluster.dir, 'shared'),
    field: 'ARCH_SHAREDFS_HOST_PATH',
  });
  const r = await readLease(store, trustOf(ctx.settings));
  if (r.problem) throw new Error(r.problem);
  return r.lease;
}

/** Power loss: the worker, containerd, the shims and every process of the containers, SIGKILLed at once. */
async function powerOff(node: string): Promise<void> {
  await Promise.all([cluster.workers[node]!.kill(), cluster.nodes[node]!.kill()]);
}

/**
 * Wait until the cluster has the result of a recovery of `node` declared
 * dead after `since` (a node whose worker restarts slowly may have been
 * declared dead before, with nothing to recover).
 */
async function recoveryOf(node: string, since: number, timeoutMs = 90_000): Promise<NodeLiveness> {
  return waitUntil(
    `recovery of ${node}`,
    async () =>
      (await nodes()).find((n) => n.node === node && n.recovery?.result && Date.parse(n.declaredDeadAt ?? '') >= since),
    timeoutMs,
    500,
  );
}

async function nodes(): Promise<NodeLiveness[]> {
  const r = await runCli(cluster, ['--json', 'nodes']);
  if (r.code !== 0) throw new Error(`arch-cli nodes exited ${r.code}: ${r.stderr}`);
  return (r.json as ClusterView).nodes;
}

test('arch-cli nodes: the nodes alive, the ARCH container with the age of its last checkpoint; a node whose worker dies is declared dead', async () => {
  const shared = path.join(cluster.dir, 'shared');
  await cluster.runCounter(A, 'job', sharedEnv());
  await cluster.waitCount(A, 'job', 3);
  await checkpointLeavingRunning(A, 'job');
  const seen = await waitUntil(
    'both nodes and the checkpointed container in arch-cli nodes',
    async () => {
      const ns = await nodes();
      const a = ns.find((n) => n.node === A);
      const job = a?.report.containers.find((c) => c.id === 'job');
      return ns.some((n) => n.node === B && n.status === 'alive') && job?.lastCheckpointAt ? ns : undefined;
    },
    30_000,
    500,
  );
  const a = seen.find((n) => n.node === A)!;
  expect(a.status).toBe('alive');
  expect(a.report.deadAfterMs).toBe(10_000);
  expect(a.report.fenceAfterMs).toBe(5_000);
  expect(a.report.freeMemBytes).toBeGreaterThan(0);
  expect(a.report.containers).toEqual([
    expect.objectContaining({
      namespace: 'default',
      id: 'job',
      status: 'running',
      mode: 'shared',
      manager: 'containerd',
      checkpointDir: path.join(shared, 'checkpoint/default/job'),
      spec: expect.objectContaining({ image: 'localhost/arch-test/counter:1' }),
    }),
  ]);
  const human = await runCli(cluster, ['nodes']);
  expect(human.code).toBe(0);
  expect(human.stdout).toMatch(new RegExp(`^${A}\\s+alive\\s+\\d+ s ago\\s+1$`, 'm'));
  expect(human.stdout).toMatch(/default\/job {2}running {2}shared {2}last checkpoint \d+ s ago/);

  // B's worker dies: after ARCH_NODE_DEAD_AFTER (10 s) without a report, B is declared dead.
  await cluster.workers[B]!.kill();
  const killedAt = Date.now();
  const dead = await waitUntil(
    `${B} declared dead`,
    async () => (await nodes()).find((n) => n.node === B && n.status === 'dead'),
    40_000,
    500,
  );
  const silentMs = Date.parse(dead.declaredDeadAt!) - Date.parse(dead.lastSeen);
  expect(silentMs).toBeGreaterThanOrEqual(10_000);
  expect(Date.now() - killedAt).toBeGreaterThanOrEqual(8_000);
  expect((await nodes()).find((n) => n.node === A)!.status).toBe('alive');
  expect((await runCli(cluster, ['nodes'])).stdout).toMatch(new RegExp(`^${B}\\s+DEAD since `, 'm'));

  // Its worker comes back: alive again, and the cluster says what happened.
  await cluster.startWorker(B);
  const back = await waitUntil(
    `${B} alive again`,
    async () => (await nodes()).find((n) => n.node === B && n.status === 'alive'),
    30_000,
    500,
  );
  expect(back.cameBackAt).toBeDefined();
  expect(back.events.join('\n')).toMatch(/came back after being declared dead/);
  await cluster.nodes[A]!.containerd.removeContainer('job');
});

test('power loss: node A loses power; its shared-mode job continues on a live node from its last checkpoint, its local-mode job is reported not recoverable, by name', async () => {
  // Its results file stays open on the shared work dir, written on after the checkpoint until A dies.
  await cluster.runCounter(A, 'job', [...sharedEnv(), 'COUNTER_INTERVAL_MS=100', 'COUNTER_OUT=/work/out.txt']);
  await cluster.runCounter(A, 'local-job', ['COUNTER_INTERVAL_MS=100']);
  // A job checkpointed on a CPU with instructions no live node has (an AVX-512 node among ones without).
  await cluster.runCounter(A, 'avx-job', [...sharedEnv(), 'COUNTER_INTERVAL_MS=100']);
  await cluster.waitCount(A, 'job', 5);
  // Read before the checkpoint: the checkpoint's count is at least this.
  const countAtCheckpoint = cluster.count(A, 'job')!;
  await checkpointLeavingRunning(A, 'job');
  await checkpointLeavingRunning(A, 'local-job');
  await checkpointLeavingRunning(A, 'avx-job');
  const lacking = ['avx512f', 'avx512bw', 'amx_tile'].find((f) => !thisCpu()!.features.includes(f))!;
  const avxCheckpoint = fs.realpathSync(path.join(cluster.dir, 'shared/checkpoint/default/avx-job/current'));
  // Signed by A, as a checkpoint another node of the cluster took on its CPU would be.
  const m = readManifest(avxCheckpoint);
  writeManifest(
    avxCheckpoint,
    { ...m, cpu: { ...m.cpu!, features: [...m.cpu!.features, lacking] } },
    trustOf(nodeCtx(A).settings),
  );
  // The three containers and their checkpoints are in A's report before it dies.
  await waitUntil(
    "A's report with the three checkpoints",
    async () => {
      const a = (await nodes()).find((n) => n.node === A);
      return (a?.report.containers ?? []).filter((c) => c.lastCheckpointAt).length === 3 || undefined;
    },
    30_000,
    500,
  );
  await cluster.waitCount(A, 'job', countAtCheckpoint + 10);
  const offAt = Date.now();
  await powerOff(A);

  const a = await recoveryOf(A, offAt);
  const byId = Object.fromEntries(a.recovery!.result!.containers.map((c) => [c.id, c]));
  expect(byId['local-job']).toEqual(
    expect.objectContaining({
      outcome: 'not-recoverable',
      reason: "not recoverable: checkpoint on the dead node's disk",
    }),
  );
  expect(byId.job).toEqual(expect.objectContaining({ outcome: 'recovered' }));
  // Not restored where it would die with SIGILL: every live node says why, and the fix is named.
  expect(byId['avx-job']).toEqual(expect.objectContaining({ outcome: 'failed' }));
  expect(byId['avx-job']!.reason).toMatch(
    new RegExp(
      `^no live node can take it \\(.*checkpoint unusable \\(cpu-features\\): the checkpoint was taken on a CPU with ${lacking}, which this node's CPU lacks`,
    ),
  );
  expect(byId['avx-job']!.reason).toContain("Fix: add a node whose CPU has the checkpoint's instructions");
  expect(await runningOn(cluster, 'avx-job')).toEqual([]);
  const on = byId.job!.runningOn!;
  expect([B, C]).toContain(on);
  expect(await runningOn(cluster, 'job')).toEqual([on]);
  expect(await runningOn(cluster, 'local-job')).toEqual([]);
  // Taken from A (revoked: its copy may never run again), then restored on the target: two generations on.
  expect(await leaseOfJob('job')).toEqual(
    expect.objectContaining({ state: 'running', node: on, generation: 3, reason: 'restored' }),
  );
  // Restored, not started fresh: the count goes on from the checkpoint's value.
  const after = await cluster.waitCount(on, 'job', countAtCheckpoint + 3);
  expect(after).toBeGreaterThan(countAtCheckpoint);
  // The results file was cut back to the checkpoint and written on from there: every value once, in order.
  const lines = fs
    .readFileSync(path.join(cluster.dir, 'shared/work/default/job/out.txt'), 'utf8')
    .split('\n')
    .slice(0, -1)
    .map(Number);
  expect(lines.length).toBeGreaterThan(countAtCheckpoint);
  expect(lines).toEqual(lines.map((_, i) => i + 1));
  expect(
    readLogLines(cluster.archRuncLog).some((l) => l.container === 'job' && l.msg === 'restored from checkpoint'),
  ).toBe(true);
  // arch-cli says it by name, and status shows the recovery workflows.
  const human = (await runCli(cluster, ['nodes'])).stdout;
  expect(human).toMatch(new RegExp(`^${A}\\s+DEAD since `, 'm'));
  expect(human).toContain(`default/local-job: not-recoverable (not recoverable: checkpoint on the dead node's disk)`);
  expect(human).toContain(`default/job: recovered on ${on}`);
  const status = await runCli(cluster, ['--json', 'status', '--operation', 'recover']);
  expect(status.json).toEqual(
    expect.arrayContaining([
      expect.objectContaining({ container: 'default/job', sourceNode: A, targetNode: on, phase: 'done' }),
    ]),
  );
  await cluster.nodes[on]!.containerd.removeContainer('job');
});

test('ownership: a job running on A is refused on B (clear error naming the owner, the generation and the fix; the containerd call fails); parked by a checkpoint that stops it, it restores on B, which takes it over one generation on', async () => {
  await cluster.runCounter(A, 'own', sharedEnv());
  await cluster.waitCount(A, 'own', 5);
  expect(await leaseOfJob('own')).toEqual(
    expect.objectContaining({ state: 'running', node: A, generation: 1, containerId: 'own' }),
  );
  await checkpointLeavingRunning(A, 'own');

  // A second copy on B while it runs on A: refused, nothing runs on B.
  const err = await cluster.runCounter(B, 'own', sharedEnv()).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  expect(err).toBeDefined();
  expect(await runningOn(cluster, 'own')).toEqual([A]);
  const refusal = readLogLines(cluster.archRuncLog).find(
    (l) => l.container === 'own' && l.reason === 'owned-elsewhere',
  );
  expect(refusal).toEqual(expect.objectContaining({ owner: A, generation: 1, level: 50 }));
  expect(String(refusal!.msg)).toMatch(
    new RegExp(`recorded as running on node ${A} \\(generation 1, .*refusing to start a second copy here\\. Fix: `),
  );
  await cluster.nodes[B]!.containerd.removeContainer('own').catch(() => undefined);

  // Checkpointed and stopped on A (finalize): parked, and any node that sees the storage may restore it.
  const before = cluster.count(A, 'own')!;
  await checkpointContainer(nodeCtx(A), {
    namespace: 'default',
    id: 'own',
    runcRoot: cluster.nodes[A]!.runcRoot('default'),
  });
  expect(await leaseOfJob('own')).toEqual(
    expect.objectContaining({ state: 'parked', node: A, generation: 1, reason: 'checkpointed' }),
  );
  await cluster.nodes[A]!.containerd.waitStatus('own', 'STOPPED', 10_000);
  await cluster.runCounter(B, 'own', sharedEnv());
  expect(await cluster.waitCount(B, 'own', before + 2)).toBeGreaterThan(before);
  expect(await leaseOfJob('own')).toEqual(
    expect.objectContaining({ state: 'running', node: B, generation: 2, reason: 'restored' }),
  );
  // The old container on A, started again: refused, the job stays on B alone.
  await cluster.nodes[A]!.containerd.removeContainer('own');
  await expect(cluster.runCounter(A, 'own', sharedEnv())).rejects.toThrow();
  expect(await runningOn(cluster, 'own')).toEqual([B]);
  await cluster.nodes[A]!.containerd.removeContainer('own').catch(() => undefined);
  await cluster.nodes[B]!.containerd.removeContainer('own');
});

test("partition: A loses Temporal while its job runs; it fences itself (the job stops on A) before another node restores it, and two copies never run (the job's own log on the shared work dir counts up without a repeat); A comes back: its old container is refused, arch-cli nodes says what happened", async () => {
  const link = await startTcpLink(cluster.temporal.env.TEMPORAL_ADDRESS!);
  let watching = true;
  let watcher: Promise<void> | undefined;
  try {
    // A's worker reaches Temporal only through the link.
    await cluster.workers[A]!.stop();
    await cluster.startWorker(A, [], { TEMPORAL_ADDRESS: link.address });
    await cluster.runCounter(A, 'part', [...sharedEnv(), 'COUNTER_LOG=/work/log', 'COUNTER_INTERVAL_MS=100']);
    await cluster.waitCount(A, 'part', 5);
    await checkpointLeavingRunning(A, 'part');
    await waitUntil(
      "A's report with the job's checkpoint",
      async () =>
        (await nodes()).find((n) => n.node === A)?.report.containers.find((c) => c.id === 'part' && c.lastCheckpointAt),
      30_000,
      500,
    );
    const copies: string[][] = [];
    watcher = (async () => {
      while (watching) {
        copies.push(await runningOn(cluster, 'part'));
        await sleep(100);
      }
    })();

    const cutAt = Date.now();
    link.cut();
    const a = await recoveryOf(A, cutAt);
    const job = a.recovery!.result!.containers.find((c) => c.id === 'part')!;
    expect(job.outcome).toBe('recovered');
    const on = job.runningOn!;
    const atRecovery = cluster.count(on, 'part')!;
    await cluster.waitCount(on, 'part', atRecovery + 5);
    watching = false;
    await watcher;
    // At no moment two copies.
    expect(copies.filter((c) => c.length > 1)).toEqual([]);
    expect(copies.some((c) => c.length === 1 && c[0] === on)).toBe(true);
    // A fenced itself before the target restored: its worker says so, earlier than the restore.
    const fenced = readLogLines(cluster.workers[A]!.archLog).find(
      (l) => l.container === 'part' && String(l.msg).startsWith('fenced: default/part'),
    );
    expect(fenced).toBeDefined();
    const restored = readLogLines(cluster.archRuncLog).find(
      (l) => l.container === 'part' && l.msg === 'restored from checkpoint',
    );
    expect(Date.parse(String(fenced!.time))).toBeLessThan(Date.parse(String(restored!.time)));
    // The job's own log: every value once, each one more than the one before (a second copy would repeat
    // values); at most one step back, to the last checkpoint, if A's final checkpoint did not make it.
    const values = fs
      .readFileSync(path.join(cluster.dir, 'shared/work/default/part/log'), 'utf8')
      .trim()
      .split('\n')
      .map(Number);
    const breaks = values
      .map((v, i) => (i > 0 && v !== values[i - 1]! + 1 ? [values[i - 1], v] : undefined))
      .filter(Boolean);
    expect(breaks.length).toBeLessThanOrEqual(1);
    for (const [before, after] of breaks as number[][]) expect(after!).toBeLessThanOrEqual(before!);
    console.log(
      `partition: fenced ${fenced!.how}; the job's log has ${values.length} values, breaks ${JSON.stringify(breaks)}`,
    );

    // A comes back.
    link.heal();
    const back = await waitUntil(
      'A alive again',
      async () => (await nodes()).find((n) => n.node === A && n.status === 'alive' && n.cameBackAt),
      40_000,
      500,
    );
    expect(back.events.join('\n')).toMatch(/came back after being declared dead/);
    expect(back.events.join('\n')).toMatch(/had fenced itself at .*default\/part/);
    // Its client creates the old container again: refused, one copy only.
    await cluster.nodes[A]!.containerd.removeContainer('part');
    await expect(cluster.runCounter(A, 'part', sharedEnv())).rejects.toThrow();
    expect(await runningOn(cluster, 'part')).toEqual([on]);
    expect(
      readLogLines(cluster.archRuncLog).some(
        (l) => l.container === 'part' && l.reason === 'owned-elsewhere' && l.owner === on,
      ),
    ).toBe(true);
    const human = (await runCli(cluster, ['nodes'])).stdout;
    expect(human).toMatch(new RegExp(`^${A}\\s+alive`, 'm'));
    expect(human).toContain('came back after being declared dead');
    await cluster.nodes[A]!.containerd.removeContainer('part').catch(() => undefined);
    await cluster.nodes[on]!.containerd.removeContainer('part');
  } finally {
    watching = false;
    await watcher?.catch(() => undefined);
    await link.close();
  }
});
