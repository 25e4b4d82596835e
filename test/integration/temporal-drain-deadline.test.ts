import { RECORD_SUFFIX } from '../../core/host-dirs.js';
import fs from 'node:fs';
import path from 'node:path';
import { EXIT } from '../../cli/exit-codes.js';
import { CheckpointStore } from '../../core/store.js';
import { workflowIds } from '../../contract/names.js';
import type { DrainResult, ReclaimWatchState } from '../../contract/types.js';
import { readLogLines } from '../support/arch-env.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { runCli, runningOn, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';

/**
 * A reclaim whose deadline is too short for every container: the plan says
 * which ones fit before any checkpoint starts, those are checkpointed, the
 * others are reported and left running, and nothing is half-published.
 *
 * The split does not depend on this machine's speed: the node's throughput
 * estimate is seeded at 10 MiB/s (far below any real disk), so the plan is
 * pessimistic and fixed by the sizes. At 10 MiB/s and 1.5 s per container,
 * "big" (256 MiB) needs about 27 s on its own and can never fit a 20 s
 * deadline, while the other three (16 + 32 + 64 MiB) need about 13 s: they
 * fit unless planning starts more than ~5 s after the CLI computed the
 * deadline (then the plan drops one more, and the test follows the plan).
 */
let cluster: TestCluster;
const A = 'dl-a';
const MiB = 1024 * 1024;
const SEEDED_THROUGHPUT = 10 * MiB;

