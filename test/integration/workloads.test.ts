import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer, type CheckpointResult } from '../../core/checkpoint.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { ensureImage, GO_IMAGE, JAVA_IMAGE, NODE_IMAGE, PYTHON_IMAGE } from '../support/images.js';
import { processesOfContainer, stateOf } from '../support/proc-scan.js';

/**
 * Batch jobs as people write them, on real runc, CRIU and containerd: a
 * Python job whose work is spread over worker processes, queues, threads or
 * shared memory, as the standard library makes them, whose workers hold
 * large data in memory, or that watches its files with inotify. Checkpointed in the
 * middle of its work, removed (a reclaim), created again: it goes on from
 * the step it had reached, with the sum it keeps in memory still right, and
 * it never starts again.
 */
let storage: string;
let node: ArchTestNode;
let image: string;
let nodeImage: string;
let goImage: string;
let javaImage: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-workloads-');
  node = await startArchNode('workloads');
  [image, nodeImage, goImage, javaImage] = await Promise.all([
    ensureImage(node.containerd, PYTHON_IMAGE),
    ensureImage(node.containerd, NODE_IMAGE),
    ensureImage(node.containerd, GO_IMAGE),
    ensureImage(node.containerd, JAVA_IMAGE),
  ]);
}, 300_000);

afterAll(async () => {
  await stopAllNodes();
  if (storage) fs.rmSync(storage, { recursive: true, force: true });
});

const lines = (out: string) => fs.readFileSync(out, 'utf8').split('\n').filter(Boolean);
const lastStep = (out: string) => {
  const steps = lines(out).flatMap((l) => /^(?:py|node|go|java)job (\d+) /.exec(l)?.[1] ?? []);
  return steps.length ? Number(steps[steps.length - 1]) : 0;
};

const stepReached = (out: string, step: number, what = `step ${step}`) =>
  waitFor(`${path.basename(out)} ${what}`, () => (lastStep(out) >= step ? true : undefined), 60_000);

/** The task killed (as a lost node's is) and the container removed; `quietly` after a test, whatever state it left. */
async function removeJob(id: string, quietly = false): Promise<void> {
  const steps = [
    () => node.containerd.taskKill(id, 'SIGKILL'),
    () => node.containerd.waitStatus(id, 'STOPPED', 15_000),
    () => node.containerd.removeContainer(id),
  ];
  for (const step of steps) await (quietly ? step().catch(() => undefined) : step());
}

async function runJob(id: string, env: string[], jobImage = image): Promise<string> {
  const logFile = path.join(node.dir, `${id}-${Date.now()}.out`);
  await node.containerd.run({ image: jobImage, id, env, logFile, runcBinary: ARCH_RUNC_BIN, detach: true });
  return logFile;
}

/**
 * The cycle every job here goes through: run until step 5, checkpoint (the
 * job stops), remove (a reclaim), stay down for `downMs` (the time between a
 * reclaim and the restore on another node), create again. It must go on
 * from the next step with its sum right, never print FAIL, and never start
 * again. `tag` is what its lines begin with (pyjob, nodejob, gojob).
 */
