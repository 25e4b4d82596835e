import { execa } from 'execa';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CgroupFreezer } from '../../core/cgroup-freezer.js';
import { checkpointContainer } from '../../core/checkpoint.js';
import { Runc } from '../../core/runc.js';
import { CheckpointStore } from '../../core/store.js';
import { memoryStaging } from '../../core/dump-staging.js';
import { listScratch, SCRATCH_ROOTS } from '../../core/seal.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { startArchNode, type ArchTestNode } from '../support/arch-node.js';
import { REPO_ROOT } from '../support/images.js';

/**
 * `arch-cli finalize` on a reclaim warning: every running ARCH container of
 * the node is checkpointed at once; non-ARCH containers are left alone; each
 * restored container continues.
 */
let node: ArchTestNode;
let storage: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-finalize-');
  node = await startArchNode('fin-a');
});

afterAll(async () => {
  await stopAllNodes();
  fs.rmSync(storage, { recursive: true, force: true });
});

test('finalize checkpoints several ARCH containers in parallel; each continues after re-create', async () => {
  const ids = ['job-1', 'job-2', 'job-3'];
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`];
  for (const id of ids) await node.runCounter(id, env);
  await node.runCounter('plain-1', []); // not ARCH: finalize must not touch it
  for (const id of ids) await node.waitCount(id, 5);

  const ls = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['ls', '--local', '--json'], {
    env: { ARCH_CONFIG: node.archConfig },
    reject: false,
  });
  expect(ls.exitCode).toBe(0);
  const listed = JSON.parse(String(ls.stdout)) as { containers: { id: string; status: string; mode: string }[] };
  expect(listed.containers.map((c) => c.id).sort()).toEqual(ids); // plain-1 is not ARCH
  expect(listed.containers.every((c) => c.status === 'running' && c.mode === 'local')).toBe(true);

  const r = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['finalize', '--deadline', '60s', '--json'], {
    env: { ARCH_CONFIG: node.archConfig },
    reject: false,
  });
  expect(r.exitCode).toBe(0);
  const report = JSON.parse(String(r.stdout)) as {
    ok: boolean;
    items: { id: string; status: string; sizeBytes: number }[];
  };
  expect(report.ok).toBe(true);
  expect(report.items.map((i) => i.id).sort()).toEqual(ids);
  expect(report.items.every((i) => i.status === 'checkpointed' && i.sizeBytes > 0)).toBe(true);

  const counts: Record<string, number> = {};
  for (const id of ids) {
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    await new CheckpointStore(path.join(storage, 'default', id)).verifyCurrent();
    counts[id] = node.count(id);
    await node.containerd.removeContainer(id);
  }
  expect((await node.containerd.listTasks()).find((t) => t.id === 'plain-1')?.status).toBe('RUNNING');

  for (const id of ids) await node.runCounter(id, env);
  for (const id of ids) await node.waitCount(id, counts[id]! + 3);
  expect(node.logLines().filter((l) => l.msg === 'restored from checkpoint').length).toBe(ids.length);
  for (const id of [...ids, 'plain-1']) await node.containerd.removeContainer(id);
});

test('finalize with nothing to do says so and succeeds; bad --deadline is a clear error', async () => {
  const ok = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['finalize'], {
    env: { ARCH_CONFIG: node.archConfig },
    reject: false,
  });
  expect(ok.exitCode).toBe(0);
  expect(String(ok.stdout)).toContain('no ARCH containers found');
  expect(String(ok.stdout)).toContain(node.runcRootBase); // where it looked
  expect(String(ok.stderr)).toBe('');
  // A runc root named in settings that is not there: a warning naming the setting, and the roots searched.
  const missing = path.join(storage, 'no-such-runc-root');
  const warned = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['finalize'], {
    env: { ARCH_CONFIG: node.archConfig, ARCH_RUNC_ROOT: `${node.runcRootBase}:${missing}` },
    reject: false,
  });
  expect(warned.exitCode).toBe(0);
  expect(String(warned.stderr)).toContain(`warning: ARCH_RUNC_ROOT: ${missing} does not exist`);
  expect(String(warned.stdout)).toMatch(new RegExp(`no ARCH containers found[^]*${missing} \\(absent\\)`));
  const bad = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['finalize', '--deadline', 'soon'], {
    env: { ARCH_CONFIG: node.archConfig },
    reject: false,
  });
  expect(bad.exitCode).not.toBe(0);
  expect(String(bad.stderr)).toMatch(/--deadline.*Fix/);
});

test('two checkpoints of one container at once: one publishes, the other is refused without touching it', async () => {
  const id = 'job-twice';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`];
  await node.runCounter(id, env);
  await node.waitCount(id, 3);
  const results = await Promise.allSettled([
    checkpointContainer(node.ctx, { namespace: 'default', id }),
    checkpointContainer(node.ctx, { namespace: 'default', id }),
  ]);
  const ok = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  expect(ok).toHaveLength(1);
  expect(refused).toHaveLength(1);
  expect(String(refused[0]!.reason)).toMatch(/is being checkpointed already.*Fix: wait/);
  await node.containerd.waitStatus(id, 'STOPPED', 15_000);
  const checkpoints = fs.readdirSync(path.join(storage, 'default', id)).filter((n) => n.startsWith('ckpt-'));
  expect(checkpoints).toHaveLength(1);
  await new CheckpointStore(path.join(storage, 'default', id)).verifyCurrent();
  // The lock went with the checkpoint: a later one (after re-create) is not refused.
  const at = node.count(id);
  await node.containerd.removeContainer(id);
  await node.runCounter(id, env);
  await node.waitCount(id, at + 2);
  await expect(checkpointContainer(node.ctx, { namespace: 'default', id, leaveRunning: true })).resolves.toMatchObject({
    id,
  });
  await node.containerd.removeContainer(id);
});

