import { execa } from 'execa';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { createNodeContext } from '../../core/context.js';
import { Runc } from '../../core/runc.js';
import { CheckpointStore } from '../../core/store.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { COUNTER_FILES } from '../support/images.js';
import { archRuncCreateOf, processesOfContainer, runsBelow } from '../support/proc-scan.js';

/**
 * The node runtime end to end on real runc, CRIU and containerd: a counter
 * container runs through arch-runc, is checkpointed, deleted and created
 * again, and must continue where it was — memory and files.
 */
let a: ArchTestNode;
let b: ArchTestNode;
let storage: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-storage-');
  a = await startArchNode('shim-a');
  b = await startArchNode('shim-b');
});

afterAll(async () => {
  await stopAllNodes();
  fs.rmSync(storage, { recursive: true, force: true });
});

async function checkpointAndRemove(node: ArchTestNode, id: string): Promise<number> {
  const res = await checkpointContainer(node.ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') });
  expect(fs.existsSync(path.join(res.dir, 'manifest.json'))).toBe(true);
  await node.containerd.waitStatus(id, 'STOPPED', 15_000);
  // The counter is dead now: its last written count is what memory held at the dump (±1 tick).
  const atCheckpoint = node.count(id);
  await node.containerd.removeContainer(id);
  return atCheckpoint;
}

/** ctr run a shell script (`sh -c`) in the test image through arch-runc, detached (its output to `logFile`). */
function runScript(node: ArchTestNode, id: string, env: string[], script: string, logFile?: string): Promise<void> {
  return node.containerd.run({
    image: node.image,
    id,
    env,
    args: ['/bin/sh', '-c', script],
    runcBinary: ARCH_RUNC_BIN,
    detach: true,
    ...(logFile ? { logFile } : {}),
  });
}

function startsOf(node: ArchTestNode, id: string): number {
  return node.readContainerFile(id, COUNTER_FILES.starts).trim().split('\n').length;
}

test('local mode: checkpoint, delete, create again → counter continues, files kept, deletions kept', async () => {
  const id = 'local-1';
  // 8 MiB of memory: page images large enough to be hashed in steps while CRIU restores them.
  const env = [
    'ARCH_ENABLE=1',
    `ARCH_CHECKPOINT_HOST_PATH=${storage}/local`,
    'COUNTER_START_FILES=1',
    'COUNTER_MEM_MB=8',
  ];
  const out1 = await a.runCounter(id, env);
  await a.waitCount(id, 15);
  expect(a.readContainerFile(id, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  const inode = (p: string): number => fs.statSync(path.join(a.bundleDir(id), 'rootfs', p)).ino;
  expect(inode(COUNTER_FILES.createdLink)).toBe(inode(COUNTER_FILES.created));
  const atCheckpoint = await checkpointAndRemove(a, id);
  await expect(new CheckpointStore(path.join(storage, 'local/default', id)).current()).resolves.toBeTruthy();

  // COUNTER_START_FILES is not set this time: a fresh start would not create the files.
  const out2 = await a.runCounter(
    id,
    env.filter((e) => !e.startsWith('COUNTER_START_FILES')),
  );
  await a.containerd.waitStatus(id, 'RUNNING', 15_000);
  const after = await a.waitCount(id, atCheckpoint + 5);
  expect(after).toBeGreaterThan(atCheckpoint);
  // Restored, not started fresh: the counter logs one line per fresh start.
  expect(startsOf(a, id)).toBe(1);
  expect(a.readContainerFile(id, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  expect(a.readContainerFile(id, COUNTER_FILES.nested)).toBe(COUNTER_FILES.nestedContent);
  // Still one file under two names, not two copies.
  expect(inode(COUNTER_FILES.createdLink)).toBe(inode(COUNTER_FILES.created));
  expect(a.readContainerFile(id, COUNTER_FILES.modified)).toBe(COUNTER_FILES.modifiedContent);
  expect(() => a.readContainerFile(id, COUNTER_FILES.deleted)).toThrow();
  // Output of the restored process still reaches containerd's log.
  await waitFor('restored output', () =>
    fs.readFileSync(out2, 'utf8').includes(`count ${atCheckpoint + 3}`) ? true : undefined,
  );
  // The restored process never counted from 1 again.
  const firstAfter = Number(/count (\d+)/.exec(fs.readFileSync(out2, 'utf8'))?.[1]);
  expect(firstAfter).toBeGreaterThanOrEqual(atCheckpoint);
  expect(fs.readFileSync(out1, 'utf8')).toContain('count 1\n');
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
  await a.containerd.removeContainer(id);
});

test('shared mode: work dir bind-mounted and made the cwd, survives with the checkpoint', async () => {
  const id = 'shared-1';
  const shared = path.join(storage, 'shared');
  const env = [
    'ARCH_ENABLE=1',
    `ARCH_SHAREDFS_HOST_PATH=${shared}`,
    'ARCH_WORKDIR_CONTAINER_PATH=/work',
    // Shared mode wins over local mode: this path must stay unused.
    `ARCH_CHECKPOINT_HOST_PATH=${storage}/ignored`,
    'COUNTER_FILE=/work/count',
  ];
  await a.runCounter(id, env);
  const hostCount = path.join(shared, 'work/default', id, 'count');
  await waitFor('count in the shared work dir', () =>
    fs.existsSync(hostCount) && Number(fs.readFileSync(hostCount, 'utf8')) >= 10 ? true : undefined,
  );
  const res = await checkpointContainer(a.ctx, { namespace: 'default', id, runcRoot: a.runcRoot('default') });
  expect(res.dir.startsWith(path.join(shared, 'checkpoint/default', id))).toBe(true);
  expect(fs.existsSync(path.join(storage, 'ignored'))).toBe(false);
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  const atCheckpoint = Number(fs.readFileSync(hostCount, 'utf8'));
  await a.containerd.removeContainer(id);
  // Kept after delete: the container was checkpointed.
  expect(fs.existsSync(hostCount)).toBe(true);

  await a.runCounter(id, env);
  await waitFor('restored count in the shared work dir', () =>
    Number(fs.readFileSync(hostCount, 'utf8')) > atCheckpoint + 3 ? true : undefined,
  );
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
  await a.containerd.removeContainer(id);
});

test('another node: checkpoint on node A, create on node B from the same storage', async () => {
  const id = 'move-1';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/local`, 'COUNTER_START_FILES=1'];
  await a.runCounter(id, env);
  await a.waitCount(id, 10);
  const atCheckpoint = await checkpointAndRemove(a, id);

  const out = await b.runCounter(
    id,
    env.filter((e) => !e.startsWith('COUNTER_START_FILES')),
  );
  await b.containerd.waitStatus(id, 'RUNNING', 15_000);
  await b.waitCount(id, atCheckpoint + 3);
  expect(Number(/count (\d+)/.exec(fs.readFileSync(out, 'utf8'))?.[1])).toBeGreaterThanOrEqual(atCheckpoint);
  expect(b.readContainerFile(id, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  expect(
    b.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id && l.from === 'shim-a'),
  ).toBe(true);
  await b.containerd.removeContainer(id);
});

test('delete after the job exits by itself removes its checkpoint and work dir', async () => {
  const id = 'done-1';
  const shared = path.join(storage, 'shared-done');
  const env = ['ARCH_ENABLE=1', `ARCH_SHAREDFS_HOST_PATH=${shared}`, 'ARCH_WORKDIR_CONTAINER_PATH=/work'];
  // The restored process keeps its memory, so its exit point is set at the first start.
  await a.runCounter(id, [...env, 'COUNTER_INTERVAL_MS=50', 'COUNTER_EXIT_AFTER=60']);
  await a.waitCount(id, 3);
  await checkpointContainer(a.ctx, { namespace: 'default', id, runcRoot: a.runcRoot('default') });
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  await a.containerd.removeContainer(id);
  const ckDir = path.join(shared, 'checkpoint/default', id);
  expect(fs.existsSync(path.join(ckDir, 'current'))).toBe(true);

  // Restored, it counts on to 60 and exits 0 by itself: the job is done.
  await a.runCounter(id, env);
  await a.containerd.waitStatus(id, 'STOPPED', 30_000);
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
  await a.containerd.removeContainer(id);
  expect(fs.existsSync(ckDir)).toBe(false);
  expect(fs.existsSync(path.join(shared, 'work/default', id))).toBe(false);
});

test("a restored job that ends as soon as it goes on ends after containerd's start: the run succeeds, the job ran once and finished", async () => {
  const id = 'ends-at-once';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/ends`];
  // Loops until a wall-clock second that has passed by the time it is restored: it ends within a tick of going on.
  const until = Math.floor(Date.now() / 1000) + 3;
  const job = `echo run >> /runs; while [ $(date +%s) -lt ${until} ]; do sleep 0.02; done; echo done >> /runs`;
  const run = () => runScript(a, id, env, job);
  await run();
  await waitFor('the job runs', () => (a.readContainerFile(id, '/runs') === 'run\n' ? true : undefined));
  await checkpointContainer(a.ctx, { namespace: 'default', id, runcRoot: a.runcRoot('default') });
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  await a.containerd.removeContainer(id);
  await waitFor('its last second passed', () => (Date.now() / 1000 > until + 0.5 ? true : undefined), 10_000);

  // Restored held, it goes on at the start, not before: a job gone before the start made containerd fail the run.
  await run();
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  expect(a.readContainerFile(id, '/runs')).toBe('run\ndone\n');
  await a.containerd.removeContainer(id);
});

test('ctr task checkpoint of an ARCH container also publishes an ARCH checkpoint', async () => {
  const id = 'ctr-ck-1';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/ctr`];
  await a.runCounter(id, env);
  await a.waitCount(id, 5);
  await a.containerd.taskCheckpoint(id, { exit: true });
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  const store = new CheckpointStore(path.join(storage, 'ctr/default', id));
  const { manifest } = await store.verifyCurrent();
  expect(manifest.containerId).toBe(id);
  const atCheckpoint = a.count(id);
  await a.containerd.removeContainer(id);
  await a.runCounter(id, env);
  await a.waitCount(id, atCheckpoint + 3);
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
  await a.containerd.removeContainer(id);
});

test('a leave-running checkpoint does not keep a finished job: it exits 0 later and delete removes the checkpoint', async () => {
  const id = 'lr-done-1';
  const env = [
    'ARCH_ENABLE=1',
    `ARCH_CHECKPOINT_HOST_PATH=${storage}/lr`,
    'COUNTER_INTERVAL_MS=50',
    'COUNTER_EXIT_AFTER=40',
  ];
  await a.runCounter(id, env);
  await a.waitCount(id, 3);
  await checkpointContainer(a.ctx, { namespace: 'default', id, runcRoot: a.runcRoot('default'), leaveRunning: true });
  const ckDir = path.join(storage, 'lr/default', id);
  expect(fs.existsSync(path.join(ckDir, 'current'))).toBe(true);
  await a.containerd.waitStatus(id, 'STOPPED', 30_000); // exits 0 by itself at 40
  await a.containerd.removeContainer(id);
  expect(fs.existsSync(ckDir)).toBe(false);
});

test('a container of several processes: all are restored, and all run again once their page images are verified', async () => {
  const id = 'multi-1';
  // pid 1 is a shell ticking its own file; the counter is its child.
  const script =
    'mkdir -p /state; /usr/bin/counter & i=0; while :; do i=$((i+1)); echo $i > /state/sh-ticks; sleep 0.1; done';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/multi`];
  const run = () => runScript(a, id, env, script, path.join(storage, `${id}-${Date.now()}.out`));
  const shTicks = () => Number(a.readContainerFile(id, '/state/sh-ticks').trim());
  await run();
  await a.waitCount(id, 5);
  await waitFor('shell ticks', () => (shTicks() >= 5 ? true : undefined));
  await checkpointContainer(a.ctx, { namespace: 'default', id, runcRoot: a.runcRoot('default') });
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  const atCheckpoint = a.count(id);
  const shAtCheckpoint = shTicks();
  await a.containerd.removeContainer(id);

  await run();
  await a.containerd.waitStatus(id, 'RUNNING', 15_000);
  await a.waitCount(id, atCheckpoint + 5);
  await waitFor('shell ticking again', () => (shTicks() >= shAtCheckpoint + 5 ? true : undefined));
  expect(startsOf(a, id)).toBe(1);
  const procs = fs
    .readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .map((p) => {
      try {
        return {
          cmd: fs.readFileSync(`/proc/${p}/cmdline`, 'utf8'),
          state: /State:\s+(\S)/.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'))?.[1],
        };
      } catch {
        return undefined;
      }
    });
  // No process of it left stopped (T): the counter and the shell both run.
  expect(procs.filter((p) => p && p.cmd.startsWith('/usr/bin/counter') && p.state === 'T')).toEqual([]);
  expect(a.logLines().some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
  await a.containerd.removeContainer(id);
});

describe('arch-runc killed (SIGKILL) in the middle of a restore: nothing is left, the checkpoint stays, the next create restores', () => {
  // Two moments: as soon as arch-runc's Node side runs (verifying, writing the layer), and while CRIU restores.
  const moments: [string, (archRunc: number) => boolean][] = [
    ['before runc restore starts', () => true],
    ['while CRIU restores the processes', (archRunc) => runsBelow(archRunc, 'criu')],
  ];
  for (const [i, [moment, ready]] of moments.entries()) {
    test(
      moment,
      async () => {
        const id = `killed-${i}`;
        // 64 MiB of memory: CRIU restores long enough to be caught at it.
        const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/killed`, 'COUNTER_MEM_MB=64'];
        await a.runCounter(id, env);
        await a.waitCount(id, 5);
        const atCheckpoint = await checkpointAndRemove(a, id);
        const store = new CheckpointStore(path.join(storage, 'killed/default', id));
        const checkpoint = await store.current();
        expect(checkpoint).toBeTruthy();

        const create = a.runCounter(id, env).then(
          () => 'created',
          () => 'failed',
        );
        const archRunc = await waitFor('arch-runc create', () => archRuncCreateOf(id), 15_000);
        await waitFor(moment, () => (ready(archRunc) ? true : undefined), 15_000);
        process.kill(archRunc, 'SIGKILL');
        // The create fails; nothing of the half-made container is left running, stopped or held.
        expect(await create).toBe('failed');
        await waitFor('no process left in the container', () =>
          processesOfContainer('default', id).length === 0 ? true : undefined,
        );
        const state = await execa('runc', ['--root', a.runcRoot('default'), 'state', id], { reject: false });
        expect(state.exitCode).not.toBe(0);
        // The checkpoint is untouched: still the current one.
        expect(await store.current()).toBe(checkpoint);

        // The orchestrator removes it and creates it again: restored, not started over.
        await a.containerd.removeContainer(id);
        await a.runCounter(id, env);
        await a.containerd.waitStatus(id, 'RUNNING', 15_000);
        expect(await a.waitCount(id, atCheckpoint + 3)).toBeGreaterThan(atCheckpoint);
        expect(startsOf(a, id)).toBe(1);
        expect(a.logLines().filter((l) => l.container === id && l.msg === 'restored from checkpoint')).toHaveLength(1);
        await a.containerd.removeContainer(id);
      },
      90_000,
    );
  }
});

test('network lock: the container network is left as it was, and either method restores under the other', async () => {
  const id = 'netlock-1';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/netlock`];
  // What `auto` must pick on this machine, asked of CRIU independently of ARCH.
  const nft = await execa(a.ctx.settings.criu, ['check', '--feature', 'network_lock_nftables'], { reject: false });
  const expected = nft.exitCode === 0 ? 'nftables' : 'iptables';
  await a.runCounter(id, env);
  await a.waitCount(id, 5);
  const runc = new Runc(a.ctx.settings, a.runcRoot('default'));
  const rules = async () => {
    const pid = (await runc.state(id)).pid;
    const r = await execa(
      'nsenter',
      ['-t', String(pid), '-n', 'sh', '-c', 'nft list ruleset; iptables-save; ip6tables-save'],
      { reject: false, all: true },
    );
    return String(r.all ?? '')
      .split('\n')
      .filter((l) => l.trim() && !l.startsWith('#'))
      .join('\n');
  };
  const before = await rules();
  const kept = await checkpointContainer(a.ctx, {
    namespace: 'default',
    id,
    runcRoot: a.runcRoot('default'),
    leaveRunning: true,
  });
  expect(kept.manifest.runtime.networkLock).toBe(expected);
  // Locked for the dump and unlocked again: nothing of the lock is left in the running container's namespace.
  expect(await rules()).toBe(before);
  await a.waitCount(id, a.count(id) + 2);

  // A checkpoint taken with CRIU's default method restores on a node that uses `auto`.
  const iptablesCtx = createNodeContext('test', {
    ...process.env,
    ARCH_CONFIG: a.archConfig,
    ARCH_CRIU_NETWORK_LOCK: 'iptables',
  });
  const res = await checkpointContainer(iptablesCtx, { namespace: 'default', id, runcRoot: a.runcRoot('default') });
  expect(res.manifest.runtime.networkLock).toBe('iptables');
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  const atCheckpoint = a.count(id);
  await a.containerd.removeContainer(id);
  await a.runCounter(id, env);
  await a.containerd.waitStatus(id, 'RUNNING', 15_000);
  await a.waitCount(id, atCheckpoint + 3);
  expect(startsOf(a, id)).toBe(1);
  expect(await rules()).not.toMatch(/CRIU/);
  await a.containerd.removeContainer(id);
});

test("a pod: a container in a sandbox container's network, IPC and UTS namespaces is restored into a new sandbox", async () => {
  // Kubernetes runs every container of a pod in the namespaces of the pod's
  // sandbox (through the same runtime class: arch-runc, ARCH off for it).
  // Created again (a new pod on this or another node), the container joins
  // the new sandbox's namespaces and goes on from its checkpoint.
  const id = 'pod-app-1';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/pod`];
  const sandbox = async (sid: string) => {
    await a.containerd.run({
      image: a.image,
      id: sid,
      args: ['/usr/bin/counter'],
      env: ['COUNTER_INTERVAL_MS=1000'],
      runcBinary: ARCH_RUNC_BIN,
      detach: true,
      logFile: path.join(storage, `${sid}.out`),
    });
    const t = await a.containerd.waitStatus(sid, 'RUNNING', 15_000);
    return t!.pid;
  };
  const nsOf = (pid: number, t: string) => fs.readlinkSync(`/proc/${pid}/ns/${t}`);
  const app = (pid: number) =>
    a.containerd.run({
      image: a.image,
      id,
      env,
      runcBinary: ARCH_RUNC_BIN,
      detach: true,
      logFile: path.join(storage, `${id}-${Date.now()}.out`),
      extraFlags: [
        '--with-ns',
        `network:/proc/${pid}/ns/net`,
        '--with-ns',
        `ipc:/proc/${pid}/ns/ipc`,
        '--with-ns',
        `uts:/proc/${pid}/ns/uts`,
      ],
    });
  const first = await sandbox('pod-sandbox-1');
  await app(first);
  await a.waitCount(id, 5);
  const appPid = (await a.containerd.task(id))!.pid;
  expect(['net', 'ipc', 'uts'].map((t) => nsOf(appPid, t))).toEqual(['net', 'ipc', 'uts'].map((t) => nsOf(first, t)));
  const atCheckpoint = await checkpointAndRemove(a, id);
  await a.containerd.removeContainer('pod-sandbox-1');

  const second = await sandbox('pod-sandbox-2');
  await app(second);
  await a.containerd.waitStatus(id, 'RUNNING', 15_000);
  await a.waitCount(id, atCheckpoint + 3);
  expect(startsOf(a, id)).toBe(1);
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
  const restoredPid = (await a.containerd.task(id))!.pid;
  expect(['net', 'ipc', 'uts'].map((t) => nsOf(restoredPid, t))).toEqual(
    ['net', 'ipc', 'uts'].map((t) => nsOf(second, t)),
  );
  await a.containerd.removeContainer(id);
  await a.containerd.removeContainer('pod-sandbox-2');
});

describe('ARCH_CHECKPOINT_ID (Kubernetes and `docker run` give every container a new id)', () => {
  test('a container created with a new id continues from the checkpoint its predecessor left under the same name', async () => {
    const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/ckid`, 'ARCH_CHECKPOINT_ID=train-7'];
    await a.runCounter('ckid-1', [...env, 'COUNTER_START_FILES=1']);
    await a.waitCount('ckid-1', 10);
    const res = await checkpointContainer(a.ctx, {
      namespace: 'default',
      id: 'ckid-1',
      runcRoot: a.runcRoot('default'),
    });
    expect(res.dir.startsWith(path.join(storage, 'ckid/default/train-7/'))).toBe(true);
    expect(res.manifest).toMatchObject({ containerId: 'ckid-1', checkpointId: 'train-7' });
    expect(fs.existsSync(path.join(storage, 'ckid/default/ckid-1'))).toBe(false);
    await a.containerd.waitStatus('ckid-1', 'STOPPED', 15_000);
    const atCheckpoint = a.count('ckid-1');
    // The old container is still there (Kubernetes collects it later): the new one restores anyway.
    await a.runCounter('ckid-2', env);
    await a.containerd.waitStatus('ckid-2', 'RUNNING', 15_000);
    expect(await a.waitCount('ckid-2', atCheckpoint + 3)).toBeGreaterThan(atCheckpoint);
    expect(startsOf(a, 'ckid-2')).toBe(1);
    expect(a.readContainerFile('ckid-2', COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
    expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === 'ckid-2')).toBe(true);
    // Collecting the old one keeps the checkpoint (it was checkpointed, and the job goes on in ckid-2).
    await a.containerd.removeContainer('ckid-1');
    const store = new CheckpointStore(path.join(storage, 'ckid/default/train-7'));
    expect(await store.current()).toBeTruthy();
    await checkpointContainer(a.ctx, {
      namespace: 'default',
      id: 'ckid-2',
      runcRoot: a.runcRoot('default'),
      leaveRunning: true,
    });
    expect(await store.readManifest()).toMatchObject({ containerId: 'ckid-2', checkpointId: 'train-7' });
    await a.containerd.removeContainer('ckid-2');
    fs.rmSync(path.join(storage, 'ckid'), { recursive: true, force: true });
  });

  test("a second running container with the same name starts without ARCH; the first one's checkpoint is untouched", async () => {
    const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/dup`, 'ARCH_CHECKPOINT_ID=shared-name'];
    await a.runCounter('dup-1', env);
    await a.waitCount('dup-1', 5);
    await checkpointContainer(a.ctx, {
      namespace: 'default',
      id: 'dup-1',
      runcRoot: a.runcRoot('default'),
      leaveRunning: true,
    });
    const store = new CheckpointStore(path.join(storage, 'dup/default/shared-name'));
    const before = await store.current();

    await a.runCounter('dup-2', env);
    await a.containerd.waitStatus('dup-2', 'RUNNING', 15_000);
    await a.waitCount('dup-2', 2);
    expect(startsOf(a, 'dup-2')).toBe(1);
    const refused = a.logLines().find((l) => l.container === 'dup-2' && l.field === 'ARCH_CHECKPOINT_ID');
    expect(refused?.msg).toBe('invalid ARCH configuration; starting the container without ARCH');
    expect(String(refused?.err)).toContain('"shared-name" is in use by running container dup-1 on this node');
    expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === 'dup-2')).toBe(false);
    await a.containerd.removeContainer('dup-2');
    expect(await store.current()).toBe(before);
    expect(await store.readManifest()).toMatchObject({ containerId: 'dup-1' });
    await a.containerd.removeContainer('dup-1');
    fs.rmSync(path.join(storage, 'dup'), { recursive: true, force: true });
  });
});
