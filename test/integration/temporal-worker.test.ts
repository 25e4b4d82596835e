import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { createNodeContext } from '../../core/context.js';
import { recordedExit } from '../../core/shim-state.js';
import { CheckpointStore } from '../../core/store.js';
import { WORKFLOW_TASK_QUEUE } from '../../contract/names.js';
import type { PauseInput, PauseResult } from '../../contract/types.js';
import { readLogLines } from '../support/arch-env.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import {
  ARCH_RUNC,
  outcome,
  startCluster,
  startWorker,
  stopAllTemporal,
  waitUntil,
  type TestCluster,
} from '../support/temporal.js';
import { pauseContainers } from '../../workflows/index.js';

/**
 * The node worker as a process: SIGTERM while it checkpoints (it stops taking
 * work, lets the checkpoint finish and report, then exits 0 — the checkpoint
 * is not abandoned half-way nor run twice); and the exit codes it records
 * from containerd's events for arch-runc's delete.
 */
let cluster: TestCluster;
const N = 'wrk-a';

beforeAll(async () => {
  await cleanupStaleNodes();
  cluster = await startCluster('worker', [N]);
});

// One test's failure must not take the others down with it: a worker a test stopped and could not restart is started again.
beforeEach(async () => {
  const w = cluster.workers[N];
  if (!w?.running()) await cluster.startWorker(N);
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

/** A node context for N as arch-cli would have it (the cluster's settings, the node's runc root). */
const nodeContext = () =>
  createNodeContext('test', {
    ...process.env,
    ARCH_CONFIG: cluster.archConfig,
    ARCH_RUNC_ROOT: cluster.nodes[N]!.runcRootBase,
  });

/**
 * Run to `exitAfter` ticks and exit with `code`, with a checkpoint (left
 * running) on the way; the exit recorded from containerd's event (delete
 * reads it) must be `code`. Returns the count at the checkpoint.
 */
async function runToExit(id: string, exitAfter: number, code: number): Promise<number> {
  const node = cluster.nodes[N]!;
  await cluster.runCounter(N, id, [
    'COUNTER_INTERVAL_MS=50',
    `COUNTER_EXIT_AFTER=${exitAfter}`,
    `COUNTER_EXIT_CODE=${code}`,
  ]);
  await cluster.waitCount(N, id, 5);
  await checkpointContainer(nodeContext(), {
    namespace: 'default',
    id,
    runcRoot: node.runcRoot('default'),
    leaveRunning: true,
  });
  const atCheckpoint = cluster.count(N, id)!;
  await node.containerd.waitStatus(id, 'STOPPED', 30_000);
  const exit = await waitUntil(`${id}: exit recorded`, () => recordedExit(node.runcRoot('default'), id), 10_000, 50);
  expect(exit.exitStatus).toBe(code);
  await node.containerd.removeContainer(id);
  return atCheckpoint;
}

test('SIGTERM during a checkpoint: the checkpoint completes once, the worker exits 0', async () => {
  // Enough memory that the checkpoint takes a while (CRIU dump + digests + fsync).
  await cluster.runCounter(N, 'big', ['COUNTER_MEM_MB=384']);
  await cluster.waitCount(N, 'big', 3, 60_000);
  const client = cluster.temporal.client;
  const handle = await client.workflow.start(pauseContainers, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: `test-sigterm-${randomBytes(3).toString('hex')}`,
    args: [{ node: N, selector: { ids: ['big'] } } satisfies PauseInput],
  });
  await waitUntil(
    'the checkpoint activity to be running',
    async () => {
      const d = await handle.describe();
      return (d.raw.pendingActivities ?? []).some(
        (a) =>
          a.activityType?.name === 'checkpointContainer' && Number(a.state) === 2 /* PENDING_ACTIVITY_STATE_STARTED */,
      );
    },
    60_000,
    20,
  );
  // STARTED on the server means the worker's poller has the task, not that the checkpoint began: a worker told to
  // stop before its code runs may give the task back (a retry, not what this test is about). Its staging directory
  // shows the checkpoint itself is under way.
  const containerDir = path.join(cluster.dir, 'checkpoints/default/big');
  await waitUntil(
    'the checkpoint to be under way in the worker',
    () => {
      try {
        return fs.readdirSync(containerDir).some((n) => n.startsWith('.staging-')) || undefined;
      } catch {
        return undefined;
      }
    },
    60_000,
    10,
  );
  const worker = cluster.workers[N]!;
  const t0 = Date.now();
  const code = await worker.stop(60_000);
  expect(code).toBe(0);
  const stoppedAfter = Date.now() - t0;
  // The checkpoint was published and the container killed before the worker exited
  // (containerd's shim reports STOPPED once it has reaped the killed init: moments later).
  // A checkpoint abandoned half-way would have thawed the container: it would stay RUNNING.
  await cluster.nodes[N]!.containerd.waitStatus('big', 'STOPPED', 5_000);
  // A worker again, so the workflow can finish.
  await cluster.startWorker(N);
  const r = await outcome<PauseResult>(handle, 60_000);
  if (!r.ok) throw r.error;
  expect(r.value.containers).toEqual([expect.objectContaining({ id: 'big', outcome: 'paused' })]);
  // Exactly one attempt, completed: nothing was retried or timed out.
  const history = await handle.fetchHistory();
  const types = (history.events ?? []).map((e) => Number(e.eventType));
  expect(types.filter((t) => t === 12).length).toBe(3); // select, describe, checkpoint completed
  expect(types.filter((t) => t === 13 || t === 14).length).toBe(0);
  const started = (history.events ?? []).find(
    (e) => Number(e.eventType) === 11 && e.activityTaskStartedEventAttributes?.attempt === 1,
  );
  expect(started).toBeDefined();
  console.log(`worker exited ${stoppedAfter} ms after SIGTERM, after its checkpoint completed`);
});

test('exit codes from containerd: a crash keeps the checkpoint (the job goes on from it), a clean exit removes it', async () => {
  const node = cluster.nodes[N]!;
  const checkpointsOf = (id: string) => new CheckpointStore(path.join(cluster.dir, 'checkpoints/default', id));

  const atCheckpoint = await runToExit('crash', 60, 3);
  expect(await checkpointsOf('crash').current()).toBeTruthy();
  expect(
    readLogLines(cluster.archRuncLog).some(
      (l) => l.container === 'crash' && l.msg === 'container exited with code 3: checkpoint kept',
    ),
  ).toBe(true);
  // Created again, it goes on from the checkpoint, not from the start.
  await cluster.runCounter(N, 'crash', []);
  await waitUntil(
    'crash restored',
    () =>
      readLogLines(cluster.archRuncLog).some((l) => l.container === 'crash' && l.msg === 'restored from checkpoint') ||
      undefined,
    20_000,
    100,
  );
  const resumed = await cluster.waitCount(N, 'crash', atCheckpoint + 2);
  expect(resumed).toBeGreaterThan(atCheckpoint);
  await node.containerd.removeContainer('crash');

  await runToExit('clean', 25, 0);
  expect(await checkpointsOf('clean').current()).toBeNull();
  expect(
    readLogLines(cluster.archRuncLog).some(
      (l) =>
        l.container === 'clean' &&
        l.msg === 'container exited by itself: checkpoint and work dir removed' &&
        l.exitStatus === 0,
    ),
  ).toBe(true);
});

test('ctr run --rm: delete comes right after a crash, before the worker has the exit code: it waits for it and keeps the checkpoint', async () => {
  const node = cluster.nodes[N]!;
  const cd = node.containerd;
  const ctx = nodeContext();
  const id = 'rm-crash';
  const worker = cluster.workers[N]!;
  // Foreground with --rm: ctr waits for the exit and deletes the task at once.
  const run = cd
    .ctr(
      [
        'run',
        '--rm',
        '--runc-binary',
        ARCH_RUNC,
        ...(cd.runcRoot ? ['--runc-root', cd.runcRoot] : []),
        ...(cd.cgroupParent ? ['--cgroup', `${cd.cgroupParent}/default/${id}`] : []),
        '--log-uri',
        `file://${path.join(cluster.dir, `${id}.out`)}`,
        '--env',
        'ARCH_ENABLE=1',
        '--env',
        `ARCH_CHECKPOINT_HOST_PATH=${path.join(cluster.dir, 'checkpoints')}`,
        '--env',
        'COUNTER_INTERVAL_MS=50',
        '--env',
        'COUNTER_EXIT_AFTER=160',
        '--env',
        'COUNTER_EXIT_CODE=3',
        'localhost/arch-test/counter:1',
        id,
      ],
      60_000,
    )
    .then(
      () => 0,
      () => 1,
    ); // ctr passes the task's exit code 3 on: an error here
  let held = false;
  try {
    await cluster.waitCount(N, id, 5);
    // Hold the worker back: the exit event waits in its pipe until after delete has begun. Held before the
    // checkpoint (which the test makes itself, without the worker), so a slow checkpoint cannot let the exit through.
    process.kill(worker.pid, 'SIGSTOP');
    held = true;
    await checkpointContainer(ctx, {
      namespace: 'default',
      id,
      runcRoot: node.runcRoot('default'),
      leaveRunning: true,
    });
    // Released once arch-runc's delete waits for the exit code (a fixed sleep is too short on a loaded machine).
    await waitUntil(
      `arch-runc delete ${id} to wait for the exit code`,
      () =>
        readLogLines(cluster.archRuncLog).some(
          (l) => l.container === id && l.msg === 'exit code not recorded yet: waiting for the worker',
        ) || undefined,
      60_000,
      10,
    );
    process.kill(worker.pid, 'SIGCONT');
    held = false;
    expect(await run).toBe(1);
  } finally {
    if (held) process.kill(worker.pid, 'SIGCONT');
    await run;
  }
  const lines = readLogLines(cluster.archRuncLog).filter((l) => l.container === id);
  expect(
    lines.some((l) => l.msg === 'exit code arrived after delete began' && l.exitStatus === 3 && Number(l.waitedMs) > 0),
  ).toBe(true);
  expect(lines.some((l) => l.msg === 'container exited with code 3: checkpoint kept')).toBe(true);
  expect(await new CheckpointStore(path.join(cluster.dir, 'checkpoints/default', id)).current()).toBeTruthy();
  await waitUntil(`${id} gone`, async () => (await cd.task(id)) === undefined || undefined, 20_000, 50);
});

test("ARCH_CHECKPOINT_ID: the job finished (exit 0) in the old container before Kubernetes created its successor: the successor starts fresh, and collecting the old one leaves the successor's checkpoint alone", async () => {
  const node = cluster.nodes[N]!;
  const ctx = nodeContext();
  const name = ['ARCH_CHECKPOINT_ID=fin-job'];
  const store = new CheckpointStore(path.join(cluster.dir, 'checkpoints/default/fin-job'));
  await cluster.runCounter(N, 'fin-1', [...name, 'COUNTER_INTERVAL_MS=50', 'COUNTER_EXIT_AFTER=100']);
  await cluster.waitCount(N, 'fin-1', 5);
  await checkpointContainer(ctx, {
    namespace: 'default',
    id: 'fin-1',
    runcRoot: node.runcRoot('default'),
    leaveRunning: true,
  });
  await node.containerd.waitStatus('fin-1', 'STOPPED', 30_000);
  expect(
    (await waitUntil('fin-1: exit recorded', () => recordedExit(node.runcRoot('default'), 'fin-1'), 10_000, 50))
      .exitStatus,
  ).toBe(0);
  expect(await store.current()).toBeTruthy();

  // Restarted (restartPolicy Always) while fin-1 is still there: a fresh start, not fin-1's old state.
  await cluster.runCounter(N, 'fin-2', name);
  await cluster.waitCount(N, 'fin-2', 3);
  const lines = () => readLogLines(cluster.archRuncLog);
  expect(
    lines().some(
      (l) =>
        l.container === 'fin-2' &&
        l.msg === 'the job finished in container fin-1 (exit 0): its checkpoint removed, starting fresh',
    ),
  ).toBe(true);
  expect(lines().some((l) => l.container === 'fin-2' && l.msg === 'restored from checkpoint')).toBe(false);
  await checkpointContainer(ctx, {
    namespace: 'default',
    id: 'fin-2',
    runcRoot: node.runcRoot('default'),
    leaveRunning: true,
  });

  // Collecting fin-1 (exit 0) must not remove what fin-2 has written since.
  await node.containerd.removeContainer('fin-1');
  expect(
    lines().some((l) => l.container === 'fin-1' && l.msg === 'checkpoint now belongs to container fin-2: kept'),
  ).toBe(true);
  expect(await store.readManifest()).toMatchObject({ containerId: 'fin-2', checkpointId: 'fin-job' });
  await node.containerd.removeContainer('fin-2');
});

/**
 * A worker started while Temporal cannot be reached (its server restarting,
 * the network not up yet after a boot) does not exit: the node's own duties
 * go on. Here Temporal sits behind a loopback port that nothing listens on
 * yet: a job crashes meanwhile and its exit code is recorded (the checkpoint
 * stays, so the job goes on from it), then the port starts forwarding to the
 * real server and the worker connects and polls.
 */
test('Temporal unreachable when the worker starts: exit codes are recorded meanwhile, and it polls once Temporal is up', async () => {
  const node = cluster.nodes[N]!;
  await cluster.workers[N]!.stop();
  const port = await freePort();
  const starting = startWorker(node, {
    temporal: cluster.temporal,
    archConfig: cluster.archConfig,
    dir: path.join(cluster.dir, 'unreachable'),
    env: { TEMPORAL_ADDRESS: `127.0.0.1:${port}` },
    readyTimeoutMs: 120_000,
  });
  let forwarder: net.Server | undefined;
  try {
    const workerLog = path.join(cluster.dir, 'unreachable', `worker-${N}.log`);
    const waiting = await waitUntil(
      'the worker says it waits for Temporal',
      () => readLogLines(workerLog).find((l) => String(l.msg).startsWith(`cannot reach Temporal at 127.0.0.1:${port}`)),
      30_000,
      100,
    );
    expect(String(waiting.msg)).toContain('Meanwhile exit codes are recorded');
    // A job crashes while the worker waits: its code is recorded, so its checkpoint stays.
    const id = 'crash-no-temporal';
    await runToExit(id, 60, 3);
    expect(await new CheckpointStore(path.join(cluster.dir, 'checkpoints/default', id)).current()).toBeTruthy();
    // Temporal reachable at last: the worker connects and polls its node's queue.
    forwarder = await forward(port, cluster.temporal.address);
    const w = await starting;
    try {
      expect(readLogLines(workerLog).some((l) => l.msg === 'Temporal reached')).toBe(true);
      // A pause of nothing still asks the node's worker which containers it has: it answers now.
      const handle = await cluster.temporal.client.workflow.start(pauseContainers, {
        taskQueue: WORKFLOW_TASK_QUEUE,
        workflowId: `pause-after-reconnect-${randomBytes(3).toString('hex')}`,
        args: [{ node: N, selector: { ids: ['none-such'] } } satisfies PauseInput],
      });
      const r = await outcome<PauseResult>(handle, 60_000);
      expect(r.ok).toBe(true);
    } finally {
      await w.stop();
    }
  } finally {
    forwarder?.close();
    await starting.then((w) => w.stop()).catch(() => undefined);
  }
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** A loopback port forwarding every connection to `to` (host:port). */
function forward(port: number, to: string): Promise<net.Server> {
  const [host, p] = [to.slice(0, to.lastIndexOf(':')), Number(to.slice(to.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const server = net.createServer((sock) => {
      const up = net.connect(p, host);
      const end = () => {
        sock.destroy();
        up.destroy();
      };
      sock.on('error', end).on('close', end);
      up.on('error', end).on('close', end);
      sock.pipe(up).pipe(sock);
    });
    server.on('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}