test('a checkpoint that leaves the job running thaws it before publishing, and records how long it was frozen', async () => {
  const id = 'job-freeze-time';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`];
  await node.runCounter(id, env);
  try {
    await node.waitCount(id, 3);
    const runc = new Runc(node.ctx.settings, node.runcRoot('default'));
    const freezer = await CgroupFreezer.of((await runc.state(id)).pid);
    if (!freezer) throw new Error(`no freezer cgroup for ${id}`);
    const frozenAt: Record<string, boolean> = {};
    const r = await checkpointContainer(node.ctx, {
      namespace: 'default',
      id,
      leaveRunning: true,
      // Asked synchronously at each phase: publishing (hashing, fsync, rename) must find it running.
      onProgress: (p) => void freezer.freezeRequested().then((f) => (frozenAt[p.phase] = f)),
    });
    await sleep(100);
    expect(frozenAt).toMatchObject({ publish: false });
    expect(r.freezeMs).toEqual(expect.any(Number));
    expect(r.freezeMs!).toBeGreaterThan(0);
    expect(r.freezeMs!).toBeLessThan(r.totalMs);
    const m = await new CheckpointStore(path.join(storage, 'default', id)).readManifest();
    expect(m?.freezeMs).toBe(r.freezeMs);
    const at = node.count(id);
    await node.waitCount(id, at + 2); // never stopped
    const ls = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['ls', '--local', '--json'], {
      env: { ARCH_CONFIG: node.archConfig },
      reject: false,
    });
    const listed = JSON.parse(String(ls.stdout)) as {
      containers: { id: string; checkpoint?: { freezeMs?: number } }[];
    };
    expect(listed.containers.find((c) => c.id === id)?.checkpoint?.freezeMs).toBe(r.freezeMs);
  } finally {
    await node.containerd.removeContainer(id).catch(() => undefined);
  }
});

test('a checkpoint left running is dumped into memory while the job is frozen, and moved to the store after the thaw', async () => {
  const id = 'job-staged';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`, 'COUNTER_MEM_MB=32'];
  await node.runCounter(id, env);
  const small = fs.mkdtempSync('/tmp/arch-small-tmpfs-');
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small]);
  try {
    await node.waitCount(id, 3);
    const mine = async () => (await listScratch()).filter((d) => path.basename(d).includes(`-${process.pid}-`));
    const before = new Set(await mine());
    // Right after the dump (the job running again), before anything is moved: where are the pages?
    let stagedPages: string[] = [];
    const r = await checkpointContainer(node.ctx, {
      namespace: 'default',
      id,
      leaveRunning: true,
      stageInMemory: true, // ARCH_STAGE_DUMPS_IN_MEMORY=1
      onProgress: (p) => {
        if (p.phase !== 'rootfs') return;
        const dirs = SCRATCH_ROOTS.flatMap((root) =>
          (fs.existsSync(root) ? fs.readdirSync(root) : []).map((n) => path.join(root, n)),
        ).filter((d) => path.basename(d).includes(`-${process.pid}-`) && !before.has(d));
        stagedPages = dirs.flatMap((d) =>
          fs.existsSync(path.join(d, 'criu'))
            ? fs.readdirSync(path.join(d, 'criu')).filter((n) => /^pages-/.test(n))
            : [],
        );
      },
    });
    expect(stagedPages.length).toBeGreaterThan(0);
    expect(r.timings.unstage).toEqual(expect.any(Number));
    expect((await mine()).filter((d) => !before.has(d))).toEqual([]); // the memory is given back
    const store = new CheckpointStore(path.join(storage, 'default', id));
    await store.verifyCurrent(); // every file moved, hashed and fsynced with the manifest
    expect(fs.readdirSync(path.join(r.dir, 'criu')).some((n) => /^pages-/.test(n))).toBe(true);
    expect(r.manifest.freezeMs).toEqual(expect.any(Number));

    // No tmpfs with room: the dump goes to the disk, as it always did.
    const pid = (await new Runc(node.ctx.settings, node.runcRoot('default')).state(id)).pid;
    const tooSmall = await memoryStaging(pid, [small]);
    expect('why' in tooSmall && tooSmall.why).toMatch(/no tmpfs has \d+ MiB free/);
    const onDisk = await checkpointContainer(node.ctx, {
      namespace: 'default',
      id,
      leaveRunning: true,
      stageInMemory: false,
    });
    expect(onDisk.timings.unstage).toBeUndefined();
    await store.verifyCurrent();
    const at = node.count(id);
    await node.waitCount(id, at + 2); // never stopped
  } finally {
    await execa('umount', ['-l', small]).catch(() => undefined);
    fs.rmSync(small, { recursive: true, force: true });
    await node.containerd.removeContainer(id).catch(() => undefined);
  }
});

