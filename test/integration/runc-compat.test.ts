import { execa } from 'execa';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { CheckpointStore } from '../../core/store.js';
import { realRunc } from '../support/arch-env.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { makeRuncBundle } from '../support/direct-runc.js';
import { buildPgJobRootfs, buildRootfs, COUNTER_FILES, pgJobArgs } from '../support/images.js';

/**
 * arch-runc must be runc, with ARCH on too: the four differences runc's own
 * integration tests found (inherited descriptors, `runc run`, force-delete,
 * restore into a network namespace the container only joined).
 */
const RUNC = realRunc();
let node: ArchTestNode;
let work: string;
let storage: string;
let root: string;
let namespace: string;
const cgroupParent = `/arch-compat-${process.pid}`;
const ids: string[] = [];

beforeAll(async () => {
  await cleanupStaleNodes();
  node = await startArchNode('compat');
  work = fs.mkdtempSync('/tmp/arch-compat-');
  storage = path.join(work, 'ck');
  // runc's --root: its last part is the namespace ARCH files checkpoints under.
  namespace = `compat-${process.pid}`;
  root = path.join('/run/arch-compat', namespace);
  fs.mkdirSync(root, { recursive: true });
  await buildRootfs(path.join(work, 'rootfs'));
});

afterAll(async () => {
  for (const id of ids) {
    await execa(RUNC, ['--root', root, 'kill', '--all', id, 'KILL'], { reject: false, stdin: 'ignore' });
    await execa(RUNC, ['--root', root, 'delete', '--force', id], { reject: false, stdin: 'ignore' });
  }
  await stopAllNodes();
  if (node) fs.rmSync(path.dirname(node.archConfig), { recursive: true, force: true });
  fs.rmSync(root, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
  for (const c of fs.readdirSync('/sys/fs/cgroup'))
    fs.rmSync(path.join('/sys/fs/cgroup', c, cgroupParent), { recursive: true, force: true });
});

async function bundle(id: string, opts: { args?: string[]; env?: string[] } = {}): Promise<string> {
  ids.push(id);
  const dir = path.join(work, `bundle-${id}`);
  await makeRuncBundle(dir, path.join(work, 'rootfs'), {
    cgroupsPath: `${cgroupParent}/${id}`,
    args: opts.args,
    env: ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`, ...(opts.env ?? [])],
  });
  return dir;
}

/** arch-runc with this test node's settings; stdio: /dev/null, plus any descriptors given at their numbers. */
async function archRunc(args: string[], extraFds: number[] = []): Promise<number> {
  const stdio: (number | 'ignore')[] = ['ignore', 'ignore', 'ignore'];
  for (const fd of extraFds) stdio[fd] = fd;
  const p = spawn(ARCH_RUNC_BIN, ['--root', root, ...args], {
    env: { ...process.env, ARCH_CONFIG: node.archConfig },
    stdio,
  });
  return new Promise((resolve) => p.on('exit', (code) => resolve(code ?? 128)));
}

async function status(id: string): Promise<string> {
  const r = await execa(RUNC, ['--root', root, 'state', id], { reject: false });
  return r.exitCode === 0 ? (JSON.parse(r.stdout) as { status: string }).status : 'absent';
}

const countIn = (dir: string): number => Number(fs.readFileSync(path.join(dir, 'rootfs', COUNTER_FILES.count), 'utf8'));

test('--preserve-fds: the descriptors after stdio reach the container of an ARCH create', async () => {
  const id = `fds-${process.pid}`;
  const dir = await bundle(id, {
    args: ['/bin/sh', '-c', 'cat /proc/self/fd/3 > /from-fd3; cat /proc/self/fd/4 > /from-fd4; sleep 60'],
  });
  fs.writeFileSync(path.join(work, 'fd3'), 'three\n');
  fs.writeFileSync(path.join(work, 'fd4'), 'four\n');
  // Opened here so that the numbers are this process's; handed to arch-runc at 3 and 4.
  const fd3 = fs.openSync(path.join(work, 'fd3'), 'r');
  const fd4 = fs.openSync(path.join(work, 'fd4'), 'r');
  try {
    const stdio: (number | 'ignore')[] = ['ignore', 'ignore', 'ignore', fd3, fd4];
    const p = spawn(ARCH_RUNC_BIN, ['--root', root, 'create', '--preserve-fds', '2', '--bundle', dir, id], {
      env: { ...process.env, ARCH_CONFIG: node.archConfig },
      stdio,
    });
    expect(await new Promise((resolve) => p.on('exit', resolve))).toBe(0);
  } finally {
    fs.closeSync(fd3);
    fs.closeSync(fd4);
  }
  expect(fs.existsSync(path.join(root, id, 'arch.json'))).toBe(true); // an ARCH container
  expect(await archRunc(['start', id])).toBe(0);
  // The shell makes the file before cat writes into it: its content is the sign.
  const fromFd4 = path.join(dir, 'rootfs/from-fd4');
  await waitFor('the container read fd 4', () =>
    fs.existsSync(fromFd4) && fs.readFileSync(fromFd4, 'utf8').length > 0 ? true : undefined,
  );
  expect(fs.readFileSync(path.join(dir, 'rootfs/from-fd3'), 'utf8')).toBe('three\n');
  expect(fs.readFileSync(path.join(dir, 'rootfs/from-fd4'), 'utf8')).toBe('four\n');
});

test('`runc run -d` restores like create + start; `delete --force` of the running container keeps its checkpoint', async () => {
  const id = `run-${process.pid}`;
  const dir = await bundle(id, { env: ['COUNTER_INTERVAL_MS=50'] });
  expect(await archRunc(['run', '-d', '--bundle', dir, id])).toBe(0);
  expect(await status(id)).toBe('running');
  await waitFor('count >= 5', () => (countIn(dir) >= 5 ? true : undefined));
  const res = await checkpointContainer(node.ctx, { namespace, id, runcRoot: root });
  const atCheckpoint = countIn(dir);
  expect(await archRunc(['delete', id])).toBe(0);

  expect(await archRunc(['run', '-d', '--bundle', dir, id])).toBe(0);
  expect(await status(id)).toBe('running');
  await waitFor('count continues', () => (countIn(dir) > atCheckpoint + 3 ? true : undefined));
  expect(node.logLines().some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);

  // Killed by a force-delete while it runs: not a finished job.
  expect(await archRunc(['delete', '--force', id])).toBe(0);
  expect(await status(id)).toBe('absent');
  const store = new CheckpointStore(path.dirname(res.dir));
  expect(await store.current()).toBe(res.dir);
  expect(
    node
      .logLines()
      .some((l) => l.container === id && /force-deleted while running: checkpoint kept/.test(String(l.msg))),
  ).toBe(true);
});

test('a container in a network namespace it only joined is restored into that same namespace', async () => {
  // A pod: the app joins the sandbox's namespaces; the kubelet restarts the app inside the same sandbox.
  const sid = `sandbox-${process.pid}`;
  const id = `pod-app-${process.pid}`;
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`];
  await node.containerd.run({
    image: node.image,
    id: sid,
    args: ['/usr/bin/counter'],
    env: ['COUNTER_INTERVAL_MS=1000'],
    runcBinary: ARCH_RUNC_BIN,
    detach: true,
    logFile: path.join(work, `${sid}.out`),
  });
  const sandboxPid = (await node.containerd.waitStatus(sid, 'RUNNING', 15_000))!.pid;
  const app = () =>
    node.containerd.run({
      image: node.image,
      id,
      env,
      runcBinary: ARCH_RUNC_BIN,
      detach: true,
      logFile: path.join(work, `${id}-${Date.now()}.out`),
      extraFlags: ['--with-ns', `network:/proc/${sandboxPid}/ns/net`],
    });
  try {
    await app();
    await node.waitCount(id, 5);
    const res = await checkpointContainer(node.ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') });
    expect(res.manifest.runtime.networkLock).toBe('iptables');
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    const atCheckpoint = node.count(id);
    await node.containerd.removeContainer(id);

    await app();
    await node.containerd.waitStatus(id, 'RUNNING', 15_000);
    await node.waitCount(id, atCheckpoint + 3);
    expect(node.logLines().some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
    // And the sandbox's network is not left locked.
    const rules = await execa(
      'nsenter',
      ['-t', String(sandboxPid), '-n', 'sh', '-c', 'nft list ruleset; iptables-save'],
      { reject: false, all: true },
    );
    expect(String(rules.all ?? '')).not.toMatch(/CRIU/);
  } finally {
    await node.containerd.removeContainer(id).catch(() => undefined);
    await node.containerd.removeContainer(sid).catch(() => undefined);
  }
});

/** The state letter of process `pid` (T: stopped), from /proc. */
const procState = (pid: number): string => /\) (\S)/.exec(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))![1]!;

async function initPid(id: string): Promise<number> {
  return (JSON.parse((await execa(RUNC, ['--root', root, 'state', id])).stdout) as { pid: number }).pid;
}

test('a restored container is held from its create until its start, as runc holds a new one; a kill before the start reaches the job', async () => {
  const id = `held-${process.pid}`;
  const dir = await bundle(id, { env: ['COUNTER_INTERVAL_MS=50'] });
  expect(await archRunc(['run', '-d', '--bundle', dir, id])).toBe(0);
  await waitFor('count >= 5', () => (countIn(dir) >= 5 ? true : undefined));
  await checkpointContainer(node.ctx, { namespace, id, runcRoot: root });
  const atCheckpoint = countIn(dir);
  expect(await archRunc(['delete', id])).toBe(0);

  expect(await archRunc(['create', '--bundle', dir, id])).toBe(0);
  expect(node.logLines().filter((l) => l.container === id && l.msg === 'restored from checkpoint')).toHaveLength(1);
  const pid = await initPid(id);
  expect(procState(pid)).toBe('T');
  // Held: ten of the job's ticks pass without a count.
  await new Promise((r) => setTimeout(r, 500));
  expect(countIn(dir)).toBe(atCheckpoint);
  expect(procState(pid)).toBe('T');
  expect(await archRunc(['start', id])).toBe(0);
  await waitFor('count continues after the start', () => (countIn(dir) > atCheckpoint + 3 ? true : undefined));
  // runc's answer to a second start of a running container.
  expect(await archRunc(['start', id])).not.toBe(0);

  // Once more, and killed before its start: the held job takes the TERM as the running job it is.
  await checkpointContainer(node.ctx, { namespace, id, runcRoot: root });
  expect(await archRunc(['delete', id])).toBe(0);
  expect(await archRunc(['create', '--bundle', dir, id])).toBe(0);
  expect(procState(await initPid(id))).toBe('T');
  expect(await archRunc(['kill', id, 'TERM'])).toBe(0);
  await waitFor('the job ended on the TERM', async () => ((await status(id)) === 'stopped' ? true : undefined));
  expect(await archRunc(['delete', id])).toBe(0);
});

/** A bundle whose container has a user namespace of its own, root in it being host uid 100000 (its rootfs that user's). */
async function usernsBundle(
  id: string,
  from: string,
  opts: { args?: string[]; env: string[]; caps?: string[] },
): Promise<string> {
  ids.push(id);
  const dir = path.join(work, `bundle-${id}`);
  await makeRuncBundle(dir, from, {
    cgroupsPath: `${cgroupParent}/${id}`,
    args: opts.args,
    env: ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`, ...opts.env],
    edit: (spec) => {
      const map = [{ containerID: 0, hostID: 100_000, size: 65_536 }];
      spec.linux = {
        ...spec.linux,
        namespaces: [...(spec.linux?.namespaces ?? []), { type: 'user' }],
        uidMappings: map,
        gidMappings: map,
      };
      const caps = (spec.process as { capabilities?: Record<string, string[]> }).capabilities;
      if (caps && opts.caps)
        for (const set of ['bounding', 'effective', 'permitted'])
          caps[set] = [...new Set([...(caps[set] ?? []), ...opts.caps])];
    },
  });
  // On a path that user can walk.
  await execa('chown', ['-R', '100000:100000', path.join(dir, 'rootfs')]);
  fs.chmodSync(work, 0o755);
  return dir;
}

test('a container in a user namespace of its own (a Kubernetes pod with hostUsers: false) is restored where it was', async () => {
  const id = `userns-${process.pid}`;
  const dir = await usernsBundle(id, path.join(work, 'rootfs'), { env: ['COUNTER_INTERVAL_MS=50'] });
  expect(await archRunc(['run', '-d', '--bundle', dir, id])).toBe(0);
  await waitFor('count >= 5', () => (countIn(dir) >= 5 ? true : undefined));
  await checkpointContainer(node.ctx, { namespace, id, runcRoot: root });
  const atCheckpoint = countIn(dir);
  expect(await archRunc(['delete', id])).toBe(0);

  expect(await archRunc(['run', '-d', '--bundle', dir, id])).toBe(0);
  await waitFor('count continues', () => (countIn(dir) > atCheckpoint + 3 ? true : undefined));
  expect(node.logLines().some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
  expect(
    fs
      .readFileSync(path.join(dir, 'rootfs', COUNTER_FILES.starts), 'utf8')
      .trim()
      .split('\n'),
  ).toHaveLength(1);
  expect(await archRunc(['delete', '--force', id])).toBe(0);
});

/**
 * A job whose processes are not all the container's root: its own
 * PostgreSQL server (test/support/pg-job.sh), running as postgres, in a user
 * namespace of its own. Each step commits a row and checks the table
 * against the running total the job keeps in memory, so a database and a
 * job restored from different moments fail the step. Where ARCH lacks
 * CAP_SYS_RESOURCE (these VMs), CRIU cannot read a non-root process's
 * limits in the node's own user namespace (docker.test.ts), but in one that
 * runc made it holds every capability.
 */
test('a job running as another user (its own PostgreSQL server) in a user namespace of its own is restored where it was, its table and its memory agreeing', async () => {
  const id = `pg-userns-${process.pid}`;
  const from = path.join(work, 'pg-rootfs');
  await buildPgJobRootfs(from);
  // What a container engine gives by default and the job needs to hand its directories to postgres and become it.
  const caps = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_SETUID', 'CAP_SETGID'];
  const dir = await usernsBundle(id, from, { args: pgJobArgs('/state/job.out'), env: [], caps });
  const out = path.join(dir, 'rootfs/state/job.out');
  const jobLines = () => (fs.existsSync(out) ? fs.readFileSync(out, 'utf8').split('\n').filter(Boolean) : []);
  const lastStep = () => Math.max(0, ...jobLines().map((l) => Number(/^pgjob (\d+) /.exec(l)?.[1] ?? 0)));
  const failures = () => jobLines().filter((l) => / FAIL\b|^pgjob error/.test(l));
  // Its own output beside a timeout: what the job, the server or initdb said.
  const stepReached = (n: number) =>
    waitFor(`pgjob step ${n}`, () => (lastStep() >= n ? true : undefined), 60_000).catch((err: unknown) => {
      const said = ['state/job.out', 'pg/server.log', 'pg/initdb.log'].map((f) => {
        const file = path.join(dir, 'rootfs', f);
        return `${f}: ${fs.existsSync(file) ? fs.readFileSync(file, 'utf8').slice(-1500) : '(none)'}`;
      });
      throw new Error(`${String(err)}\n${said.join('\n')}`);
    });
  expect(await archRunc(['run', '-d', '--bundle', dir, id])).toBe(0);
  await stepReached(5);
  await checkpointContainer(node.ctx, { namespace, id, runcRoot: root });
  const reached = lastStep();
  const linesAtCheckpoint = jobLines().length;
  expect(failures()).toEqual([]);
  expect(await archRunc(['delete', id])).toBe(0);

  expect(await archRunc(['run', '-d', '--bundle', dir, id])).toBe(0);
  await stepReached(reached + 5);
  const after = jobLines().slice(linesAtCheckpoint);
  expect(after[0]).toMatch(new RegExp(`^pgjob ${reached + 1} ok `));
  expect(after.filter((l) => / FAIL\b|^pgjob (start|error)/.test(l))).toEqual([]);
  expect(node.logLines().some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
  expect(fs.readFileSync(path.join(dir, 'rootfs/state/starts'), 'utf8').trim().split('\n')).toHaveLength(1);
  expect(await archRunc(['delete', '--force', id])).toBe(0);
}, 180_000);

/**
 * The same database job on a writable layer (an overlay, as containerd gives
 * every container), checkpointed while it runs (a periodic checkpoint), then
 * lost with its node: its processes killed, nothing deleted, its layer gone.
 * Created again on a fresh layer, it must go on from the checkpoint with the
 * data files as they were then: the rows committed after the checkpoint are
 * gone from the table and from the job's memory alike, so every step agrees.
 */
test('the database job checkpointed while it runs, then lost with its node: created again on a fresh layer, its table and its memory go on from the checkpoint', async () => {
  const id = `pg-lost-${process.pid}`;
  const lower = path.join(work, 'pg-rootfs');
  if (!fs.existsSync(path.join(lower, 'usr'))) await buildPgJobRootfs(lower);
  await execa('chown', ['-R', '100000:100000', lower]);
  const caps = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_SETUID', 'CAP_SETGID'];
  const empty = path.join(work, 'empty-rootfs');
  fs.mkdirSync(empty, { recursive: true });
  const dir = await usernsBundle(id, empty, { args: pgJobArgs('/state/job.out'), env: [], caps });
  const rootfs = path.join(dir, 'rootfs');
  /** A fresh writable layer over the image, mounted at the bundle's rootfs (what containerd's snapshotter does). */
  const mountLayer = async (n: number): Promise<string> => {
    const layer = path.join(work, `${id}-layer-${n}`);
    for (const d of ['upper', 'work']) fs.mkdirSync(path.join(layer, d), { recursive: true });
    await execa('chown', ['100000:100000', path.join(layer, 'upper')]);
    await execa('mount', [
      '-t',
      'overlay',
      'overlay',
      '-o',
      `lowerdir=${lower},upperdir=${layer}/upper,workdir=${layer}/work`,
      rootfs,
    ]);
    return layer;
  };
  const unmountLayer = () => execa('umount', [rootfs], { reject: false });
  const out = path.join(rootfs, 'state/job.out');
  const jobLines = () => (fs.existsSync(out) ? fs.readFileSync(out, 'utf8').split('\n').filter(Boolean) : []);
  const lastStep = () => Math.max(0, ...jobLines().map((l) => Number(/^pgjob (\d+) /.exec(l)?.[1] ?? 0)));
  const stepReached = (n: number) =>
    waitFor(`pgjob step ${n}`, () => (lastStep() >= n ? true : undefined), 60_000).catch((err: unknown) => {
      throw new Error(`${String(err)}\n${jobLines().slice(-10).join('\n')}`);
    });
  try {
    await mountLayer(1);
    expect(await archRunc(['run', '-d', '--bundle', dir, id])).toBe(0);
    await stepReached(5);
    const ck = await checkpointContainer(node.ctx, { namespace, id, runcRoot: root, leaveRunning: true });
    expect(ck.manifest.rootfs.files).toBeGreaterThan(0); // the layer (the database's files) is in the checkpoint
    // The job goes on past the checkpoint: rows the restore must not find again.
    const beyond = lastStep() + 5;
    await stepReached(beyond);

    // The node is lost: every process killed at once, nothing deleted through ARCH, the layer gone.
    await execa(RUNC, ['--root', root, 'kill', '--all', id, 'KILL'], { reject: false });
    await waitFor('the job is dead', async () => ((await status(id)) === 'stopped' ? true : undefined));
    await execa(RUNC, ['--root', root, 'delete', '--force', id]);
    await unmountLayer();

    // Created again on a fresh layer: restored from the checkpoint, data files and memory from the same moment.
    await mountLayer(2);
    expect(await archRunc(['run', '-d', '--bundle', dir, id])).toBe(0);
    const restoredLines = () => jobLines().filter((l) => /^pgjob \d+ /.test(l));
    // The layer came back as it was at the checkpoint: the job's output file too, so its last step is the checkpoint's.
    const atCheckpoint = lastStep();
    expect(atCheckpoint).toBeLessThan(beyond);
    await stepReached(atCheckpoint + 5);
    const after = restoredLines().filter((l) => Number(/^pgjob (\d+) /.exec(l)![1]) > atCheckpoint);
    expect(after[0]).toMatch(new RegExp(`^pgjob ${atCheckpoint + 1} ok `));
    expect(after.filter((l) => / FAIL\b/.test(l))).toEqual([]);
    expect(jobLines().filter((l) => /^pgjob (start|error)/.test(l))).toEqual(['pgjob start']);
    expect(node.logLines().some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
    expect(await archRunc(['delete', '--force', id])).toBe(0);
  } finally {
    await execa(RUNC, ['--root', root, 'kill', '--all', id, 'KILL'], { reject: false });
    await execa(RUNC, ['--root', root, 'delete', '--force', id], { reject: false });
    await unmountLayer();
  }
}, 240_000);
