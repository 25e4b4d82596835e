import { execa } from 'execa';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { readLease } from '../../core/lease.js';
import { readShimState } from '../../core/shim-state.js';
import { CheckpointStore } from '../../core/store.js';
import { trustOf } from '../../core/trust.js';
import { realRunc } from '../support/arch-env.js';
import { damagePageImage } from '../support/checkpoint-copies.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { makeRuncBundle } from '../support/direct-runc.js';
import { buildRootfs } from '../support/images.js';

/**
 * `runc run` in the foreground (no -d), as people type it, of an ARCH
 * container that has a checkpoint: arch-runc restores it (runc restore in the
 * foreground), relays its stdio, mirrors its exit status, forwards the
 * signals it gets, and applies ARCH's exit logic when the container is gone.
 */
const RUNC = realRunc();
let node: ArchTestNode;
let work: string;
let storage: string;
let root: string;
let namespace: string;
const cgroupParent = `/arch-fg-${process.pid}`;
const ids: string[] = [];
const running: ChildProcess[] = [];

/**
 * Counts in its memory (a fresh start says "tick 1"), exits with the code a
 * file in its rootfs names, and says which signal reached it (it is the
 * container's pid 1: only trapped signals do). It keeps no file of its rootfs
 * open: a plain directory is no writable layer ARCH captures, so a file it
 * held open and wrote after a restore would have another size than the one
 * the checkpoint recorded, and CRIU would refuse the next restore of it.
 */
const JOB = [
  "trap 'echo got TERM; exit 7' TERM",
  "trap 'echo got INT; exit 8' INT",
  'i=0',
  'while :; do',
  '  i=$((i+1)); echo "tick $i"',
  '  [ -e /exit3 ] && exit 3',
  '  [ -e /exit0 ] && exit 0',
  '  sleep 0.1',
  'done',
].join('\n');

beforeAll(async () => {
  await cleanupStaleNodes();
  node = await startArchNode('foreground');
  work = fs.mkdtempSync('/tmp/arch-fg-');
  storage = path.join(work, 'ck');
  namespace = `fg-${process.pid}`;
  root = path.join('/run/arch-fg', namespace);
  fs.mkdirSync(root, { recursive: true });
  await buildRootfs(path.join(work, 'rootfs'));
});

