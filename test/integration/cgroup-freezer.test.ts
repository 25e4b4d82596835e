import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CgroupFreezer } from '../../core/cgroup-freezer.js';

/**
 * The freezer ARCH's checkpoint uses instead of `runc pause/resume/kill`,
 * on a real cgroup of this host (v1 freezer or v2, whichever it has) with a
 * real process in it.
 */
const V1 = fs.existsSync('/sys/fs/cgroup/freezer/freezer.state') || fs.existsSync('/sys/fs/cgroup/freezer/tasks');
const NAME = `arch-freezer-test-${process.pid}`;
const dir = V1 ? path.join('/sys/fs/cgroup/freezer', NAME) : path.join('/sys/fs/cgroup', NAME);
const TICKS = path.join('/tmp', `${NAME}-ticks`);
let child: ChildProcess | undefined;

beforeAll(() => {
  fs.mkdirSync(dir);
});

afterEach(async () => {
  if (child && child.exitCode === null && child.signalCode === null) {
    await fs.promises
      .writeFile(path.join(dir, V1 ? 'freezer.state' : 'cgroup.freeze'), V1 ? 'THAWED' : '0')
      .catch(() => undefined);
    child.kill('SIGKILL');
    await new Promise((r) => child!.once('exit', r));
  }
  child = undefined;
});

afterAll(async () => {
  fs.rmSync(TICKS, { force: true });
  for (let i = 0; i < 50 && fs.existsSync(path.join(dir, 'sub')); i++) {
    try {
      fs.rmdirSync(path.join(dir, 'sub'));
    } catch {
      await sleep(100);
    }
  }
  for (let i = 0; i < 50 && fs.existsSync(dir); i++) {
    try {
      fs.rmdirSync(dir);
    } catch {
      await sleep(100);
    }
  }
});

/** A shell that ticks a counter file every 10 ms, moved into the test cgroup. */
async function ticker(): Promise<{ pid: number; ticks: () => number }> {
  const file = TICKS;
  fs.writeFileSync(file, '');
  child = spawn('sh', ['-c', `i=0; while :; do i=$((i+1)); echo $i > ${file}; sleep 0.01; done`], { stdio: 'ignore' });
  fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(child.pid));
  const ticks = () => Number(fs.readFileSync(file, 'utf8').trim() || 0);
  for (let i = 0; i < 100 && ticks() < 2; i++) await sleep(20);
  return { pid: child.pid!, ticks };
}

test('of(): finds the cgroup of a process in one; none for a pid that does not exist', async () => {
  const { pid } = await ticker();
  const f = await CgroupFreezer.of(pid);
  expect(f).toBeDefined();
  expect(f!.version).toBe(V1 ? 1 : 2);
  expect(f!.dir).toBe(dir);
  expect(await CgroupFreezer.of(2 ** 22 + 1)).toBeUndefined();
  expect(await CgroupFreezer.of(-1)).toBeUndefined();
});

test('freeze stops the process, thaw lets it go on', async () => {
  const { pid, ticks } = await ticker();
  const f = (await CgroupFreezer.of(pid))!;
  await f.freeze();
  expect(await f.frozen()).toBe(true);
  await sleep(50);
  const at = ticks();
  await sleep(200);
  expect(ticks()).toBe(at);
  await f.thaw();
  for (let i = 0; i < 100 && ticks() <= at; i++) await sleep(20);
  expect(ticks()).toBeGreaterThan(at);
  expect(await f.frozen()).toBe(false);
});

test('killAndThaw kills every process of a frozen cgroup', async () => {
  const { pid } = await ticker();
  const f = (await CgroupFreezer.of(pid))!;
  await f.freeze();
  const exited = new Promise((r) => child!.once('exit', (_code, signal) => r(signal)));
  await f.killAndThaw();
  expect(await exited).toBe('SIGKILL');
  for (let i = 0; i < 100 && fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').trim() !== ''; i++)
    await sleep(20);
  expect(fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').trim()).toBe('');
});

test("killAndThaw also reaches processes in cgroups below the container's", async () => {
  const { pid } = await ticker();
  fs.mkdirSync(path.join(dir, 'sub'));
  const nested = spawn('sleep', ['300'], { stdio: 'ignore' });
  try {
    fs.writeFileSync(path.join(dir, 'sub', 'cgroup.procs'), String(nested.pid));
    const f = (await CgroupFreezer.of(pid))!;
    await f.freeze();
    const exits = [child!, nested].map((p) => new Promise((r) => p.once('exit', (_c, signal) => r(signal))));
    await f.killAndThaw();
    expect(await Promise.all(exits)).toEqual(['SIGKILL', 'SIGKILL']);
  } finally {
    if (nested.exitCode === null && nested.signalCode === null) nested.kill('SIGKILL');
  }
});

test('freezes a cgroup whose processes fork all the time (v1 can miss a task forked during the freeze)', async () => {
  // A shell forking /bin/true back to back: one write of FROZEN left v1
  // FREEZING for good in about one freeze in six here.
  child = spawn('sh', ['-c', 'while :; do /bin/true; done'], { stdio: 'ignore' });
  fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(child.pid));
  const f = (await CgroupFreezer.of(child.pid!))!;
  let frozen = 0;
  for (let i = 0; i < 20; i++) {
    await f.freeze(2_000).then(
      () => frozen++,
      () => undefined,
    );
    await f.thaw();
    await sleep(20);
  }
  expect(frozen).toBe(20);
});