beforeAll(async () => {
  await cleanupStaleNodes();
  cluster = await startCluster('deadline', [A]);
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

const checkpointRoot = () => path.join(cluster.dir, 'checkpoints');
const containerDir = (id: string) => path.join(checkpointRoot(), 'default', id);

test('deadline too short: the planned subset is checkpointed, the rest is reported and keeps running, nothing half-published', async () => {
  // "big" gets a good checkpoint first and keeps running (arch-cli finalize
  // --leave-running, which also warns it did not expect it to fit: its own
  // estimate file is seeded very low).
  await cluster.runCounter(A, 'big', ['COUNTER_MEM_MB=256']);
  await cluster.waitCount(A, 'big', 3);
  const finDir = path.join(cluster.dir, 'finalize');
  fs.mkdirSync(finDir, { recursive: true });
  fs.writeFileSync(
    path.join(finDir, 'throughput.json'),
    JSON.stringify({ version: 1, bytesPerSec: 2 * MiB, samples: 1, updatedAt: new Date().toISOString() }),
  );
  const fin = await runCli(cluster, ['finalize', '--leave-running', '--deadline', '60s'], {
    ARCH_RUNC_ROOT: cluster.nodes[A]!.runcRootBase,
    ARCH_NODE_NAME: A,
    ARCH_DEFAULT_CHECKPOINT_PATH: path.join(finDir, 'checkpoints'),
  });
  expect(fin.stdout).toContain('warning: default/big is not expected to finish before the deadline');
  expect(fin.stdout).toMatch(/^ok +default\/big/m);
  expect(fin.code).toBe(0);
  const previous = await new CheckpointStore(containerDir('big')).verifyCurrent();

  await cluster.runCounter(A, 'tiny', ['COUNTER_MEM_MB=16']);
  await cluster.runCounter(A, 'small', ['COUNTER_MEM_MB=32']);
  await cluster.runCounter(A, 'mid', ['COUNTER_MEM_MB=64', 'ARCH_PRIORITY=10']);
  for (const id of ['tiny', 'small', 'mid']) await cluster.waitCount(A, id, 3);

  // The node's measured throughput, as the worker persists it (ThroughputEstimator).
  fs.writeFileSync(
    path.join(cluster.dir, `state-${A}`, `throughput-${A}.json`),
    JSON.stringify({ version: 1, bytesPerSec: SEEDED_THROUGHPUT, samples: 5, updatedAt: new Date().toISOString() }),
  );

  const startedAt = new Date().toISOString();
  const r = await runCli(cluster, ['reclaim', A, '--deadline', '20s', '--reason', 'short notice (test)', '--wait']);
  // Not everything made it: that is a failure for scripts, with the results printed.
  expect(r.code).toBe(EXIT.failed);
  expect(r.stdout).toContain('not expected to fit: default/big');

  const client = cluster.temporal.client;
  const watch = client.workflow.getHandle(workflowIds.reclaimWatch(A));
  const state = await watch.query<ReclaimWatchState>('state');
  expect(state.history).toHaveLength(1);
  const rec = state.history[0]!;
  expect(rec).toMatchObject({ status: 'completed', skipped: 1, notExpectedToFit: ['default/big'] });
  const drain = (await client.workflow.getHandle(rec.drainWorkflowId).result()) as DrainResult;
  console.log(
    `plan: ${JSON.stringify(drain.plan)}; ${drain.containers.map((c) => `${c.id}:${c.outcome}${c.checkpointMs ? `/${c.checkpointMs}ms` : ''}`).join(' ')}`,
  );

  // What the plan said, before any checkpoint: "big" cannot fit, the priority container comes first.
  expect(drain.plan.throughputBytesPerSec).toBe(SEEDED_THROUGHPUT);
  expect(drain.plan.notExpectedToFit).toContain('default/big');
  expect(drain.containers.map((c) => c.id).sort()).toEqual(['big', 'mid', 'small', 'tiny']);
  expect(drain.containers[0]!.id).toBe('mid');
  const fit = drain.containers.filter((c) => c.expectedToFit);
  const notFit = drain.containers.filter((c) => !c.expectedToFit);
  expect(fit.length).toBeGreaterThan(0);
  expect(notFit.map((c) => `${c.namespace}/${c.id}`).sort()).toEqual([...drain.plan.notExpectedToFit].sort());
  // Reported to the operator before the checkpoints: the node's log and the workflow's details.
  const planned = readLogLines(cluster.workers[A]!.archLog).filter((l) => Array.isArray(l.notExpectedToFit));
  expect(planned.some((l) => (l.notExpectedToFit as string[]).includes('default/big'))).toBe(true);
  const meta = await client.workflow
    .getHandle(rec.drainWorkflowId)
    .query<{ currentDetails?: string }>('__temporal_workflow_metadata');
  expect(meta.currentDetails).toContain('not expected to fit: default/big');

  // The planned subset finished before the deadline (the estimate is pessimistic on purpose).
  for (const c of fit) {
    expect(c).toMatchObject({ outcome: 'checkpointed', checkpointedInTime: true });
    expect(await runningOn(cluster, c.id)).toEqual([]);
    const { manifest } = await new CheckpointStore(containerDir(c.id)).verifyCurrent();
    expect(manifest.createdAt >= startedAt).toBe(true);
  }
  // The others are reported, never started, and keep running on A.
  for (const c of notFit) {
    expect(c.outcome).toBe('skipped');
    expect(c.checkpointedInTime).toBe(false);
    expect(c.runningOn).toBe(A);
    expect(c.error).toMatch(/not expected to finish before the deadline/);
    expect(await runningOn(cluster, c.id)).toEqual([A]);
    const before = cluster.count(A, c.id)!;
    await cluster.waitCount(A, c.id, before + 2);
  }
  // "big" did not make it: its earlier good checkpoint is still the current one.
  const after = await new CheckpointStore(containerDir('big')).verifyCurrent();
  expect(after.dir).toBe(previous.dir);
  expect(after.manifest.createdAt).toBe(previous.manifest.createdAt);
  // Nothing half-published anywhere.
  // (Beside each container's directory lies its ownership record, <id>@arch.json.)
  for (const id of fs.readdirSync(path.join(checkpointRoot(), 'default')).filter((n) => !n.endsWith(RECORD_SUFFIX))) {
    expect(
      fs.readdirSync(containerDir(id)).filter((n) => n.startsWith('.staging-') || n.startsWith('.current-')),
    ).toEqual([]);
    await new CheckpointStore(containerDir(id)).verifyCurrent();
  }

  // The watcher's status shows the same.
  const status = await runCli(cluster, ['reclaim', A, '--status']);
  expect(status.code).toBe(0);
  expect(status.stdout).toContain('not expected to fit: default/big');
  await waitUntil('watcher idle', async () =>
    (await watch.query<ReclaimWatchState>('state')).status === 'watching' ? true : undefined,
  );
  await watch.terminate('test done');
});
