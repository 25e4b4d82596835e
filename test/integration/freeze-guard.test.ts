import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CgroupFreezer } from '../../core/cgroup-freezer.js';
import { checkpointContainer } from '../../core/checkpoint.js';
import { Runc } from '../../core/runc.js';
import { readShimState } from '../../core/shim-state.js';
import { CheckpointStore } from '../../core/store.js';
import { startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { REPO_ROOT } from '../support/images.js';
import { MANIFEST_FILE } from '../../core/checkpoint-layout.js';

/**
 * Security issue 10, finding 5: kill -9 of the process that froze a container
 * for a checkpoint must not leave it frozen. `arch-cli finalize` is killed at
 * several moments of a real checkpoint (real runc, CRIU, containerd); each
 * time the container must be unfrozen within a few seconds (running again,
 * or killed when the checkpoint had committed to stopping it), the store
 * must hold the previous or the new complete checkpoint, and the guard's
 * watcher must be gone once its work is done.
 */
const THAW_WITHIN_MS = 5_000;
let node: ArchTestNode;
let storage: string;
const clis: ChildProcess[] = [];
const helpers: ChildProcess[] = [];

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-freeze-guard-');
  node = await startArchNode('fguard');
});

afterAll(async () => {
  for (const p of [...clis, ...helpers]) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  // A container a failed assertion left frozen is thawed, or containerd cannot remove it.
  for (const f of frozenSeen) await f.thaw().catch(() => undefined);
  await stopAllNodes();
  fs.rmSync(storage, { recursive: true, force: true });
});

