import { execa } from 'execa';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { readShimState } from '../../core/shim-state.js';
import { startExitRecorder } from '../../worker/exits.js';
import { waitFor } from '../support/arch-node.js';
import { damagePageImage, filesHolding } from '../support/checkpoint-copies.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import {
  CRI_NAMESPACE,
  startCriNode,
  type CriTestNode,
  type Pod,
  type PidMode,
  type PodNetwork,
} from '../support/cri-node.js';
import { ensureImage, PYTHON_IMAGE, REPO_ROOT } from '../support/images.js';

/**
 * Kubernetes' way in, end to end: containerd's CRI plugin driven by the real
 * crictl as the kubelet would, runtime handler `arch` = arch-runc over real
 * runc and CRIU, the sandbox a real pause (reaps zombies). A job named with
 * ARCH_CHECKPOINT_ID is finalized (checkpointed and stopped), then
 *  - its pod is removed and a new pod runs it again (a rescheduled pod), or
 *  - the kubelet creates attempt 1 of the container in the same pod;
 * each with the pod's PID namespace shared (namespace_options.pid = POD) and
 * with the container's own. The job is two processes (a shell and the
 * counter it waits for): when the container stops, the counter is an orphan
 * of the pod's PID 1, and its PID is free again only once that PID 1 reaps
 * it. The restore must continue the count; a restore that cannot work must
 * say why in `arch-cli ls`, never start over silently.
 */
let node: CriTestNode;
let storage: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-cri-');
  node = await startCriNode('cri-a');
}, 120_000);

// A failed test leaves its pods running: the next test's finalize would checkpoint its job too.
afterEach(() => node?.removeAllPods());

afterAll(async () => {
  await stopAllNodes();
  fs.rmSync(storage, { recursive: true, force: true });
});

/** sh as the container's init, the counter its child. */
const TWO_PROCESSES = ['/bin/sh', '-c', '/usr/bin/counter & wait'];

async function archCli(on: CriTestNode, args: string[]): Promise<string> {
  const r = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), args, {
    env: { ARCH_CONFIG: on.archConfig },
    reject: false,
  });
  if (r.exitCode !== 0) throw new Error(`arch-cli ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}`);
  return String(r.stdout);
}

interface Listed {
  id: string;
  lastRestoreFailure?: { reason: string; message: string };
}

async function listed(on: CriTestNode, id: string): Promise<Listed | undefined> {
  const out = JSON.parse(await archCli(on, ['ls', '--local', '--json', '--namespace', CRI_NAMESPACE])) as {
    containers: Listed[];
  };
  return out.containers.find((c) => c.id === id);
}

/**
 * The job keeps its count (and its starts file: a line per fresh start) in
 * its shared work dir: readable on the host after the CRI plugin has
 * unmounted an exited container's rootfs, and the same dir for every
 * container of the job.
 */
function jobEnv(checkpointId: string): Record<string, string> {
  return {
    ARCH_ENABLE: '1',
    ARCH_CHECKPOINT_ID: checkpointId,
    ARCH_SHAREDFS_HOST_PATH: storage,
    ARCH_WORKDIR_CONTAINER_PATH: '/work',
    COUNTER_FILE: '/work/count',
  };
}

function jobFile(checkpointId: string, name: string): string {
  return path.join(storage, 'work', CRI_NAMESPACE, checkpointId, name);
}

function count(checkpointId: string): number {
  return Number(fs.readFileSync(jobFile(checkpointId, 'count'), 'utf8').trim());
}

function starts(checkpointId: string): number {
  return fs.readFileSync(jobFile(checkpointId, 'starts'), 'utf8').trim().split('\n').length;
}

function waitCount(checkpointId: string, atLeast: number): Promise<number> {
  return waitFor(`${checkpointId} count >= ${atLeast}`, () => {
    const c = count(checkpointId);
    return c >= atLeast ? c : undefined;
  });
}

/** `arch-cli finalize` (what a node does on a reclaim warning): the job is checkpointed and stopped. */
async function finalize(on: CriTestNode, containerId: string, checkpointId: string): Promise<number> {
  const report = JSON.parse(await archCli(on, ['finalize', '--deadline', '60s', '--json'])) as {
    items: { id: string; status: string }[];
  };
  expect(report.items).toEqual([expect.objectContaining({ id: containerId, status: 'checkpointed' })]);
  await waitExited(on, containerId);
  // The counter is dead now: its last written count is what memory held at the dump (±1 tick).
  return count(checkpointId);
}

/**
 * The first pod's end: its job checkpointed by finalize (stopped), or by a
 * checkpoint left running (`whileRunning` checks the running job after it),
 * then the pod removed. Returns the count the checkpoint holds (left
 * running: the count read before it, a little below).
 */
async function checkpointThenLosePod(
  on: CriTestNode,
  pod: Pod,
  c: { id: string; job: string },
  left: boolean,
  whileRunning?: () => Promise<void>,
): Promise<number> {
  let at: number;
  if (left) {
    at = count(c.job);
    await checkpointLeftRunning(on, c.id);
    await waitCount(c.job, at + 3); // it went on
    await whileRunning?.();
  } else {
    at = await finalize(on, c.id, c.job);
  }
  await on.removePod(pod);
  return at;
}

/** What the job printed (CRI log format: one "TIME STREAM TAG text" line per line). */
function output(pod: Pod, name: string, attempt: number): string {
  return fs.readFileSync(path.join(path.dirname(pod.configFile), `${name}-${attempt}.log`), 'utf8');
}

