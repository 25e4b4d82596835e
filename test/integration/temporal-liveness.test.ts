import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { createNodeContext } from '../../core/context.js';
import type { ClusterView, NodeLiveness } from '../../contract/liveness.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { runCli, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';

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
const DEAD_AFTER = { ARCH_NODE_DEAD_AFTER: '10s' };

beforeAll(async () => {
  await cleanupStaleNodes();
  cluster = await startCluster('liveness', [A, B], { nodeSettings: { [A]: DEAD_AFTER, [B]: DEAD_AFTER } });
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

async function nodes(): Promise<NodeLiveness[]> {
  const r = await runCli(cluster, ['--json', 'nodes']);
  if (r.code !== 0) throw new Error(`arch-cli nodes exited ${r.code}: ${r.stderr}`);
  return (r.json as ClusterView).nodes;
}

test('arch-cli nodes: both nodes alive, the ARCH container with the age of its last checkpoint; a node whose worker dies is declared dead', async () => {
  const shared = path.join(cluster.dir, 'shared');
  await cluster.runCounter(A, 'job', [`ARCH_SHAREDFS_HOST_PATH=${shared}`, 'ARCH_WORKDIR_CONTAINER_PATH=/work']);
  await cluster.waitCount(A, 'job', 3);
  const ctx = createNodeContext('test', {
    ...process.env,
    ARCH_CONFIG: cluster.archConfig,
    ARCH_RUNC_ROOT: cluster.nodes[A]!.runcRootBase,
  });
  await checkpointContainer(ctx, {
    namespace: 'default',
    id: 'job',
    runcRoot: cluster.nodes[A]!.runcRoot('default'),
    leaveRunning: true,
  });
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