test('a checkpoint left running captures the writable layer at the instant of the memory: the restored job logs every count once', async () => {
  // The counter appends each count to a log in its writable layer, then keeps it in memory, every millisecond.
  // CRIU freezes it (not ARCH) and the layer is captured behind CRIU's post-dump gate: if the layer were
  // taken before or after the memory, the restored job would skip or repeat counts in its log.
  const id = 'job-layer-instant';
  const env = [
    'ARCH_ENABLE=1',
    `ARCH_CHECKPOINT_HOST_PATH=${storage}`,
    'COUNTER_INTERVAL_MS=1',
    'COUNTER_LOG=/state/log',
  ];
  await node.runCounter(id, env);
  try {
    await node.waitCount(id, 200);
    const r = await checkpointContainer(node.ctx, { namespace: 'default', id, leaveRunning: true });
    expect(r.freezeMs).toEqual(expect.any(Number));
    const at = node.count(id);
    await node.waitCount(id, at + 50); // ran on
    // A crash: killed (not a clean exit, so delete keeps the checkpoint), then created again from it.
    await node.containerd.taskKill(id, 'SIGKILL');
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    await node.containerd.removeContainer(id);
    await node.runCounter(id, env);
    await node.containerd.waitStatus(id, 'RUNNING', 15_000);
    const restoredAt = await node.waitCount(id, 1);
    await node.waitCount(id, restoredAt + 50);
    expect(node.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
    const counts = node.readContainerFile(id, '/state/log').trim().split('\n').map(Number);
    const wrong = counts.findIndex((n, i) => n !== i + 1);
    expect({ wrongAt: wrong, near: wrong < 0 ? [] : counts.slice(Math.max(0, wrong - 2), wrong + 3) }).toEqual({
      wrongAt: -1,
      near: [],
    });
    expect(counts.length).toBeGreaterThan(r.manifest.rootfs.files > 0 ? 200 : 0);
  } finally {
    await node.containerd.removeContainer(id).catch(() => undefined);
  }
});