/** What a job prints when it starts fresh, and what only a job that went on from `atCheckpoint` prints. */
interface Printing {
  fresh: RegExp;
  goesOn: (atCheckpoint: number) => RegExp;
}
const COUNTER_PRINTING: Printing = {
  fresh: /counter start/,
  goesOn: (at) => new RegExp(`stdout F count ${at + 2}\\n`),
};
/** Left running, the job counted on after its count was read: its checkpoint's count is a little past it. */
const LEFT_RUNNING_PRINTING: Printing = { ...COUNTER_PRINTING, goesOn: () => /stdout F count \d+\n/ };

/** A checkpoint that leaves the job running (periodic protection), in this process; `ctx` to change the node's settings. */
function checkpointLeftRunning(on: CriTestNode, id: string, ctx = on.ctx) {
  return checkpointContainer(ctx, {
    namespace: CRI_NAMESPACE,
    id,
    runcRoot: on.runcRoot(CRI_NAMESPACE),
    leaveRunning: true,
  });
}

/** A new pod's emptyDir `name`, laid out as kubelet lays it out (`pod`: a pod dir of an earlier call, for a second volume). */
function podEmptyDir(
  on: CriTestNode,
  name = 'scratch',
  pod = path.join(on.dir, 'kubelet/pods', crypto.randomUUID()),
): string {
  const dir = path.join(pod, 'volumes/kubernetes.io~empty-dir', name);
  fs.mkdirSync(dir, { recursive: true, mode: 0o777 });
  return dir;
}

async function waitExited(on: CriTestNode, containerId: string): Promise<void> {
  await waitFor(`${containerId} exited`, async () =>
    (await on.containerState(containerId)) === 'CONTAINER_EXITED' ? true : undefined,
  );
}

/** The container continues the job: restored (shim state), count goes on, the program did not start again. */
async function expectRestored(
  on: CriTestNode,
  c: { pod: Pod; id: string; attempt: number; job: string },
  atCheckpoint: number,
  printing: Printing = COUNTER_PRINTING,
): Promise<void> {
  const state = await readShimState(on.runcRoot(CRI_NAMESPACE), c.id);
  const failure = (await listed(on, c.id))?.lastRestoreFailure;
  expect({ restored: !!state?.restoredFrom, failure }).toEqual({ restored: true, failure: undefined });
  await waitCount(c.job, atCheckpoint + 3);
  expect(starts(c.job)).toBe(1);
  const printed = output(c.pod, 'job', c.attempt);
  expect(printed).not.toMatch(printing.fresh);
  // What the restored job prints reaches the new container's log (kubectl logs).
  expect(printed).toMatch(printing.goesOn(atCheckpoint));
}

test("arch-cli doctor finds the node's containerd and checks its CRI config (Root, restrict_oom_score_adj)", async () => {
  const r = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['doctor', '--json'], {
    env: { ARCH_CONFIG: node.archConfig },
    reject: false,
  });
  const { checks } = JSON.parse(String(r.stdout)) as { checks: { name: string; ok: boolean; detail?: string }[] };
  const ours = checks.filter((c) => c.name === 'containerd CRI config' && c.detail?.startsWith(node.configFile));
  expect(ours).toEqual([
    expect.objectContaining({ ok: true, detail: `${node.configFile}: runtime "arch": Root ${node.runcRootBase}` }),
  ]);
});

/** iptables' CRIU chain in the pod's network namespace: CRIU's lock, which drops every packet. */
async function criuLockIn(pod: Pod): Promise<boolean> {
  const pid = (JSON.parse(await node.crictl(['inspectp', pod.id])) as { info: { pid: number } }).info.pid;
  const r = await execa('nsenter', [`--net=/proc/${pid}/ns/net`, 'iptables', '-w', '-n', '-L', 'CRIU'], {
    reject: false,
  });
  return r.exitCode === 0;
}

/**
 * The PID namespace of the container or of its pod, on the host's network;
 * and the usual pod of a cluster: a network namespace of its own (the test
 * CNI plugins of test/support/cri-node.ts give it an eth0 and an address,
 * the next pod another one), which the container joins and runc restores it
 * into. There, a checkpoint or a restore must leave no CRIU lock behind:
 * the pod's other containers keep their network while the job is stopped.
 */
describe.each<{ pid: PidMode; network: PodNetwork }>([
  { pid: 'container', network: 'node' },
  { pid: 'pod', network: 'node' },
  { pid: 'container', network: 'pod' },
])('PID namespace of the $pid, network of the $network', ({ pid, network }) => {
  const noLockLeft = async (pod: Pod) => {
    if (network === 'pod') expect(await criuLockIn(pod)).toBe(false);
  };

  test('a new pod restores the checkpoint of a removed one', async () => {
    const job = `new-pod-${pid}-${network}`;
    const env = jobEnv(job);
    const first = await node.runPod(`first-${pid}-${network}`, pid, network);
    const c0 = await node.startCounter(first, { name: 'job', attempt: 0, env, command: TWO_PROCESSES });
    await waitCount(job, 5);
    const at = await finalize(node, c0, job);
    await node.removePod(first);

    const second = await node.runPod(`second-${pid}-${network}`, pid, network);
    const c1 = await node.startCounter(second, { name: 'job', attempt: 0, env, command: TWO_PROCESSES });
    await expectRestored(node, { pod: second, id: c1, attempt: 0, job }, at);
    await noLockLeft(second);
    await node.removePod(second);
  });

  test('attempt 1 of the container in the same pod restores (kubelet restart)', async () => {
    const job = `same-pod-${pid}-${network}`;
    const env = jobEnv(job);
    const pod = await node.runPod(`same-${pid}-${network}`, pid, network);
    const c0 = await node.startCounter(pod, { name: 'job', attempt: 0, env, command: TWO_PROCESSES });
    await waitCount(job, 5);
    const at = await finalize(node, c0, job);
    await noLockLeft(pod);

    const c1 = await node.startCounter(pod, { name: 'job', attempt: 1, env, command: TWO_PROCESSES });
    await expectRestored(node, { pod, id: c1, attempt: 1, job }, at);
    await noLockLeft(pod);
    await node.removePod(pod);
  });
});