async function expectGoesOn(
  id: string,
  env: string[],
  o: {
    image: string;
    tag: string;
    downMs?: number;
    says?: string;
    /** What to wait for before the checkpoint, when not step 5. */
    when?: (out: string) => Promise<unknown>;
    checked?: (done: CheckpointResult) => void;
  },
) {
  const out1 = await runJob(id, env, o.image);
  try {
    await (o.when ? o.when(out1) : stepReached(out1, 5));
    if (o.says) expect(lines(out1)).toContain(o.says);
    const done = await checkpointContainer(node.ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') });
    o.checked?.(done);
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    const reached = lastStep(out1);
    expect(lines(out1).filter((l) => / FAIL\b/.test(l) || l.startsWith(`${o.tag} error`))).toEqual([]);
    await node.containerd.removeContainer(id);
    if (o.downMs) await new Promise((r) => setTimeout(r, o.downMs));

    const out2 = await runJob(id, env, o.image);
    try {
      await stepReached(out2, reached + 5, 'restored, 5 more steps');
      const after = lines(out2);
      expect(after.filter((l) => / FAIL\b/.test(l) || /^\w+ (start|error)/.test(l))).toEqual([]);
      expect(Number(new RegExp(`^${o.tag} (\\d+) `).exec(after[0]!)?.[1])).toBe(reached + 1);
      expect(node.readContainerFile(id, '/state/starts').trim().split('\n')).toHaveLength(1);
    } catch (err) {
      const log = node.logLines().filter((l) => l.container === id);
      throw new Error(
        `${String(err)}\nafter restore:\n${fs.readFileSync(out2, 'utf8').slice(-2000)}\nARCH log:\n${JSON.stringify(log.slice(-8), null, 1)}`,
      );
    }
  } finally {
    await removeJob(id, true);
  }
}

const CHECKPOINTS = () => ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${path.join(storage, 'ck')}`];

test.each([
  ['pool', 'a worker pool (fork)'],
  ['forkserver', 'a forkserver worker pool (named semaphores)'],
  ['queue', 'a producer process feeding a Queue'],
  ['threads', 'a thread pool and a Timer'],
  ['shm', 'workers adding into shared_memory'],
  ['inotify', 'an inotify watch on its own image filesystem'],
  ['bigmem', 'workers each holding 128 MiB of data, checked against digests'],
  ['clock', 'steps paced by its monotonic clock, which a watchdog checks'],
  ['asyncio', 'an event loop driving a coprocess through pipes, a pidfd and a subprocess per step'],
  ['kernelfds', 'an epoll set of a timerfd, a signalfd and an eventfd, and a memfd shared with a child'],
  ['sysv', 'a child on System V shared memory, semaphores and a message queue; a keyed segment found again'],
  ['fdpass', 'descriptors in flight to a worker over a UNIX socket (send_fds), three steps ahead'],
])(
  'a Python job (%s: %s) goes on where it was',
  // The clock job is down for a while: its monotonic clock must not see it (nor, on a node booted later, go
  // back by days, which would leave every deadline it computed days away). CRIU keeps the clocks: it restores
  // the job into a time namespace of its own whose offsets continue them from the dump (timens-*.img), even
  // for a job that ran in the node's namespace.
  (mode) =>
    expectGoesOn(`py-${mode}`, [...CHECKPOINTS(), `PYJOB_MODE=${mode}`], {
      image,
      tag: 'pyjob',
      downMs: mode === 'clock' ? 6000 : 0,
    }),
  180_000,
);

/**
 * Node.js jobs (the node-job.ts modes): libuv's event loop, its thread pool,
 * worker threads, forked workers on Node's IPC channel, fs.watch, a signal
 * handler and timers, all in one process tree that CRIU must put back as it
 * was. The io job is down for 6 s between its node and the next, as the
 * Python clock job is: its stall watchdog must not see it.
 */
test.each([
  ['workers', 'a worker_threads pool adding into a SharedArrayBuffer'],
  ['children', 'forked workers on the IPC channel and a short child each step'],
  ['io', 'timers, fs.promises, fs.watch and a signal handler'],
])(
  'a Node.js job (%s: %s) goes on where it was',
  (mode) =>
    expectGoesOn(`node-${mode}`, [...CHECKPOINTS(), `NODEJOB_MODE=${mode}`], {
      image: nodeImage,
      tag: 'nodejob',
      downMs: mode === 'io' ? 6000 : 0,
    }),
  180_000,
);

/**
 * A Go job (go-job.go): goroutines on the runtime's threads, its network
 * poller serving a loopback TCP server inside the job, a Ticker, os/signal, a
 * child process each step and a stall watchdog on the monotonic clock. Down
 * for 6 s between its nodes, as the io Node job is.
 */
test(
  'a Go job (goroutines, its own loopback TCP server, a Ticker, a signal, a child each step) goes on where it was',
  () => expectGoesOn('go-job', CHECKPOINTS(), { image: goImage, tag: 'gojob', downMs: 6000 }),
  180_000,
);

/**
 * A Java job (Job.java): a thread pool of futures, a scheduled heartbeat, a
 * loopback TCP server on its own thread, a child each step (jspawnhelper), a
 * file forced to disk, 64 MiB it checks by digest, garbage that makes the
 * collector move its heap, and a stall watchdog on System.nanoTime. Down for
 * 6 s between its nodes.
 */
test(
  'a Java job (a thread pool, a scheduled heartbeat, its own loopback TCP server, a child each step, 64 MiB checked) goes on where it was',
  () => expectGoesOn('java-job', CHECKPOINTS(), { image: javaImage, tag: 'javajob', downMs: 6000 }),
  180_000,
);

/**
 * A job that serves a control socket (AF_UNIX) and talks to it every step,
 * its socket file in the writable layer or in its shared work dir. On the
 * host the work dir keeps the old socket file after the job stopped, where
 * the restored listener must bind again.
 */
test.each([
  ['its image (/state)', []],
  ['its shared work dir (/work)', ['ARCH_WORKDIR_CONTAINER_PATH=/work', 'PYJOB_STATE=/work']],
])('a job serving a UNIX socket in %s goes on where it was', async (_where, extra) => {
  const id = `py-unix-${extra.length ? 'work' : 'image'}`;
  const place = extra.length
    ? `ARCH_SHAREDFS_HOST_PATH=${path.join(storage, 'shared')}`
    : `ARCH_CHECKPOINT_HOST_PATH=${path.join(storage, 'ck')}`;
  const env = ['ARCH_ENABLE=1', place, 'PYJOB_MODE=unix', ...extra];
  const out1 = await runJob(id, env);
  try {
    await stepReached(out1, 5);
    await checkpointContainer(node.ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') });
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    const reached = lastStep(out1);
    await node.containerd.removeContainer(id);
    const out2 = await runJob(id, env);
    try {
      await stepReached(out2, reached + 5, 'restored, 5 more steps');
    } catch (err) {
      const log = node.logLines().filter((l) => l.container === id);
      throw new Error(
        `${String(err)}\nafter restore:\n${fs.readFileSync(out2, 'utf8').slice(-1500)}\nARCH log:\n${JSON.stringify(log.slice(-4), null, 1)}`,
      );
    }
    const after = lines(out2);
    expect(after.filter((l) => / FAIL\b/.test(l) || l.startsWith('pyjob start'))).toEqual([]);
    expect(Number(/^pyjob (\d+) /.exec(after[0]!)?.[1])).toBe(reached + 1);
  } finally {
    await removeJob(id, true);
  }
});

/**
 * A job that opens an io_uring where the kernel lets it (libuv from 1.49 opens
 * one per event loop, whatever UV_USE_IO_URING says; tokio-uring, liburing):
 * no checkpoint could take it. In an ARCH container io_uring_setup answers
 * ENOSYS, as on a kernel without io_uring, the job takes the fallback every
 * such runtime has, and it goes on after a reclaim.
 */
test('a job that would hold an io_uring gets ENOSYS in an ARCH container, takes its fallback and goes on', () =>
  expectGoesOn('py-io-uring', [...CHECKPOINTS(), 'PYJOB_MODE=io_uring'], {
    image,
    tag: 'pyjob',
    says: 'pyjob io_uring refused: errno 38',
  }));

/**
 * A job holding a file CRIU cannot take (a userfaultfd, as VMMs and memory
 * tools hold; a perf_event): CRIU's dump would fail without saying which. The
 * checkpoint is refused before anything is frozen, naming the process and the
 * fix; the job runs on, and no checkpoint is published.
 */
test('a job holding a userfaultfd: its checkpoint is refused before it is frozen, with the process and the fix', async () => {
  const id = 'py-userfaultfd';
  const ck = path.join(storage, 'ck');
  const out = await runJob(id, ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${ck}`, 'PYJOB_MODE=userfaultfd']);
  try {
    await stepReached(out, 3);
    await expect(
      checkpointContainer(node.ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') }),
    ).rejects.toThrow(
      /^default\/py-userfaultfd cannot be checkpointed: process \d+ \(python3\) holds a userfaultfd \(fd \d+\), which CRIU cannot checkpoint\. Fix: run what uses userfaultfd .*previous checkpoint stays current$/,
    );
    await stepReached(out, lastStep(out) + 3, 'runs on after the refusal');
    expect(lines(out).filter((l) => / FAIL\b/.test(l) || l.startsWith('userfaultfd failed'))).toEqual([]);
    expect(fs.existsSync(path.join(ck, 'default', id, 'current'))).toBe(false);
  } finally {
    await removeJob(id, true);
  }
});