const frozenSeen: CgroupFreezer[] = [];
const env = () => ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`];
const runcOf = () => new Runc(node.ctx.settings, node.runcRoot('default'));

async function freezerOf(id: string): Promise<CgroupFreezer> {
  const f = await CgroupFreezer.of((await runcOf().state(id)).pid);
  if (!f) throw new Error(`no freezer cgroup found for ${id}`);
  frozenSeen.push(f);
  return f;
}

/** Synchronous look, so the poll loop reacts within a millisecond. */
function freezeRequestedSync(f: CgroupFreezer): boolean {
  if (f.version === 1) return fs.readFileSync(path.join(f.dir, 'freezer.state'), 'utf8').trim() !== 'THAWED';
  return fs.readFileSync(path.join(f.dir, 'cgroup.freeze'), 'utf8').trim() === '1';
}

function stagingDirs(containerDir: string): string[] {
  return fs
    .readdirSync(containerDir)
    .filter((n) => n.startsWith('.staging-'))
    .map((n) => path.join(containerDir, n));
}

/** Live processes whose arguments contain every one of `parts`. */
function processesNaming(...parts: string[]): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (parts.every((p) => cmd.includes(p))) out.push(Number(name));
  }
  return out;
}

/** Processes of this container's freeze guard (its watcher shell or its repair): the plan names the container. */
function guardProcesses(id: string): number[] {
  return processesNaming('freeze-guard-main.js', `"id":"${id}"`);
}

/** SIGKILL `cli` as soon as `at()` holds (looked at every millisecond). */
async function killAt(cli: ChildProcess, moment: string, at: () => boolean): Promise<void> {
  const deadline = Date.now() + 60_000;
  let output = '';
  for (const s of [cli.stdout, cli.stderr]) s?.on('data', (b: Buffer) => (output += String(b)));
  while (!at()) {
    if (cli.exitCode !== null)
      throw new Error(`finalize ended (${cli.exitCode}) before the checkpoint reached "${moment}":\n${output}`);
    if (Date.now() > deadline) throw new Error(`the checkpoint never reached "${moment}"`);
    await sleep(1);
  }
  process.kill(cli.pid!, 'SIGKILL');
}

type Moment = 'frozen' | 'dump' | 'publish' | 'published';

/** Has the checkpoint of `id` reached `moment`? */
function reached(moment: Moment, f: CgroupFreezer, containerDir: string, before: string[]): boolean {
  switch (moment) {
    case 'frozen': // right after the freeze, before or as CRIU starts
      return freezeRequestedSync(f);
    case 'dump': // CRIU has begun: its log is in the work dir
      return stagingDirs(containerDir).some((d) => fs.existsSync(path.join(d, 'criu-work', 'dump.log')));
    case 'publish': // the manifest is written, the fsync and the rename are still to come
      return stagingDirs(containerDir).some((d) => fs.existsSync(path.join(d, MANIFEST_FILE)));
    case 'published': // the new checkpoint is in place; the kill of the container is near
      return fs.readdirSync(containerDir).some((n) => n.startsWith('ckpt-') && !before.includes(n));
  }
}

async function runningCounter(id: string): Promise<void> {
  await node.runCounter(id, env());
  await node.waitCount(id, 3);
}

describe.each<Moment>(['frozen', 'dump', 'publish', 'published'])('kill -9 of arch-cli finalize at "%s"', (moment) => {
  test('the container is never left frozen and the store stays consistent', async () => {
    const id = `fg-${moment}`;
    const containerDir = path.join(storage, 'default', id);
    await runningCounter(id);
    try {
      // A previous checkpoint (left running): after the kill the store must hold it or a new complete one.
      const prev = await checkpointContainer(node.ctx, { namespace: 'default', id, leaveRunning: true });
      // The normal path disarms: no watcher is left behind.
      await waitFor(
        `no freeze guard left for ${id} after a normal checkpoint`,
        () => (guardProcesses(id).length === 0 ? true : undefined),
        3_000,
      );
      const f = await freezerOf(id);
      expect(freezeRequestedSync(f)).toBe(false);
      const before = fs.readdirSync(containerDir);

      const cli = spawn(path.join(REPO_ROOT, 'bin/arch-cli'), ['finalize', '--deadline', '60s', '--json'], {
        env: { ...process.env, ARCH_CONFIG: node.archConfig },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      clis.push(cli);
      const exited = new Promise((r) => cli.once('exit', r));
      await killAt(cli, moment, () => reached(moment, f, containerDir, before));
      const killedAt = Date.now();
      await exited;

      // Unfrozen within a few seconds, and still so once the orphaned dump (if any) is over:
      // CRIU puts the freezer back as it found it (frozen) when it ends.
      await waitFor(
        `${id} thawed after kill -9 at "${moment}"`,
        () => (freezeRequestedSync(f) ? undefined : true),
        THAW_WITHIN_MS,
      );
      const thawMs = Date.now() - killedAt;
      await waitFor(
        `the freeze guard of ${id} to finish`,
        () => (guardProcesses(id).length === 0 ? true : undefined),
        60_000,
      );
      await sleep(300);
      const task = await node.containerd.task(id);
      const frozenNow = task?.status === 'STOPPED' ? false : freezeRequestedSync(f);
      expect({ moment, thawMs, frozenNow }).toEqual({ moment, thawMs: expect.any(Number) as number, frozenNow: false });
      expect(thawMs).toBeLessThanOrEqual(THAW_WITHIN_MS);

      // The store: the previous checkpoint or a new complete one, never a part.
      const store = new CheckpointStore(containerDir);
      const current = await store.verifyCurrent();
      const isNew = path.basename(current.dir) !== path.basename(prev.dir);
      // Running again, or stopped only when a new checkpoint was published and delete knows to keep it.
      const state = await readShimState(node.runcRoot('default'), id);
      if (task?.status === 'RUNNING') {
        const at = node.count(id);
        await node.waitCount(id, at + 2);
        expect(state?.checkpointed).toBe(false); // a later clean exit removes the checkpoint, as after --leave-running
      } else {
        expect(task?.status).toBe('STOPPED');
        expect(isNew).toBe(true);
        expect(state?.checkpointed).toBe(true);
      }
      if (moment === 'frozen' || moment === 'dump') {
        expect(isNew).toBe(false); // nothing could have been published
        expect(task?.status).toBe('RUNNING');
      }
    } finally {
      await node.containerd.removeContainer(id).catch(() => undefined);
    }
  });
});

test('kill -9 of a checkpoint left running while CRIU holds the job for the layer capture: the job runs on', async () => {
  // Left running, CRIU (not ARCH) stops the job, and the layer is captured behind CRIU's layer gate
  // (core/layer-gate.ts). The checkpointer dies once CRIU has stopped the tasks: the gate fails (or the
  // guard fails it), CRIU resumes them, nothing is published.
  const id = 'fg-layer-gate';
  const containerDir = path.join(storage, 'default', id);
  await node.runCounter(id, [...env(), 'COUNTER_MEM_MB=256']);
  await node.waitCount(id, 3);
  const tmp = fs.mkdtempSync(path.join(storage, 'tmp-'));
  try {
    const prev = await checkpointContainer(node.ctx, { namespace: 'default', id, leaveRunning: true });
    const cli = spawn(path.join(REPO_ROOT, 'bin/arch-cli'), ['finalize', '--leave-running', '--deadline', '60s'], {
      env: { ...process.env, ARCH_CONFIG: node.archConfig, TMPDIR: tmp },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    clis.push(cli);
    const exited = new Promise((r) => cli.once('exit', r));
    // CRIU has the tasks stopped: its network-lock action told the gate so.
    const stopped = () => fs.readdirSync(tmp).some((d) => fs.existsSync(path.join(tmp, d, 'network-lock')));
    const deadline = Date.now() + 60_000;
    while (!stopped()) {
      if (cli.exitCode !== null) throw new Error('finalize ended before CRIU stopped the job');
      if (Date.now() > deadline) throw new Error('CRIU never reached its network lock');
      await sleep(1);
    }
    process.kill(cli.pid!, 'SIGKILL');
    const killedAt = Date.now();
    await exited;
    const at = node.count(id);
    await waitFor(`${id} counting again`, () => (node.count(id) > at + 2 ? true : undefined), THAW_WITHIN_MS);
    const resumedMs = Date.now() - killedAt;
    await waitFor(
      'the orphaned dump and the guard to end',
      () =>
        processesNaming(`${containerDir}/.staging-`).length === 0 && guardProcesses(id).length === 0 ? true : undefined,
      60_000,
    );
    expect(resumedMs).toBeLessThanOrEqual(THAW_WITHIN_MS);
    expect((await node.containerd.task(id))?.status).toBe('RUNNING');
    const n = node.count(id);
    await node.waitCount(id, n + 2);
    // Nothing was published, and the gate left nothing behind.
    expect((await new CheckpointStore(containerDir).verifyCurrent()).dir).toBe(prev.dir);
    expect(fs.readdirSync(tmp)).toEqual([]);
  } finally {
    await node.containerd.removeContainer(id).catch(() => undefined);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('a container its user paused stays paused when the checkpointer is killed', async () => {
  const id = 'fg-user-paused';
  const containerDir = path.join(storage, 'default', id);
  await runningCounter(id);
  try {
    await runcOf().pause(id);
    const f = await freezerOf(id);
    fs.mkdirSync(containerDir, { recursive: true });
    const cli = spawn(path.join(REPO_ROOT, 'bin/arch-cli'), ['finalize', '--leave-running', '--deadline', '60s'], {
      env: { ...process.env, ARCH_CONFIG: node.archConfig },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    clis.push(cli);
    const exited = new Promise((r) => cli.once('exit', r));
    await killAt(cli, 'dump', () => reached('dump', f, containerDir, []));
    await exited;
    // The orphaned dump ends (CRIU leaves the freezer as it found it); nobody thaws what the user paused.
    await waitFor(
      'the orphaned dump to end',
      () => (processesNaming(`${containerDir}/.staging-`).length === 0 ? true : undefined),
      30_000,
    );
    await sleep(THAW_WITHIN_MS / 2);
    expect(freezeRequestedSync(f)).toBe(true);
    expect((await runcOf().state(id)).status).toBe('paused');
    expect(guardProcesses(id)).toEqual([]);
    await runcOf().resume(id);
  } finally {
    await node.containerd.removeContainer(id).catch(() => undefined);
  }
});

/**
 * A stand-in for a checkpointer, in a process of its own: arms a guard, freezes
 * `id` (with `runc pause`, or through its cgroup then marking it stopped by a
 * published checkpoint as checkpoint.ts does before its kill), says "frozen"
 * and hangs until the test kills it.
 */
async function standIn(id: string, how: 'runc-pause' | 'committed-stop'): Promise<ChildProcess> {
  const f = await freezerOf(id);
  const plan = {
    id,
    runcRoot: node.runcRoot('default'),
    ...(how === 'committed-stop' ? { cgroup: { version: f.version, dir: f.dir } } : {}),
    runc: {
      runc: node.ctx.settings.runc,
      criu: node.ctx.settings.criu,
      criuNoBreakpoints: node.ctx.settings.criuNoBreakpoints,
    },
    log: { logFile: node.archLog, logLevel: 'debug', nodeName: node.name },
  };
  const dist = (m: string) => JSON.stringify(path.join(REPO_ROOT, 'dist/core', m));
  const script = `
    const { FreezeGuard } = await import(${dist('freeze-guard.js')});
    const { Runc } = await import(${dist('runc.js')});
    const { CgroupFreezer } = await import(${dist('cgroup-freezer.js')});
    const { updateShimState } = await import(${dist('shim-state.js')});
    const { createLogger } = await import(${dist('log.js')});
    const plan = { ...${JSON.stringify(plan)}, pid: process.pid };
    FreezeGuard.arm(plan, createLogger(plan.log, 'test'));
    if (plan.cgroup) {
      await CgroupFreezer.at(plan.cgroup.version, plan.cgroup.dir).freeze();
      await updateShimState(plan.runcRoot, plan.id, { checkpointed: true });
    } else {
      await new Runc(plan.runc, plan.runcRoot).pause(plan.id);
    }
    process.stdout.write('frozen\\n');
    setInterval(() => undefined, 1000);
  `;
  const helper = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  helpers.push(helper);
  await new Promise<void>((resolve, reject) => {
    helper.stdout!.on('data', (b: Buffer) => String(b).includes('frozen') && resolve());
    helper.once('exit', (code) => reject(new Error(`stand-in exited (${String(code)}) before freezing`)));
  });
  expect(freezeRequestedSync(f)).toBe(true);
  return helper;
}

async function killStandIn(helper: ChildProcess): Promise<number> {
  const exited = new Promise((r) => helper.once('exit', r));
  helper.kill('SIGKILL');
  await exited;
  return Date.now();
}

const guardActions = (id: string) =>
  node
    .logLines()
    .filter((l) => l.component === 'freeze-guard' && l.container === id)
    .map((l) => l.action);

test('runc pause fallback: a guard armed before `runc pause` resumes the container when its process is killed', async () => {
  // Where the cgroup layout is unknown the checkpoint freezes with `runc pause`; the guard then uses runc too.
  const id = 'fg-runc-pause';
  await runningCounter(id);
  try {
    const helper = await standIn(id, 'runc-pause');
    expect((await runcOf().state(id)).status).toBe('paused');
    const killedAt = await killStandIn(helper);
    await waitFor(
      `${id} resumed by its guard`,
      async () => ((await runcOf().state(id)).status === 'running' ? true : undefined),
      THAW_WITHIN_MS,
    );
    expect(Date.now() - killedAt).toBeLessThanOrEqual(THAW_WITHIN_MS);
    await waitFor('the guard to exit', () => (guardProcesses(id).length === 0 ? true : undefined), 5_000);
    const at = node.count(id);
    await node.waitCount(id, at + 2);
    expect(guardActions(id)).toEqual(['thawed']);
  } finally {
    await node.containerd.removeContainer(id).catch(() => undefined);
  }
});

test('a stop the checkpoint had committed to (published, marked "checkpointed") is finished by the guard: killed, not thawed', async () => {
  const id = 'fg-committed';
  await runningCounter(id);
  try {
    const killedAt = await killStandIn(await standIn(id, 'committed-stop'));
    await node.containerd.waitStatus(id, 'STOPPED', THAW_WITHIN_MS);
    expect(Date.now() - killedAt).toBeLessThanOrEqual(THAW_WITHIN_MS);
    await waitFor('the guard to exit', () => (guardProcesses(id).length === 0 ? true : undefined), 5_000);
    expect(guardActions(id)).toEqual(['killed']);
    expect((await readShimState(node.runcRoot('default'), id))?.checkpointed).toBe(true); // delete keeps the checkpoint
  } finally {
    await node.containerd.removeContainer(id).catch(() => undefined);
  }
});