/**
 * A pod hardened as clusters enforce it (the restricted Pod Security
 * Standard, with a read-only root): no capabilities at all, no_new_privs,
 * the runtime's default seccomp profile, a read-only root filesystem. CRIU
 * restores it from outside with the node's privileges; the job's own stay
 * as they were.
 */
test('a hardened container (read-only root, no capabilities, no_new_privs, RuntimeDefault seccomp) restores in a new pod', async () => {
  const job = 'hardened';
  const env = jobEnv(job);
  const securityContext = {
    readonly_rootfs: true,
    no_new_privs: true,
    capabilities: { drop_capabilities: ['ALL'] },
    seccomp: { profile_type: 0 }, // RuntimeDefault
  };
  const first = await node.runPod('hardened-first', 'container');
  const c0 = await node.startCounter(first, { name: 'job', attempt: 0, env, command: TWO_PROCESSES, securityContext });
  await waitCount(job, 5);
  // What the job runs under: the same after its restore.
  const status = (id: string) =>
    node.crictl(['exec', id, 'grep', '-E', '^(CapEff|NoNewPrivs|Seccomp):', '/proc/1/status']);
  const before = await status(c0);
  expect(before).toMatch(/CapEff:\s+0+\n/);
  expect(before).toMatch(/NoNewPrivs:\s+1/);
  expect(before).toMatch(/Seccomp:\s+2/);
  const at = await finalize(node, c0, job);
  await node.removePod(first);

  const second = await node.runPod('hardened-second', 'container');
  const c1 = await node.startCounter(second, { name: 'job', attempt: 0, env, command: TWO_PROCESSES, securityContext });
  await expectRestored(node, { pod: second, id: c1, attempt: 0, job }, at);
  expect(await status(c1)).toBe(before);
  await node.removePod(second);
});

/**
 * A job listening on its pod's own IP (as `hostname -i` binds do) cannot be
 * restored in a new pod, which has another IP. CRIU locks the pod's network
 * for the restore and, failing, left it locked: the fresh start (and the
 * whole pod) had no network, and this job hung connecting to itself. Now the
 * lock is taken off, the job starts fresh and runs, and the reason names the
 * address and the fix.
 */