/**
 * Go programs listen with multipath TCP from Go 1.24 where the kernel has it,
 * and CRIU cannot dump an MPTCP socket: ARCH turns it off in the containers
 * it creates (the Go job above), unless the owner set it. An owner who turned
 * it on gets the refusal with its reason and fix, and the job runs on.
 */
test('a Go job whose owner turned multipath TCP on: its checkpoint is refused with the reason and the fix; the job runs on', async () => {
  const id = 'go-mptcp';
  const ck = path.join(storage, 'ck');
  const out = await runJob(id, [...CHECKPOINTS(), 'GODEBUG=multipathtcp=1'], goImage);
  try {
    await stepReached(out, 3);
    const checkpoint = checkpointContainer(node.ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') });
    if (fs.readFileSync('/proc/sys/net/mptcp/enabled', 'utf8').trim() === '1') {
      await expect(checkpoint).rejects.toThrow(
        /runc checkpoint failed: .*\| one of the job's sockets is a multipath TCP \(MPTCP\) socket.*Fix: GODEBUG=multipathtcp=0/,
      );
      await stepReached(out, lastStep(out) + 3, 'runs on after the refusal');
      expect(fs.existsSync(path.join(ck, 'default', id, 'current'))).toBe(false);
    } else {
      await checkpoint; // a kernel without MPTCP: Go falls back to TCP
    }
    expect(lines(out).filter((l) => / FAIL\b|^gojob error/.test(l))).toEqual([]);
  } finally {
    await removeJob(id, true);
  }
});

/**
 * Periodic protection: the job checkpointed `times` while it runs (each left
 * running, `afterEach` checked after each), run on, then its node lost (no
 * checkpoint taken): created again, it goes on from a step the last
 * checkpoint held, never printing FAIL and never starting again.
 */
async function expectGoesOnAfterLoss(
  id: string,
  env: string[],
  o: {
    image: string;
    tag: string;
    times: number;
    /** What to wait for before each checkpoint, when not 3 more steps. */
    when?: (out: string) => Promise<unknown>;
    afterEach?: (n: number, done: CheckpointResult) => Promise<void>;
  },
) {
  const out1 = await runJob(id, env, o.image);
  let before = 0;
  for (let n = 1; n <= o.times; n++) {
    await (o.when ? o.when(out1) : stepReached(out1, before + 3));
    before = lastStep(out1);
    const done = await checkpointContainer(node.ctx, {
      namespace: 'default',
      id,
      runcRoot: node.runcRoot('default'),
      leaveRunning: true,
    });
    await o.afterEach?.(n, done);
  }
  const after = lastStep(out1); // the last checkpoint holds a step from before to after
  await stepReached(out1, after + 3, 'runs on');
  expect(lines(out1).filter((l) => / FAIL\b/.test(l) || /^\w+ error/.test(l))).toEqual([]);
  await removeJob(id); // the node lost: no checkpoint taken

  const out2 = await runJob(id, env, o.image);
  try {
    await stepReached(out2, after + 3, 'restored, 3 more steps');
    const first = Number(new RegExp(`^${o.tag} (\\d+) `).exec(lines(out2)[0]!)?.[1]);
    expect(first).toBeGreaterThan(before);
    expect(first).toBeLessThanOrEqual(after + 1);
    expect(lines(out2).filter((l) => / FAIL\b/.test(l) || /^\w+ (start|error)/.test(l))).toEqual([]);
    expect(node.readContainerFile(id, '/state/starts').trim().split('\n')).toHaveLength(1);
  } finally {
    await removeJob(id, true);
  }
}

/**
 * CRIU dumps a forkserver job's semaphores through second names it makes in
 * /dev/shm (link remaps) and must take them away each time, or the next dump
 * collides with them ("File exists") and the job's /dev/shm fills.
 */
test('a forkserver job checkpointed three times while it runs continues from the last after its node is lost', async () => {
  const id = 'py-forkserver-periodic';
  const shm = (n: number) =>
    node.containerd.ctr(['tasks', 'exec', '--exec-id', `ls-${n}`, id, 'ls', '/dev/shm']).then((o) => o.split('\n'));
  await expectGoesOnAfterLoss(id, [...CHECKPOINTS(), 'PYJOB_MODE=forkserver'], {
    image,
    tag: 'pyjob',
    times: 3,
    afterEach: async (n) => expect((await shm(n)).filter((f) => f.startsWith('link_remap'))).toEqual([]),
  });
}, 180_000);

/**
 * CRIU stops each process of the job before it dumps and gives up after 10 s
 * when one stays in uninterruptible sleep, as a JVM's child did in CI while
 * ProcessBuilder started it: ARCH tries again while the job runs on. Here the
 * job is caught for sure: its posix_spawn child waits in a FIFO's open,
 * which keeps the job in vfork (D) until a helper opens the other end, and
 * CRIU's first try holds that helper stopped. Left running (a periodic
 * checkpoint), and stopping the job (a drain's), whose freeze ARCH makes.
 */
describe('a job caught while one of its processes cannot stop (a posix_spawn child waiting in open)', () => {
  const waiting = (id: string) => (out: string) =>
    waitFor(
      `${id} waiting in posix_spawn`,
      () =>
        lines(out).includes('pyjob spawnwait waiting') &&
        processesOfContainer('default', id).some((p) => stateOf(p) === 'D')
          ? true
          : undefined,
      60_000,
    );
  const triedAgain = (done: CheckpointResult) => {
    // One or two failed tries, by when the helper's 5 s end: CRIU waits 2 s at the first, 5 s at the second.
    expect(done.retries?.length).toBeGreaterThanOrEqual(1);
    for (const why of done.retries ?? [])
      expect(why).toMatch(
        /Unseizable non-zombie \d+ found, state D.* \| a process of the job stayed in uninterruptible sleep/,
      );
    // The failed try left nothing in the store: its staging dir went with it.
    expect(fs.readdirSync(done.containerDir).filter((n) => n.startsWith('.staging-'))).toEqual([]);
  };
  const env = () => [...CHECKPOINTS(), 'PYJOB_MODE=spawnwait'];

  test('left running: the checkpoint is tried again, and the job continues from it after its node is lost', async () => {
    const id = 'py-spawnwait';
    await expectGoesOnAfterLoss(id, env(), {
      image,
      tag: 'pyjob',
      times: 1,
      when: waiting(id),
      afterEach: async (_n, done) => triedAgain(done),
    });
  }, 180_000);

  test('stopped: the checkpoint is tried again, and the job goes on from it when created again', async () => {
    const id = 'py-spawnwait-stop';
    await expectGoesOn(id, env(), { image, tag: 'pyjob', when: waiting(id), checked: triedAgain });
  }, 180_000);
});

/**
 * Jobs that a checkpoint's seizure interrupts in their own ways: a JVM (its
 * GC, JIT and timer threads parked in futexes, safepoints), and a SysV job
 * blocked in semop, which Linux never restarts after a stop (it answers
 * EINTR, and the job calls again).
 */
test.each([
  ['java', 'a Java job', () => javaImage, 'javajob', [] as string[]],
  ['sysv', 'a SysV IPC job', () => image, 'pyjob', ['PYJOB_MODE=sysv']],
])(
  '%s: %s checkpointed twice while it runs continues from the last after its node is lost',
  (mode, _what, jobImage, tag, extra) =>
    expectGoesOnAfterLoss(`${mode}-periodic`, [...CHECKPOINTS(), ...extra], { image: jobImage(), tag, times: 2 }),
  180_000,
);