afterAll(async () => {
  for (const p of running) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  for (const id of ids) {
    await execa(RUNC, ['--root', root, 'kill', '--all', id, 'KILL'], { reject: false, stdin: 'ignore' });
    await execa(RUNC, ['--root', root, 'delete', '--force', id], { reject: false, stdin: 'ignore' });
  }
  await stopAllNodes();
  if (node) fs.rmSync(path.dirname(node.archConfig), { recursive: true, force: true });
  if (root) fs.rmSync(root, { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
  for (const c of fs.readdirSync('/sys/fs/cgroup'))
    fs.rmSync(path.join('/sys/fs/cgroup', c, cgroupParent), { recursive: true, force: true });
});

async function bundle(id: string): Promise<string> {
  ids.push(id);
  const dir = path.join(work, `bundle-${id}`);
  await makeRuncBundle(dir, path.join(work, 'rootfs'), {
    cgroupsPath: `${cgroupParent}/${id}`,
    args: ['/bin/sh', '-c', JOB],
    env: ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`],
  });
  return dir;
}

interface Run {
  proc: ChildProcess;
  out: () => string;
  err: () => string;
  exit: Promise<number | string>;
}

/** `arch-runc run` in the foreground with pipes for stdio, as a shell would run it. */
function runForeground(dir: string, id: string): Run {
  const proc = spawn(ARCH_RUNC_BIN, ['--root', root, 'run', '--bundle', dir, id], {
    env: { ...process.env, ARCH_CONFIG: node.archConfig },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  running.push(proc);
  let out = '';
  let err = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exit = new Promise<number | string>((resolve) =>
    proc.on('exit', (code, signal) => resolve(code ?? signal ?? 'none')),
  );
  return { proc, out: () => out, err: () => err, exit };
}

const ticks = (out: string): number[] => [...out.matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));

async function status(id: string): Promise<string> {
  const r = await execa(RUNC, ['--root', root, 'state', id], { reject: false });
  return r.exitCode === 0 ? (JSON.parse(r.stdout) as { status: string }).status : 'absent';
}

/** A fresh foreground run, checkpointed by ARCH once it has counted a little: the count it was checkpointed at (at least). */
async function runAndCheckpoint(dir: string, id: string): Promise<{ at: number; ckDir: string }> {
  const first = runForeground(dir, id);
  await waitFor(`${id} counts`, () => (ticks(first.out()).length >= 5 ? true : undefined));
  expect(ticks(first.out())[0]).toBe(1);
  // libuv's io_uring and Go's multipath TCP are off in ARCH containers that do not set them: no checkpoint could take either.
  const pid = (JSON.parse((await execa(RUNC, ['--root', root, 'state', id])).stdout) as { pid: number }).pid;
  const environ = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  expect(environ).toContain('UV_USE_IO_URING=0');
  expect(environ).toContain('GODEBUG=multipathtcp=0');
  const res = await checkpointContainer(node.ctx, { namespace, id, runcRoot: root });
  // The container is gone with its checkpoint (CRIU kills it): runc reports the kill as its exit.
  expect(await first.exit).toBe(137);
  expect(await status(id)).toBe('absent');
  expect(await new CheckpointStore(path.dirname(res.dir)).current()).toBe(res.dir);
  // Its last printed count: what it was checkpointed at, or one less (the restored job prints more than it).
  return { at: Math.max(...ticks(first.out())), ckDir: res.dir };
}

test('restores, relays stdout, mirrors the exit code; signals reach the container; a clean exit removes the checkpoint', async () => {
  const id = `fg-${process.pid}`;
  const dir = await bundle(id);
  const { at, ckDir } = await runAndCheckpoint(dir, id);
  const store = new CheckpointStore(path.dirname(ckDir));

  // Restored, not fresh: it counts on from the checkpoint, and its exit code is arch-runc's.
  const lines = node.logLines().length;
  const second = runForeground(dir, id);
  await waitFor('restored counting', () => (ticks(second.out()).length >= 3 ? true : undefined));
  expect(await status(id)).toBe('running');
  expect(ticks(second.out())[0]).toBeGreaterThan(at);
  fs.writeFileSync(path.join(dir, 'rootfs/exit3'), '');
  expect(await second.exit).toBe(3);
  fs.rmSync(path.join(dir, 'rootfs/exit3'));
  expect(ticks(second.out())).not.toContain(1);
  const logs = node.logLines().slice(lines);
  expect(logs.some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
  expect(logs.some((l) => l.container === id && l.msg === 'container exited with code 3: checkpoint kept')).toBe(true);
  expect(await status(id)).toBe('absent'); // runc deletes it after the exit, as runc run does
  expect(fs.existsSync(path.join(root, id))).toBe(false);
  expect(await store.current()).toBe(ckDir);

  // What runc leaves when an ARCH file lands in the state dir as it removes it (Go's RemoveAll gives up):
  // the next run of the id is not refused ("container with given ID already exists") but restores.
  fs.mkdirSync(path.join(root, id));
  fs.writeFileSync(path.join(root, id, 'arch.json'), '{}');
  fs.writeFileSync(path.join(root, id, `arch.exit.${process.pid}.tmp`), '{}');
  const left = node.logLines().length;

  // SIGTERM and SIGINT to arch-runc reach the restored container (its traps answer).
  for (const [sig, code, said] of [
    ['SIGTERM', 7, 'got TERM'],
    ['SIGINT', 8, 'got INT'],
  ] as const) {
    const run = runForeground(dir, id);
    await waitFor(`restored counting (${sig})`, () => (ticks(run.out()).length >= 2 ? true : undefined));
    expect(ticks(run.out())[0]).toBeGreaterThan(at);
    run.proc.kill(sig);
    expect(await run.exit).toBe(code);
    if (sig === 'SIGTERM')
      expect(node.logLines().slice(left)).toContainEqual(
        expect.objectContaining({
          container: id,
          level: 40,
          msg: "removed the state dir of this id's previous container that runc left behind",
        }),
      );
    expect(run.out()).toContain(`${said}\n`);
    expect(await store.current()).toBe(ckDir); // stopped from outside: kept
  }

  // The job finishes (exit 0) after a restore: its checkpoint goes, as a delete after a clean exit does.
  const last = runForeground(dir, id);
  await waitFor('restored counting (exit 0)', () => (ticks(last.out()).length >= 2 ? true : undefined));
  expect(ticks(last.out())[0]).toBeGreaterThan(at);
  fs.writeFileSync(path.join(dir, 'rootfs/exit0'), '');
  expect(await last.exit).toBe(0);
  fs.rmSync(path.join(dir, 'rootfs/exit0'));
  expect(await store.current()).toBeFalsy();
  expect(fs.existsSync(ckDir)).toBe(false);
});

test('a corrupt checkpoint: a fresh foreground start, the restored processes never ran, the reason recorded', async () => {
  const id = `fg-bad-${process.pid}`;
  const dir = await bundle(id);
  const { ckDir } = await runAndCheckpoint(dir, id);
  // One flipped byte in a page image: found only while CRIU restores (pages are verified meanwhile).
  damagePageImage(ckDir, 0xff);

  const lines = node.logLines().length;
  const run = runForeground(dir, id);
  await waitFor('fresh counting', () => (ticks(run.out()).length >= 3 ? true : undefined));
  // Its first words are a fresh start's: the restored (stopped) processes were killed before they ran.
  expect(ticks(run.out()).slice(0, 3)).toEqual([1, 2, 3]);
  const failure = (await readShimState(root, id))?.lastRestoreFailure;
  expect(failure).toMatchObject({ reason: 'corrupt', checkpointDir: path.dirname(ckDir) });
  expect(failure!.message).toMatch(/sha256 mismatch/);
  expect(
    node
      .logLines()
      .slice(lines)
      .find((l) => l.container === id && l.level === 50),
  ).toMatchObject({ reason: 'corrupt', msg: 'checkpoint not restored; starting the container fresh' });
  run.proc.kill('SIGTERM');
  expect(await run.exit).toBe(7);
  expect(await status(id)).toBe('absent');
});

test('a checkpoint whose restored job crashes at once, again and again: after ARCH_RESTORE_CRASH_LIMIT restores the job starts fresh, and a new checkpoint restores again', async () => {
  const id = `fg-loop-${process.pid}`;
  const dir = await bundle(id);
  const { at, ckDir } = await runAndCheckpoint(dir, id);
  const store = new CheckpointStore(path.dirname(ckDir));
  const trust = trustOf(node.ctx.settings);
  // What the restore cannot carry, as the job sees it: it dies at its next look, whatever it was doing.
  fs.writeFileSync(path.join(dir, 'rootfs/exit3'), '');
  const limit = node.ctx.settings.restoreCrashes.limit;
  expect(limit).toBe(3);
  for (let n = 1; n <= limit; n++) {
    const lines = node.logLines().length;
    const run = runForeground(dir, id);
    expect(await run.exit).toBe(3);
    const logs = node.logLines().slice(lines);
    // Restored, not fresh (a failure shows why it started fresh: ARCH's log and what arch-runc said).
    if (ticks(run.out()).includes(1))
      throw new Error(
        `started fresh: ${JSON.stringify({ out: run.out(), err: run.err(), logs: logs.filter((l) => l.container === id) }, null, 1)}`,
      );
    expect(ticks(run.out()).every((t) => t > at)).toBe(true);
    expect(logs.some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
    expect(logs.find((l) => l.container === id && l.crashes !== undefined)).toMatchObject({
      checkpoint: path.basename(ckDir),
      crashes: n,
      msg: `the restored job crashed soon after its restore (${n} in a row)`,
    });
    expect((await readLease(store, trust)).lease?.restoreCrashes).toMatchObject({
      checkpoint: path.basename(ckDir),
      count: n,
    });
  }

  // The next create does not restore it again: a fresh start (tick 1), the reason recorded; the checkpoint stays.
  const lines = node.logLines().length;
  const fresh = runForeground(dir, id);
  await waitFor('a fresh start', () => (ticks(fresh.out()).length >= 1 ? true : undefined));
  expect(ticks(fresh.out())[0]).toBe(1);
  expect(await fresh.exit).toBe(3); // the fresh job meets the same file: its crash says nothing about the checkpoint
  const failure = node
    .logLines()
    .slice(lines)
    .find((l) => l.container === id && l.level === 50);
  expect(failure).toMatchObject({ reason: 'crash-loop', msg: 'checkpoint not restored; starting the container fresh' });
  expect(String(failure!.err)).toMatch(
    /^checkpoint unusable \(crash-loop\): the job crashed soon after each of its last 3 restores \(last: exited with code 3 /,
  );
  expect(String(failure!.err)).toContain(`starting fresh instead of restoring ${path.basename(ckDir)} again`);
  expect(await store.current()).toBe(ckDir);
  expect((await readLease(store, trust)).lease?.restoreCrashes?.count).toBe(3);

  // Whatever made it crash is fixed; the fresh job runs and is checkpointed: that new checkpoint restores.
  fs.rmSync(path.join(dir, 'rootfs/exit3'));
  const again = await runAndCheckpoint(dir, id);
  expect(again.ckDir).not.toBe(ckDir);
  const restored = runForeground(dir, id);
  await waitFor('restored counting', () => (ticks(restored.out()).length >= 2 ? true : undefined));
  expect(ticks(restored.out())[0]).toBeGreaterThan(again.at);
  restored.proc.kill('SIGTERM');
  expect(await restored.exit).toBe(7);
});

test("a restored job that ends at once, in a bundle with its owner's CRIU configuration (not left stopped): its exit is the job's, and it never runs again fresh", async () => {
  const id = `fg-own-criu-${process.pid}`;
  const dir = await bundle(id);
  // The owner's CRIU settings (runc's org.criu.config): ARCH then verifies everything before runc, and CRIU resumes the job itself.
  const own = path.join(work, `criu-${id}.conf`);
  fs.writeFileSync(own, '');
  const specFile = path.join(dir, 'config.json');
  const spec = JSON.parse(fs.readFileSync(specFile, 'utf8')) as { annotations?: Record<string, string> };
  fs.writeFileSync(specFile, JSON.stringify({ ...spec, annotations: { ...spec.annotations, 'org.criu.config': own } }));
  const { at } = await runAndCheckpoint(dir, id);
  fs.writeFileSync(path.join(dir, 'rootfs/exit3'), '');
  for (let n = 0; n < 2; n++) {
    const lines = node.logLines().length;
    const run = runForeground(dir, id);
    expect(await run.exit).toBe(3);
    expect(ticks(run.out()).every((t) => t > at)).toBe(true); // no "tick 1": not started a second time, fresh
    const logs = node.logLines().slice(lines);
    expect(logs.some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
    expect(logs.filter((l) => l.container === id && l.level === 50)).toEqual([]);
  }
  fs.rmSync(path.join(dir, 'rootfs/exit3'));
});