test("a job listening on its pod's IP: attempt 1 in the same pod restores; in a new pod it starts fresh with a network, and the reason says why", async () => {
  const job = 'pod-net-bound';
  const env = jobEnv(job);
  const image = await ensureImage(node.containerd.withNamespace(CRI_NAMESPACE), PYTHON_IMAGE);
  const command = ['python3', '-c', LISTENS_ON_POD_IP];
  const first = await node.runPod('pod-net-bound-first', 'container', 'pod');
  const c0 = await node.startCounter(first, { name: 'job', attempt: 0, env, command, image });
  await waitCount(job, 5);
  const at = await finalize(node, c0, job);
  // The same pod keeps its IP: the listener is bound again, the job goes on.
  const again = await node.startCounter(first, { name: 'job', attempt: 1, env, command, image });
  await waitCount(job, at + 3);
  expect((await readShimState(node.runcRoot(CRI_NAMESPACE), again))?.restoredFrom).toBeTruthy();
  expect(fs.readFileSync(jobFile(job, 'starts'), 'utf8').trim().split('\n')).toHaveLength(1);
  await finalize(node, again, job);
  await node.removePod(first);

  const second = await node.runPod('pod-net-bound-second', 'container', 'pod');
  const c1 = await node.startCounter(second, { name: 'job', attempt: 0, env, command, image });
  // Fresh, in the new pod: it connected to itself on its new address, and counts.
  await waitFor('the fresh start counting', () =>
    /count 3 10\.88\.7\.\d+\n/.test(output(second, 'job', 0)) ? true : undefined,
  );
  const addresses = fs.readFileSync(jobFile(job, 'starts'), 'utf8').trim().split('\n');
  expect(addresses).toHaveLength(2);
  expect(addresses[0]).not.toBe(addresses[1]);
  const failure = (await listed(node, c1))?.lastRestoreFailure;
  expect(failure?.message).toMatch(/Can't bind inet socket .*Cannot assign requested address/);
  expect(failure?.message).toMatch(/bound to an IP address this container does not have .*listen on all addresses/);
  expect(await criuLockIn(second)).toBe(false);
  expect(node.logLines().some((l) => l.container === c1 && /network lock taken off/.test(String(l.msg)))).toBe(true);
  await node.removePod(second);
});

/**
 * A job that listens on its own pod's address (eth0's) and keeps a connection to itself open; it appends that
 * address to /work/starts at each start and prints "count N ADDRESS" each 100 ms.
 */
const LISTENS_ON_POD_IP = [
  'import fcntl, os, socket, struct, time',
  'probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
  'SIOCGIFADDR = 0x8915',
  'ip = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", b"eth0"))[20:24])',
  'server = socket.socket()',
  'server.bind((ip, 7000))',
  'server.listen()',
  'client = socket.create_connection((ip, 7000), timeout=10)',
  'peer, _ = server.accept()',
  'with open("/work/starts", "a") as f:',
  '    f.write(ip + "\\n")',
  'n = 0',
  'while True:',
  '    n += 1',
  '    with open("/work/count.tmp", "w") as f:',
  '        f.write(str(n))',
  '    os.rename("/work/count.tmp", "/work/count")',
  '    print("count", n, ip, flush=True)',
  '    time.sleep(0.1)',
].join('\n');

test("the job's shared memory in its pod's /dev/shm comes back in the new pod", async () => {
  const job = 'pod-shm';
  const env = jobEnv(job);
  // POSIX shared memory is a file in /dev/shm, the pod's own tmpfs on the host; the job keeps it open (mapped, as a rule).
  const command = [
    '/bin/sh',
    '-c',
    'echo job state > /dev/shm/job-state; exec 3</dev/shm/job-state; exec /usr/bin/counter',
  ];
  const first = await node.runPod('shm-first', 'container');
  const c0 = await node.startCounter(first, { name: 'job', attempt: 0, env, command });
  await waitCount(job, 5);
  const at = await finalize(node, c0, job);
  await node.removePod(first);

  // The new pod's /dev/shm starts empty: without the file, CRIU could not restore the job (it holds it open).
  const second = await node.runPod('shm-second', 'container');
  const c1 = await node.startCounter(second, { name: 'job', attempt: 0, env, command });
  await expectRestored(node, { pod: second, id: c1, attempt: 0, job }, at);
  expect(await node.crictl(['exec', c1, 'cat', '/dev/shm/job-state'])).toMatch(/^job state\n?$/);
  await node.removePod(second);
});

test("a restore that fails after writing the pod's /dev/shm takes its files back: the fresh start finds none", async () => {
  const job = 'pod-shm-fails';
  const env = jobEnv(job);
  // A fresh start notes in its work dir whether /dev/shm already held the file.
  const command = [
    '/bin/sh',
    '-c',
    '[ -e /dev/shm/job-state ] && echo found >> /work/shm-seen; echo job state > /dev/shm/job-state; exec 3</dev/shm/job-state; exec /usr/bin/counter',
  ];
  const first = await node.runPod('shm-fails-first', 'container');
  const c0 = await node.startCounter(first, { name: 'job', attempt: 0, env, command });
  await waitCount(job, 5);
  await finalize(node, c0, job);
  await node.removePod(first);
  // One flipped byte in a page image: found while CRIU restores, after the /dev/shm files were written.
  damagePageImage(path.join(storage, 'checkpoint', CRI_NAMESPACE, job, 'current'));

  const second = await node.runPod('shm-fails-second', 'container');
  const c1 = await node.startCounter(second, { name: 'job', attempt: 0, env, command });
  expect((await listed(node, c1))?.lastRestoreFailure).toMatchObject({ reason: 'corrupt' });
  await waitFor('a fresh start', () => (starts(job) === 2 ? true : undefined));
  expect(fs.existsSync(jobFile(job, 'shm-seen'))).toBe(false);
  await node.removePod(second);
});

test('a job with a terminal (tty: true): a new pod restores it; after a restore that failed it starts fresh with its terminal', async () => {
  const job = 'pod-tty';
  const env = jobEnv(job);
  // Says so when it starts on a terminal (containerd's log strips the terminal's \r).
  const command = ['/bin/sh', '-c', '[ -t 1 ] && echo on a terminal; /usr/bin/counter & wait'];
  const tty = { name: 'job', env, command, tty: true };
  const onTerminal = /stdout F on a terminal\n/;
  const first = await node.runPod('tty-first', 'container');
  const c0 = await node.startCounter(first, { ...tty, attempt: 0 });
  await waitCount(job, 5);
  expect(output(first, 'job', 0)).toMatch(onTerminal);
  const at = await finalize(node, c0, job);
  await node.removePod(first);

  // What the restored job prints comes through the terminal containerd was handed after the restore.
  const second = await node.runPod('tty-second', 'container');
  const c1 = await node.startCounter(second, { ...tty, attempt: 0 });
  await expectRestored(node, { pod: second, id: c1, attempt: 0, job }, at);
  expect(output(second, 'job', 0)).not.toMatch(onTerminal);
  await finalize(node, c1, job);
  await node.removePod(second);

  // Found while CRIU restores, after runc was given a console socket: the terminal goes to containerd only
  // after a restore that worked (core/console-relay.ts), so the fresh start still has containerd's.
  damagePageImage(path.join(storage, 'checkpoint', CRI_NAMESPACE, job, 'current'));
  const third = await node.runPod('tty-third', 'container');
  const c2 = await node.startCounter(third, { ...tty, attempt: 0 });
  expect((await listed(node, c2))?.lastRestoreFailure).toMatchObject({ reason: 'corrupt' });
  await waitFor('a fresh start', () => (starts(job) === 2 ? true : undefined));
  await waitFor('the fresh start printing on its terminal', () =>
    onTerminal.test(output(third, 'job', 0)) && /stdout F count 2\n/.test(output(third, 'job', 0)) ? true : undefined,
  );
  expect(await node.containerState(c2)).toBe('CONTAINER_RUNNING');
  await node.removePod(third);
});

/**
 * A pod's emptyDir (scratch that lives as long as its pod: kubelet's
 * `pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`, bound in by the CRI
 * plugin) is new and empty in the new pod. The job spilled a file there and
 * holds it open (CRIU needs it to restore the job at all), and left a
 * symlink to it (closed: only its absence would tell). Stopped by finalize,
 * or left running by a periodic checkpoint before the pod is lost.
 */
/** What the job writes there; its command computes the number, so the spec (kept in the checkpoint) does not hold it. */
const SPILLED = 'spilled arch-emptydir-42';

/** kubelet's subPath binds made by a test, unmounted after it (whatever became of it). */
const subPathBinds: string[] = [];
afterEach(async () => {
  for (const m of subPathBinds.splice(0)) await execa('umount', [m], { reject: false });
});

/**
 * `subPath`: the container mounts the emptyDir's subdirectory `tmp`, as
 * kubelet does it (bound at `<pod dir>/volume-subpaths/<volume>/<container>/<index>`).
 */
async function emptyDirJob(on: CriTestNode, job: string, left: boolean, subPath = false): Promise<void> {
  const env = jobEnv(job);
  const command = [
    '/bin/sh',
    '-c',
    'mkdir /scratch/sub && echo spilled arch-emptydir-$((6*7)) > /scratch/sub/spill && ln -s sub/spill /scratch/latest && exec 3</scratch/sub/spill; exec /usr/bin/counter',
  ];
  const emptyDir = async () => {
    const dir = podEmptyDir(on);
    const pod = path.resolve(dir, '../../..');
    if (!subPath) return [{ containerPath: '/scratch', hostPath: dir }];
    fs.mkdirSync(path.join(dir, 'tmp'), { mode: 0o777 });
    const bind = path.join(pod, 'volume-subpaths/scratch/job/0');
    fs.mkdirSync(bind, { recursive: true });
    await execa('mount', ['--bind', path.join(dir, 'tmp'), bind]);
    subPathBinds.push(bind);
    return [{ containerPath: '/scratch', hostPath: bind }];
  };
  const first = await on.runPod(`${job}-first`, 'container');
  const c0 = await on.startCounter(first, { name: 'job', attempt: 0, env, command, mounts: await emptyDir() });
  await waitCount(job, 5);
  const at = await checkpointThenLosePod(on, first, { id: c0, job }, left);

  const second = await on.runPod(`${job}-second`, 'container');
  const mounts = await emptyDir();
  // What an init container of the new pod wrote there first: a name of the job's (replaced) and one of its own (left).
  fs.writeFileSync(path.join(mounts[0]!.hostPath, 'latest'), 'downloaded by init');
  fs.writeFileSync(path.join(mounts[0]!.hostPath, 'input'), 'downloaded by init');
  const c1 = await on.startCounter(second, { name: 'job', attempt: 0, env, command, mounts });
  // Left running, the job counted on after `at` was read: its checkpoint's count is a little past it.
  await expectRestored(
    on,
    { pod: second, id: c1, attempt: 0, job },
    at,
    left ? LEFT_RUNNING_PRINTING : COUNTER_PRINTING,
  );
  expect(await on.crictl(['exec', c1, 'cat', '/scratch/latest'])).toBe(SPILLED);
  expect(await on.crictl(['exec', c1, 'cat', '/scratch/input'])).toBe('downloaded by init');
  // Written where the new pod's kubelet keeps it (with subPath: in the emptyDir's subdirectory).
  const volume = subPath
    ? path.join(mounts[0]!.hostPath, '../../../../volumes/kubernetes.io~empty-dir/scratch/tmp')
    : mounts[0]!.hostPath;
  expect(fs.readFileSync(path.join(volume, 'sub/spill'), 'utf8')).toBe(`${SPILLED}\n`);
  await on.removePod(second);
}

test.each(['finalize', 'a checkpoint left running, then the pod lost'])(
  "the job's files in its pod's emptyDir come back in the new pod: %s",
  async (how) => {
    const job = how === 'finalize' ? 'pod-emptydir' : 'pod-emptydir-lost';
    await emptyDirJob(node, job, how !== 'finalize');
    // Unencrypted, the archive holds them as written (the control for the encrypted stores below).
    expect(filesHolding(path.join(storage, 'checkpoint', CRI_NAMESPACE, job), SPILLED)).toEqual([
      expect.stringMatching(/\/volume-0\.tar$/),
    ]);
  },
);

test("a subPath of the pod's emptyDir comes back in the new pod", () =>
  emptyDirJob(node, 'pod-emptydir-subpath', false, true));

/**
 * A job that crashed (OOM-killed, a failed node-local dependency) is started
 * again by the kubelet in the same pod, from its last periodic checkpoint:
 * its emptyDir outlived it, holding what the job wrote after that
 * checkpoint. The job writes a numbered line per tick into a file there that
 * it holds open (without O_APPEND: CRIU checks its size), so the restored
 * job finds the file as its memory left it and goes on with the next line.
 */
test("attempt 1 after a crash in the same pod finds the pod's emptyDir as at the checkpoint", async () => {
  const job = 'pod-emptydir-crash';
  const env = jobEnv(job);
  const command = [
    '/bin/sh',
    '-c',
    'exec 3>/scratch/progress; (i=0; while :; do i=$((i+1)); echo line $i >&3; sleep 0.1; done) & exec /usr/bin/counter',
  ];
  const dir = podEmptyDir(node);
  const mounts = [{ containerPath: '/scratch', hostPath: dir }];
  const progress = () => fs.readFileSync(path.join(dir, 'progress'), 'utf8');
  const pod = await node.runPod(job, 'container');
  const c0 = await node.startCounter(pod, { name: 'job', attempt: 0, env, command, mounts });
  await waitCount(job, 5);
  const at = count(job);
  await checkpointLeftRunning(node, c0);
  await waitCount(job, at + 5); // it went on writing past its checkpoint
  const beforeCrash = progress().length;
  await node.crictl(['stop', '--timeout', '0', c0]);
  await waitExited(node, c0);

  const c1 = await node.startCounter(pod, { name: 'job', attempt: 1, env, command, mounts });
  await expectRestored(node, { pod, id: c1, attempt: 1, job }, at, LEFT_RUNNING_PRINTING);
  await waitFor('the restored job wrote past the crashed one', () =>
    progress().length > beforeCrash ? true : undefined,
  );
  // One line per number, in order: nothing the crashed run wrote after the checkpoint is left in between.
  const lines = progress().trim().split('\n');
  expect(lines).toEqual(lines.map((_, i) => `line ${i + 1}`));
  expect(fs.readdirSync(dir)).toEqual(['progress']); // what the restore moved aside is gone once it succeeded
  await node.removePod(pod);
});

/**
 * A persistent volume (here a host directory, which outlives pods as a PV
 * does; the CRI plugin binds it in the same way) that only this job writes,
 * named in ARCH_ROLLBACK_VOLUMES: the job writes its progress to a file it
 * holds open there. A checkpoint left running, the job writes on, its pod is
 * lost; in the new pod its file is cut back to the checkpoint and it goes
 * on, every line once. Without the setting CRIU refuses the grown file and
 * the job starts over from nothing (work-dir-files.test.ts shows that).
 */
test('a new pod on the same persistent volume: the file the job writes there is cut back to its checkpoint', async () => {
  const job = 'pod-pv';
  const env = { ...jobEnv(job), ARCH_ROLLBACK_VOLUMES: '/data' };
  const command = [
    '/bin/sh',
    '-c',
    'exec 3>/data/progress; (i=0; while :; do i=$((i+1)); echo line $i >&3; sleep 0.1; done) & exec /usr/bin/counter',
  ];
  const pv = path.join(storage, 'pv', job);
  fs.mkdirSync(pv, { recursive: true });
  const mounts = [{ containerPath: '/data', hostPath: pv }];
  const progress = () => fs.readFileSync(path.join(pv, 'progress'), 'utf8');
  const first = await node.runPod(`${job}-first`, 'container');
  const c0 = await node.startCounter(first, { name: 'job', attempt: 0, env, command, mounts });
  await waitCount(job, 5);
  const at = await checkpointThenLosePod(node, first, { id: c0, job }, true);
  const lost = progress().length;

  const second = await node.runPod(`${job}-second`, 'container');
  const c1 = await node.startCounter(second, { name: 'job', attempt: 0, env, command, mounts });
  await expectRestored(node, { pod: second, id: c1, attempt: 0, job }, at, LEFT_RUNNING_PRINTING);
  const cut = node.logLines().find((l) => l.volume === '/data' && Array.isArray(l.files));
  expect(cut?.files).toEqual([{ path: 'progress', from: lost, to: expect.any(Number) }]);
  await waitFor('the restored job wrote past the lost one', () => (progress().length > lost ? true : undefined));
  const lines = progress().trim().split('\n');
  expect(lines).toEqual(lines.map((_, i) => `line ${i + 1}`));
  await node.removePod(second);
});

/**
 * A pod with a large emptyDir (a dataset cache) beside its scratch: reading
 * the cache while the job is stopped would stall it at every checkpoint, so
 * the node keeps an emptyDir only up to ARCH_EMPTYDIR_MAX_BYTES (here 1 MiB,
 * as this node's settings would say). The scratch comes back in the new pod,
 * the cache is left to the new pod (its init containers download it again),
 * and the checkpoint says so.
 */
test("an emptyDir over the node's ARCH_EMPTYDIR_MAX_BYTES is not kept; the job's scratch beside it is", async () => {
  const job = 'pod-emptydir-limit';
  const env = jobEnv(job);
  const command = [
    '/bin/sh',
    '-c',
    'exec 4</cache/dataset; echo spilled > /scratch/spill && exec 3</scratch/spill; exec /usr/bin/counter',
  ];
  const podVolumes = (cacheBytes: number) => {
    const scratch = podEmptyDir(node);
    const cache = podEmptyDir(node, 'cache', path.resolve(scratch, '../../..'));
    fs.writeFileSync(path.join(cache, 'dataset'), Buffer.alloc(cacheBytes, 7)); // what an init container downloaded
    return [
      { containerPath: '/scratch', hostPath: scratch },
      { containerPath: '/cache', hostPath: cache },
    ];
  };
  const first = await node.runPod(`${job}-first`, 'container');
  const c0 = await node.startCounter(first, { name: 'job', attempt: 0, env, command, mounts: podVolumes(2 << 20) });
  await waitCount(job, 5);
  const at = count(job);
  const limited = { ...node.ctx, settings: { ...node.ctx.settings, emptyDirMaxBytes: 1 << 20 } };
  const r = await checkpointLeftRunning(node, c0, limited);
  expect(r.manifest.volumes?.map((v) => v.destination)).toEqual(['/scratch']);
  expect(r.manifest.volumesLeft).toEqual([{ destination: '/cache', bytes: expect.any(Number) }]);
  expect(fs.readdirSync(r.dir)).not.toContain('volume-1.tar');
  // The log says so, and names what the job holds open there (a restore in a new pod needs it there again).
  expect(node.logLines().filter((l) => l.container === c0 && l.volume === '/cache')).toEqual([
    expect.objectContaining({
      level: 40,
      open: ['/cache/dataset'],
      msg: expect.stringMatching(/over ARCH_EMPTYDIR_MAX_BYTES.*\/cache\/dataset open there.*Fix: raise/),
    }),
  ]);
  await waitCount(job, at + 3);
  await node.removePod(first);

  const second = await node.runPod(`${job}-second`, 'container');
  const mounts = podVolumes(2 << 20); // the new pod's cache: its own init container downloaded the same dataset
  fs.appendFileSync(path.join(mounts[1]!.hostPath, 'dataset.sha'), 'a file only the new pod has');
  const c1 = await node.startCounter(second, { name: 'job', attempt: 0, env, command, mounts });
  await expectRestored(node, { pod: second, id: c1, attempt: 0, job }, at, LEFT_RUNNING_PRINTING);
  expect(await node.crictl(['exec', c1, 'cat', '/scratch/spill'])).toBe('spilled');
  expect(fs.readdirSync(mounts[1]!.hostPath).sort()).toEqual(['dataset', 'dataset.sha']); // left as the new pod made it
  await node.removePod(second);
});

/**
 * A job whose restored copy dies soon, every time (here: 2 s after it sees a
 * file on a host volume; in life a device, a driver, a peer that is gone):
 * the kubelet creates attempt after attempt in the same pod, each restored
 * from the same checkpoint. Each crash is counted when containerd deletes
 * the exited task, from the exit the node's worker recorded. After
 * ARCH_RESTORE_CRASH_LIMIT (3) restores the next attempt starts fresh,
 * `arch-cli ls` says why, and the checkpoint is still there.
 */
test('attempts that crash soon after each restore: the fourth starts fresh and ls says crash-loop', async () => {
  const exits = await startExitRecorder({
    containerd: node.containerd,
    settings: node.ctx.settings,
    log: node.ctx.log,
  });
  try {
    const job = 'pod-crash-loop';
    const env = jobEnv(job);
    const trigger = fs.mkdtempSync(path.join(storage, 'trigger-'));
    const mounts = [{ containerPath: '/trigger', hostPath: trigger }];
    const command = [
      '/bin/sh',
      '-c',
      '/usr/bin/counter & while :; do [ -e /trigger/crash ] && sleep 2 && exit 3; sleep 0.1; done',
    ];
    const pod = await node.runPod(job, 'container');
    const c0 = await node.startCounter(pod, { name: 'job', attempt: 0, env, command, mounts });
    await waitCount(job, 5);
    await finalize(node, c0, job);
    const ckDir = path.join(storage, 'checkpoint', CRI_NAMESPACE, job);
    const current = fs.readlinkSync(path.join(ckDir, 'current'));
    fs.writeFileSync(path.join(trigger, 'crash'), '');
    for (let attempt = 1; attempt <= 3; attempt++) {
      const c = await node.startCounter(pod, { name: 'job', attempt, env, command, mounts });
      await waitExited(node, c);
      // containerd deletes an exited task at once: its delete counted the crash (the lease says so).
      const said = (msg: string) => node.logLines().some((l) => l.container === c && l.msg === msg);
      await waitFor(`attempt ${attempt}'s crash counted`, () =>
        said(`the restored job crashed soon after its restore (${attempt} in a row)`) ? true : undefined,
      );
      expect(said('restored from checkpoint')).toBe(true);
    }
    expect(starts(job)).toBe(1); // three restores, no fresh start yet
    fs.rmSync(path.join(trigger, 'crash'));
    const c4 = await node.startCounter(pod, { name: 'job', attempt: 4, env, command, mounts });
    const failure = (await listed(node, c4))?.lastRestoreFailure;
    expect(failure).toMatchObject({ reason: 'crash-loop' });
    expect(failure?.message).toMatch(
      /the job crashed soon after each of its last 3 restores \(last: exited with code 3 .* after its restore on /,
    );
    expect(await archCli(node, ['ls', '--local', '--namespace', CRI_NAMESPACE])).toMatch(/FAILED \(crash-loop\)/);
    await waitFor('a fresh start', () => (starts(job) === 2 ? true : undefined));
    expect(output(pod, 'job', 4)).toMatch(COUNTER_PRINTING.fresh);
    // Not restored, not removed: the checkpoint is there until the fresh job's own replace it.
    expect(fs.readlinkSync(path.join(ckDir, 'current'))).toBe(current);
    await node.removePod(pod);
  } finally {
    await exits.stop();
  }
});

describe('encrypted stores', () => {
  const encrypted: Record<string, CriTestNode> = {};
  beforeAll(async () => {
    const key = path.join(storage, 'store.key');
    fs.writeFileSync(key, `${crypto.randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    encrypted['store format 1'] = await startCriNode('cri-k1', { ARCH_STORE_KEY_FILE: key });
    encrypted['store format 2'] = await startCriNode('cri-k2', { ARCH_STORE_FORMAT: '2', ARCH_STORE_KEY_FILE: key });
  }, 240_000);
  afterEach(async () => {
    for (const n of Object.values(encrypted)) await n.removeAllPods();
  });

  // The emptyDir's archive is the job's data, as its memory is: sealed or chunked with it, never stored in plaintext.
  test.each(['store format 1', 'store format 2'])(
    "the emptyDir's files are encrypted in the store and come back in the new pod: %s",
    async (which) => {
      const job = `pod-emptydir-k${which.slice(-1)}`;
      await emptyDirJob(encrypted[which]!, job, false);
      const stored = path.join(storage, 'checkpoint', CRI_NAMESPACE, job); // its checkpoints, and its chunks in format 2
      expect(fs.readdirSync(stored).length).toBeGreaterThan(0);
      expect(filesHolding(stored, SPILLED)).toEqual([]);
    },
  );
});

/**
 * Python's multiprocessing with the forkserver start method (the default on
 * Linux from Python 3.14, and what spawn does too) opens its semaphores by
 * name in /dev/shm: glibc makes each under a temporary name, maps it, and
 * gives it its own name by a link, so the job maps a file whose mapped name
 * is gone while the file is not. CRIU dumps it through a second name (a
 * link remap) that must be in the pod's /dev/shm again for the restore; a
 * pod's /dev/shm is ARCH's to carry. Stopped by finalize, and left running
 * by a periodic checkpoint before the pod is lost (CRIU removes the second
 * name from the running pod's /dev/shm then, as it must).
 */
test.each(['finalize', 'a checkpoint left running, then the pod lost'])(
  'a Python job with a forkserver worker pool continues in a new pod: %s',
  async (how) => {
    const left = how !== 'finalize';
    const job = left ? 'pod-python-lost' : 'pod-python';
    const env = { ...jobEnv(job), PYJOB_MODE: 'forkserver', PYJOB_STATE: '/work' };
    const image = await ensureImage(node.containerd.withNamespace(CRI_NAMESPACE), PYTHON_IMAGE);
    const first = await node.runPod(`${job}-first`, 'container');
    const c0 = await node.startCounter(first, { name: 'job', attempt: 0, env, image });
    await waitCount(job, 5);
    const at = await checkpointThenLosePod(node, first, { id: c0, job }, left, async () => {
      expect(await node.crictl(['exec', c0, 'ls', '/dev/shm'])).not.toMatch(/link_remap/);
    });

    const second = await node.runPod(`${job}-second`, 'container');
    const c1 = await node.startCounter(second, { name: 'job', attempt: 0, env, image });
    await expectRestored(node, { pod: second, id: c1, attempt: 0, job }, at, {
      fresh: /pyjob start|FAIL/,
      goesOn: () => /stdout F pyjob \d+ forkserver ok\n/,
    });
    // CRIU took its second names away once the job had its files back.
    expect(await node.crictl(['exec', c1, 'ls', '/dev/shm'])).not.toMatch(/link_remap/);
    await node.removePod(second);
  },
);

describe('a sandbox whose PID 1 does not reap (sleep), PID namespace of the pod', () => {
  let sleepy: CriTestNode;
  beforeAll(async () => {
    sleepy = await startCriNode('cri-sleep', {}, { sandbox: 'sleep' });
  }, 120_000);
  afterEach(() => sleepy?.removeAllPods());
  afterAll(() => sleepy?.stop());

  test('a new pod restores: no orphan holds a PID there yet', async () => {
    const job = 'sleep-sandbox-new-pod';
    const env = jobEnv(job);
    const first = await sleepy.runPod('sleepy-first', 'pod');
    const c0 = await sleepy.startCounter(first, { name: 'job', attempt: 0, env, command: TWO_PROCESSES });
    await waitCount(job, 5);
    const at = await finalize(sleepy, c0, job);
    await sleepy.removePod(first);

    const second = await sleepy.runPod('sleepy-second', 'pod');
    const c1 = await sleepy.startCounter(second, { name: 'job', attempt: 0, env, command: TWO_PROCESSES });
    await expectRestored(sleepy, { pod: second, id: c1, attempt: 0, job }, at);
    await sleepy.removePod(second);
  });

  test('attempt 1 in the same pod cannot have its PIDs back: ls says why, the job starts fresh', async () => {
    const job = 'sleep-sandbox';
    const env = jobEnv(job);
    const pod = await sleepy.runPod('sleepy', 'pod');
    // The job keeps a file in its emptyDir (written once): the failed restore writes it back first, then must undo that.
    const dir = podEmptyDir(sleepy);
    const mounts = [{ containerPath: '/scratch', hostPath: dir }];
    const command = [
      '/bin/sh',
      '-c',
      '[ -e /scratch/note ] || echo by the job > /scratch/note; /usr/bin/counter & wait',
    ];
    const c0 = await sleepy.startCounter(pod, { name: 'job', attempt: 0, env, command, mounts });
    await waitCount(job, 5);
    await finalize(sleepy, c0, job);
    fs.writeFileSync(path.join(dir, 'note'), 'by a sidecar, after the checkpoint');

    const c1 = await sleepy.startCounter(pod, { name: 'job', attempt: 1, env, command, mounts });
    const failure = (await listed(sleepy, c1))?.lastRestoreFailure;
    expect(failure).toMatchObject({ reason: 'pid-in-use' });
    expect(failure?.message).toMatch(/shares with its pod.*Fix: .*own PID namespace.*Can't fork for \d+: File exists/s);
    const table = await archCli(sleepy, ['ls', '--local', '--namespace', CRI_NAMESPACE]);
    expect(table).toMatch(/FAILED \(pid-in-use\)/);
    await waitFor('a fresh start', () => (starts(job) === 2 ? true : undefined));
    // The fresh start found the emptyDir as the restore found it.
    expect(fs.readdirSync(dir)).toEqual(['note']);
    expect(fs.readFileSync(path.join(dir, 'note'), 'utf8')).toBe('by a sidecar, after the checkpoint');
    await sleepy.removePod(pod);
  });
});
