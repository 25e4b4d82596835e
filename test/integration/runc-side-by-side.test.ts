import { execa } from 'execa';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { criuEnv } from '../../core/settings.js';
import { readShimState } from '../../core/shim-state.js';
import { CheckpointStore } from '../../core/store.js';
import { realRunc } from '../support/arch-env.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import type { OciSpec } from '../../core/oci-spec.js';
import { damagePageImage } from '../support/checkpoint-copies.js';
import { makeRuncBundle } from '../support/direct-runc.js';
import { buildRootfs, COUNTER_FILES, REPO_ROOT } from '../support/images.js';
import { expectSame, runcCaller, type CallOptions, type CallResult } from '../support/side-by-side.js';

/**
 * arch-runc with ARCH on is runc: every call of runc's command-line surface
 * on an ARCH container (a bundle with ARCH_ENABLE=1) gives what the real runc
 * gives on an identical bundle: exit code, output (ids, pids, times and CPU
 * columns masked), state and files. Both sides use the same container ids,
 * each under its own --root. arch-runc is called as on a node (no --criu: the
 * node's CRIU is its business); the real runc is told the node's CRIU and its
 * environment, as a user of that CRIU would have to.
 * Differences by design, not compared: arch-runc restores on create when a
 * checkpoint exists (each container here is fresh), keeps its marker files
 * (arch.*) in runc's state dir, and publishes an ARCH checkpoint from the
 * images of a complete `runc checkpoint`.
 */
const RUNC = realRunc();
let node: ArchTestNode;
let work: string;
let storage: string;
let base: string;
const cgroupParent = `/arch-sbs-${process.pid}`;
const netns = `arch-sbs-${process.pid}`;

type SideName = 'arch' | 'runc';
const SIDES: SideName[] = ['arch', 'runc'];
const rootOf = (s: SideName) => path.join(base, s);
const bundleOf = (s: SideName, id: string) => path.join(work, s, id);
const binOf = (s: SideName) => (s === 'arch' ? ARCH_RUNC_BIN : RUNC);

const call = runcCaller(
  () => ({ ARCH_CONFIG: node.archConfig }),
  () => work,
);

/** What differs between the sides by design: the root and the bundle dirs (arch's mapped onto runc's). */
const masks = (): [string, string][] => [
  [rootOf('arch'), rootOf('runc')],
  [path.join(work, 'arch'), path.join(work, 'runc')],
];

/** The node's CRIU for a direct runc call: arch-runc adds the same by itself. */
function criuFor(s: SideName): { globals: string[]; env: Record<string, string> } {
  return s === 'arch'
    ? { globals: [], env: {} }
    : { globals: ['--criu', node.ctx.settings.criu], env: criuEnv(node.ctx.settings) };
}

/** One runc call on one side. `criu`: the call runs CRIU (checkpoint, restore). */
function on(s: SideName, args: string[], opts: CallOptions & { criu?: boolean } = {}): Promise<CallResult> {
  const c = opts.criu ? criuFor(s) : { globals: [], env: {} };
  return call(binOf(s), ['--root', rootOf(s), ...c.globals, ...args], { ...opts, env: { ...c.env, ...opts.env } });
}

/** The same call on both sides (args get the side: bundles and files are per side). */
async function both(
  args: (s: SideName) => string[],
  opts: CallOptions & { criu?: boolean } = {},
): Promise<{ a: CallResult; r: CallResult }> {
  const a = await on('arch', args('arch'), opts);
  const r = await on('runc', args('runc'), opts);
  return { a, r };
}

/** Both sides did the same, and exited `code` (undefined: any). */
function same(x: { a: CallResult; r: CallResult }, code?: number): void {
  expectSame(x.a, x.r, masks());
  if (code !== undefined) expect({ exitCode: x.a.exitCode, stderr: x.a.stderr }).toMatchObject({ exitCode: code });
}

/** Both bundles of a pair: identical specs (ARCH's variables on both), their own cgroups. */
async function pair(
  id: string,
  opts: { args?: string[]; env?: string[]; edit?: (spec: OciSpec) => void } = {},
): Promise<void> {
  for (const s of SIDES) {
    await makeRuncBundle(bundleOf(s, id), path.join(work, 'rootfs'), {
      cgroupsPath: `${cgroupParent}/${s}-${id}`,
      args: opts.args,
      edit: opts.edit,
      env: ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`, ...(opts.env ?? [])],
    });
  }
}

async function statusOf(s: SideName, id: string): Promise<string> {
  const r = await execa(RUNC, ['--root', rootOf(s), 'state', id], { reject: false });
  return r.exitCode === 0 ? (JSON.parse(r.stdout) as { status: string }).status : 'absent';
}

async function statuses(id: string): Promise<string[]> {
  return [await statusOf('arch', id), await statusOf('runc', id)];
}

async function pidOf(s: SideName, id: string): Promise<number> {
  return (JSON.parse((await execa(RUNC, ['--root', rootOf(s), 'state', id])).stdout) as { pid: number }).pid;
}

/** runc's own files in its state dir of the container (ARCH's arch.* markers left out). */
function runcFiles(s: SideName, id: string): string[] {
  const dir = path.join(rootOf(s), id);
  return fs.existsSync(dir)
    ? fs
        .readdirSync(dir)
        .filter((f) => !f.startsWith('arch.'))
        .sort()
    : ['(absent)'];
}

const countIn = (s: SideName, id: string): number =>
  Number(fs.readFileSync(path.join(bundleOf(s, id), 'rootfs', COUNTER_FILES.count), 'utf8') || 0);

async function waitCounts(id: string, above: [number, number] = [0, 0]): Promise<void> {
  for (const [i, s] of SIDES.entries())
    await waitFor(`${s}/${id} counts past ${above[i]! + 2}`, () => (countIn(s, id) > above[i]! + 2 ? true : undefined));
}

/** Output columns that differ between two containers or two moments (pids, times, CPU) become X. */
function maskColumns(out: string, cols: number[]): string {
  return out
    .split('\n')
    .map((line, i) => {
      const f = line.trim().split(/\s+/);
      if (i === 0 || f.length < 2) return f.join(' ');
      for (const c of cols) if (c < f.length) f[c] = 'X';
      return f.join(' ');
    })
    .join('\n');
}

/** `runc state`/`list --format json` output with the pid and creation time masked. */
function maskStateJson(out: string): string {
  const mask = (o: Record<string, unknown>) => ({
    ...o,
    pid: typeof o.pid === 'number' && o.pid > 0 ? 'PID' : o.pid,
    created: 'T',
  });
  const v = JSON.parse(out) as Record<string, unknown> | Record<string, unknown>[] | null;
  return JSON.stringify(Array.isArray(v) ? v.map(mask) : v && mask(v));
}

const withStdout = (r: CallResult, f: (s: string) => string): CallResult => ({
  ...r,
  stdout: r.exitCode === 0 ? f(r.stdout) : r.stdout,
});

async function removeAll(): Promise<void> {
  for (const s of SIDES) {
    for (const id of fs.existsSync(rootOf(s)) ? fs.readdirSync(rootOf(s)) : []) {
      await execa(RUNC, ['--root', rootOf(s), 'kill', '--all', id, 'KILL'], {
        reject: false,
        stdin: 'ignore',
        timeout: 10_000,
      });
      await execa(RUNC, ['--root', rootOf(s), 'delete', '--force', id], {
        reject: false,
        stdin: 'ignore',
        timeout: 10_000,
      });
    }
  }
}

beforeAll(async () => {
  await cleanupStaleNodes();
  node = await startArchNode('side-by-side');
  work = fs.mkdtempSync('/tmp/arch-sbs-');
  storage = path.join(work, 'checkpoints');
  base = path.join('/run', `arch-sbs-${process.pid}`);
  for (const s of SIDES) fs.mkdirSync(rootOf(s), { recursive: true });
  await buildRootfs(path.join(work, 'rootfs'));
});

afterAll(async () => {
  await removeAll();
  await stopAllNodes();
  if (node) fs.rmSync(path.dirname(node.archConfig), { recursive: true, force: true });
  await execa('ip', ['netns', 'delete', netns], { reject: false });
  if (base) fs.rmSync(base, { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
  for (const c of fs.readdirSync('/sys/fs/cgroup')) {
    const dir = path.join('/sys/fs/cgroup', c, cgroupParent);
    for (const sub of fs.existsSync(dir) ? fs.readdirSync(dir, { withFileTypes: true }) : []) {
      if (sub.isDirectory()) fs.rmSync(path.join(dir, sub.name), { recursive: true, force: true });
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

describe('ARCH on: arch-runc and runc side by side on fresh containers', () => {
  test('create (--pid-file), state, list, start, ps, exec, pause/resume, kill, delete; and their errors', async () => {
    const id = 'sbs-steps';
    await pair(id, { env: ['COUNTER_INTERVAL_MS=100'] });
    const pidFile = (s: SideName) => path.join(work, s, `${id}.pid`);
    same(await both((s) => ['create', '--pid-file', pidFile(s), '--bundle', bundleOf(s, id), id], { files: true }), 0);
    expect(fs.existsSync(path.join(rootOf('arch'), id, 'arch.json'))).toBe(true); // it is an ARCH container
    expect(await statuses(id)).toEqual(['created', 'created']);
    for (const s of SIDES) expect(Number(fs.readFileSync(pidFile(s), 'utf8'))).toBe(await pidOf(s, id));
    expect(runcFiles('arch', id)).toEqual(runcFiles('runc', id));
    same(await both((s) => ['create', '--bundle', bundleOf(s, id), id], { files: true }), 1); // exists

    const states = await both(() => ['state', id]);
    same({ a: withStdout(states.a, maskStateJson), r: withStdout(states.r, maskStateJson) }, 0);
    const lists = await both(() => ['list', '--format', 'json']);
    same({ a: withStdout(lists.a, maskStateJson), r: withStdout(lists.r, maskStateJson) }, 0);
    const table = await both(() => ['list']); // ID PID STATUS BUNDLE CREATED OWNER
    same(
      { a: withStdout(table.a, (o) => maskColumns(o, [1, 4])), r: withStdout(table.r, (o) => maskColumns(o, [1, 4])) },
      0,
    );
    same(await both(() => ['list', '-q']), 0);

    same(await both(() => ['start', id]), 0);
    expect(await statuses(id)).toEqual(['running', 'running']);
    same(await both(() => ['start', id])); // not in the created state
    await waitCounts(id);

    const ps = await both(() => ['ps', id]); // UID PID PPID C STIME TTY TIME CMD
    same(
      {
        a: withStdout(ps.a, (o) => maskColumns(o, [1, 2, 3, 4, 6])),
        r: withStdout(ps.r, (o) => maskColumns(o, [1, 2, 3, 4, 6])),
      },
      0,
    );
    const psJson = await both(() => ['ps', '--format', 'json', id]);
    same(
      {
        a: withStdout(psJson.a, (o) => String((JSON.parse(o) as number[]).length)),
        r: withStdout(psJson.r, (o) => String((JSON.parse(o) as number[]).length)),
      },
      0,
    );
    same(
      await both(() => ['exec', id, '/bin/sh', '-c', 'echo out; echo err >&2; read x; echo "got $x"; exit 7'], {
        input: 'line\n',
      }),
      7,
    );
    same(await both(() => ['exec', id, '/no/such/binary']));

    same(await both(() => ['pause', id]), 0);
    expect(await statuses(id)).toEqual(['paused', 'paused']);
    same(await both(() => ['pause', id]));
    same(await both(() => ['resume', id]), 0);
    same(await both(() => ['resume', id]));
    expect(await statuses(id)).toEqual(['running', 'running']);

    same(await both(() => ['kill', id, 'KILL']), 0);
    await waitFor('both stopped', async () => ((await statuses(id)).every((x) => x === 'stopped') ? true : undefined));
    same(await both(() => ['kill', id, 'KILL'])); // not running
    expect(runcFiles('arch', id)).toEqual(runcFiles('runc', id));
    same(await both(() => ['delete', id]), 0);
    expect(await statuses(id)).toEqual(['absent', 'absent']);
    expect(fs.readdirSync(rootOf('arch'))).toEqual(fs.readdirSync(rootOf('runc')));
    same(await both(() => ['delete', id]));
    same(await both(() => ['state', id]));
  });

  test('delete: refused while running; --force of a running and of a stopped container; a missing id', async () => {
    const id = 'sbs-delete';
    // Silent: runc's own output is what is compared (the container inherits the call's stdout).
    await pair(id, { args: ['/bin/sleep', '600'] });
    const pidFile = (s: SideName) => path.join(work, s, `${id}.pid`);
    for (let round = 0; round < 2; round++) {
      same(
        await both((s) => ['run', '-d', '--pid-file', pidFile(s), '--bundle', bundleOf(s, id), id], { files: true }),
        0,
      );
      expect(await statuses(id)).toEqual(['running', 'running']);
      same(await both((s) => ['run', '-d', '--bundle', bundleOf(s, id), id], { files: true }), 1); // exists
      for (const s of SIDES) expect(Number(fs.readFileSync(pidFile(s), 'utf8'))).toBe(await pidOf(s, id));
      same(await both(() => ['delete', id]), 1);
      if (round === 1) {
        same(await both(() => ['kill', id, 'KILL']), 0);
        await waitFor('both stopped', async () =>
          (await statuses(id)).every((x) => x === 'stopped') ? true : undefined,
        );
      }
      same(await both(() => ['delete', '--force', id]), 0);
      expect(await statuses(id)).toEqual(['absent', 'absent']);
    }
    same(await both(() => ['delete', '--force', id]));
    same(await both(() => ['delete', id]));
    expect(fs.readdirSync(rootOf('arch'))).toEqual(fs.readdirSync(rootOf('runc')));
  });

  test('run in the foreground: stdin, stdout, stderr, exit code; removed after the exit unless --keep', async () => {
    const id = 'sbs-fg';
    await pair(id, { args: ['/bin/sh', '-c', 'echo out; echo err >&2; read x; echo "got $x"; exit 3'] });
    same(await both((s) => ['run', '--bundle', bundleOf(s, id), id], { input: 'line\n' }), 3);
    expect(await statuses(id)).toEqual(['absent', 'absent']);
    const kept = await both((s) => ['run', '--keep', '--bundle', bundleOf(s, id), id], { input: 'kept\n' });
    same(kept, 3);
    expect(kept.a.stdout).toBe('out\ngot kept\n');
    expect(await statuses(id)).toEqual(['stopped', 'stopped']);
    same(await both(() => ['delete', id]), 0);
  });

  test('--preserve-fds: the descriptors after stdio reach the container', async () => {
    const id = 'sbs-fds';
    await pair(id, {
      args: [
        '/bin/sh',
        '-c',
        'cat /proc/self/fd/3 > /from-fd3; cat /proc/self/fd/4 > /from-fd4; ls /proc/self/fd/5 2>/dev/null > /fd5; sleep 600',
      ],
    });
    for (const n of [3, 4]) fs.writeFileSync(path.join(work, `fd${n}`), `fd ${n}\n`);
    const fds = [3, 4].map((n) => fs.openSync(path.join(work, `fd${n}`), 'r'));
    try {
      same(await both((s) => ['create', '--preserve-fds', '2', '--bundle', bundleOf(s, id), id], { fds }), 0);
    } finally {
      for (const fd of fds) fs.closeSync(fd);
    }
    same(await both(() => ['start', id]), 0);
    for (const s of SIDES) {
      await waitFor(`${s} read fd 4`, () =>
        fs.existsSync(path.join(bundleOf(s, id), 'rootfs/fd5')) ? true : undefined,
      );
      const rootfs = path.join(bundleOf(s, id), 'rootfs');
      expect([
        fs.readFileSync(path.join(rootfs, 'from-fd3'), 'utf8'),
        fs.readFileSync(path.join(rootfs, 'from-fd4'), 'utf8'),
        fs.readFileSync(path.join(rootfs, 'fd5'), 'utf8'),
      ]).toEqual(['fd 3\n', 'fd 4\n', '']);
    }
    same(await both(() => ['delete', '--force', id]), 0);
  });

  test('--console-socket: the terminal of a create goes to the socket', async () => {
    const id = 'sbs-tty';
    await pair(id, {
      args: ['/bin/sh', '-c', 'tty; echo hi; sleep 600'],
      edit: (spec) => void (spec.process!.terminal = true),
    });
    const receivers = consoleReceivers();
    try {
      const base = (s: SideName) => path.join(work, s, id);
      const socket = (s: SideName) => `${base(s)}.sock`;
      for (const s of SIDES) await receivers.start(base(s));
      same(
        await both((s) => ['create', '--console-socket', socket(s), '--bundle', bundleOf(s, id), id], { files: true }),
        0,
      );
      same(await both(() => ['start', id]), 0);
      const text = (s: SideName) => receivers.text(base(s));
      expect(await text('arch')).toBe(await text('runc'));
      expect(await text('arch')).toMatch(/^\/dev\/pts\/\d+\r\nhi\r\n$/);
      same(await both(() => ['delete', '--force', id]), 0);
    } finally {
      receivers.killAll();
    }
  });

  test('--console-socket on a restore: the restored terminal goes to the socket; after a failed restore, the fresh start gets it', async () => {
    const id = 'sbs-tty-restore';
    // "start" only when started fresh; "hi" once /go exists (made after the checkpoint).
    await pair(id, {
      args: ['/bin/sh', '-c', 'echo start; while [ ! -e /go ]; do sleep 0.1; done; echo hi; sleep 600'],
      edit: (spec) => void (spec.process!.terminal = true),
    });
    const receivers = consoleReceivers();
    const base = (s: SideName, n: number) => path.join(work, s, `${id}-${n}`);
    const socket = (s: SideName, n: number) => `${base(s, n)}.sock`;
    const receive = (s: SideName, n: number, until: string) => receivers.start(base(s, n), until);
    const text = (s: SideName, n: number) => receivers.text(base(s, n));
    const rootfs = (s: SideName) => path.join(bundleOf(s, id), 'rootfs');
    const images = (s: SideName, n: number) => path.join(work, s, `${id}-images-${n}`);
    try {
      for (const s of SIDES) await receive(s, 1, 'start');
      same(
        await both((s) => ['create', '--console-socket', socket(s, 1), '--bundle', bundleOf(s, id), id], {
          files: true,
        }),
        0,
      );
      same(await both(() => ['start', id]), 0);
      for (const s of SIDES) expect(await text(s, 1)).toBe('start\r\n');
      same(await both((s) => ['checkpoint', '--image-path', images(s, 1), id], { criu: true }), 0);

      // arch-runc's create restores (ARCH's checkpoint of that dump); runc is asked to restore the dump.
      for (const s of SIDES) {
        fs.writeFileSync(path.join(rootfs(s), 'go'), '');
        await receive(s, 2, 'hi');
      }
      const bundle = (s: SideName) => ['--bundle', bundleOf(s, id), id];
      const a = await on('arch', ['create', '--console-socket', socket('arch', 2), ...bundle('arch')], { files: true });
      const r = await on(
        'runc',
        ['restore', '-d', '--console-socket', socket('runc', 2), '--image-path', images('runc', 1), ...bundle('runc')],
        { criu: true, files: true },
      );
      expect([a.exitCode, r.exitCode]).toEqual([0, 0]);
      expect((await on('arch', ['start', id])).exitCode).toBe(0);
      for (const s of SIDES) expect(await text(s, 2)).toBe('hi\r\n'); // restored: no "start"

      // A damaged page image is found while CRIU restores, after runc has been given a console socket.
      // The terminal goes to the caller only after a restore that worked (core/console-relay.ts): the
      // fresh start still has the caller's socket.
      expect((await on('arch', ['checkpoint', '--image-path', images('arch', 2), id], { criu: true })).exitCode).toBe(
        0,
      );
      damagePageImage(path.join(storage, 'arch', id, 'current'));
      fs.rmSync(path.join(rootfs('arch'), 'go'));
      await receive('arch', 3, 'start');
      expect((await on('arch', ['create', '--console-socket', socket('arch', 3), ...bundle('arch')])).exitCode).toBe(0);
      expect((await on('arch', ['start', id])).exitCode).toBe(0);
      expect(await text('arch', 3)).toBe('start\r\n');
      expect(node.logLines()).toContainEqual(
        expect.objectContaining({ msg: 'checkpoint not restored; starting the container fresh', reason: 'corrupt' }),
      );
      same(await both(() => ['delete', '--force', id]), 0);
    } finally {
      receivers.killAll();
    }
  });
});

/**
 * The console receivers of a test (CONSOLE_RECEIVER below): each listens at
 * `<base>.sock` and writes what the terminal printed to `<base>.tty`.
 */
function consoleReceivers() {
  const started: ChildProcess[] = [];
  return {
    /** Resolves once it listens; it reads until the line `until`. */
    async start(base: string, until = 'hi'): Promise<void> {
      started.push(
        spawn('/usr/bin/python3', ['-c', CONSOLE_RECEIVER, `${base}.sock`, `${base}.tty`, until], { stdio: 'ignore' }),
      );
      await waitFor(`console socket ${base}.sock`, () => (fs.existsSync(`${base}.sock`) ? true : undefined));
    },
    text: (base: string) =>
      waitFor(`terminal output ${base}.tty`, () =>
        fs.existsSync(`${base}.tty`) ? fs.readFileSync(`${base}.tty`, 'utf8') : undefined,
      ),
    killAll: () => started.forEach((p) => p.kill('SIGKILL')),
  };
}

/**
 * Receives the terminal's master over the console socket (runc's
 * --console-socket protocol: one SCM_RIGHTS message), writes what the
 * container printed until a line (argv[3], else "hi"), then holds the
 * master until killed.
 */
const CONSOLE_RECEIVER = `
import os, select, socket, sys, time
sock, out = sys.argv[1], sys.argv[2]
until = (sys.argv[3] if len(sys.argv) > 3 else 'hi').encode() + b'\\r\\n'
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sock)
s.listen(1)
c, _ = s.accept()
_, fds, _, _ = socket.recv_fds(c, 4096, 1)
data, end = b'', time.time() + 30
while until not in data and time.time() < end:
    if select.select([fds[0]], [], [], 0.5)[0]:
        try:
            chunk = os.read(fds[0], 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
with open(out + '.tmp', 'wb') as f:
    f.write(data)
os.rename(out + '.tmp', out)
time.sleep(3600)
`;

describe('ARCH on: checkpoint and restore side by side', () => {
  test("checkpoint into an image dir, restore from it (--pid-file); the node's CRIU without --criu", async () => {
    const id = 'sbs-ckpt';
    await pair(id, { env: ['COUNTER_INTERVAL_MS=100'] });
    same(await both((s) => ['run', '-d', '--bundle', bundleOf(s, id), id], { devNull: true }), 0);
    await waitCounts(id);
    const images = (s: SideName) => path.join(work, s, `${id}-images`);
    same(await both((s) => ['checkpoint', '--image-path', images(s), id], { criu: true }), 0);
    expect(await statuses(id)).toEqual(['absent', 'absent']);
    // CRIU names tmpfs images by mount id, which differs between any two containers.
    const names = (s: SideName) =>
      fs
        .readdirSync(images(s))
        .map((n) => n.replace(/^tmpfs-dev-\d+/, 'tmpfs-dev-N'))
        .sort();
    expect(names('arch')).toEqual(names('runc'));
    const at: [number, number] = [countIn('arch', id), countIn('runc', id)];
    // ARCH's own copy of a complete dump (by design: a later create restores it).
    expect(await new CheckpointStore(path.join(storage, 'arch', id)).current()).toBeTruthy();

    const pidFile = (s: SideName) => path.join(work, s, `${id}.pid`);
    same(
      await both(
        (s) => ['restore', '-d', '--image-path', images(s), '--pid-file', pidFile(s), '--bundle', bundleOf(s, id), id],
        { criu: true, devNull: true },
      ),
      0,
    );
    expect(await statuses(id)).toEqual(['running', 'running']);
    for (const s of SIDES) expect(Number(fs.readFileSync(pidFile(s), 'utf8'))).toBe(await pidOf(s, id));
    await waitCounts(id, at);
    same(await both(() => ['delete', '--force', id]), 0);
  });

  test('run in the foreground, checkpointed; run again: arch-runc restores as `runc restore` does in the foreground', async () => {
    const id = 'sbs-fg-restore';
    // Waits for /go (made after the checkpoint), then reads its stdin: only a restored process says "got".
    await pair(id, {
      args: [
        '/bin/sh',
        '-c',
        'echo start; touch /ready; while [ ! -e /go ]; do sleep 0.1; done; read x; echo "got $x"; echo err >&2; exit 5',
      ],
    });
    const rootfs = (s: SideName) => path.join(bundleOf(s, id), 'rootfs');
    const first = SIDES.map((s) => on(s, ['run', '--bundle', bundleOf(s, id), id], { timeoutMs: 60_000 }));
    for (const s of SIDES)
      await waitFor(`${s} ready`, () => (fs.existsSync(path.join(rootfs(s), 'ready')) ? true : undefined));
    const images = (s: SideName) => path.join(work, s, `${id}-images`);
    same(await both((s) => ['checkpoint', '--image-path', images(s), id], { criu: true }), 0);
    const [fa, fr] = await Promise.all(first);
    expectSame(fa!, fr!, masks()); // killed by the dump, as runc reports it
    expect(fa!.stdout).toBe('start\n');
    // The arch side published an ARCH checkpoint from the dump: its plain `run` restores from it.
    expect(await new CheckpointStore(path.join(storage, 'arch', id)).current()).toBeTruthy();

    for (const s of SIDES) fs.writeFileSync(path.join(rootfs(s), 'go'), '');
    const a = await on('arch', ['run', '--bundle', bundleOf('arch', id), id], { input: 'line\n', timeoutMs: 60_000 });
    const r = await on('runc', ['restore', '--image-path', images('runc'), '--bundle', bundleOf('runc', id), id], {
      criu: true,
      input: 'line\n',
      timeoutMs: 60_000,
    });
    same({ a, r }, 5);
    expect(a.stdout).toBe('got line\n');
    expect(a.stderr).toBe('err\n');
    expect(await statuses(id)).toEqual(['absent', 'absent']);
  });

  test('checkpoint --pre-dump, then a dump on its parent (--parent-path), --leave-running; restore', async () => {
    const id = 'sbs-predump';
    await pair(id, { env: ['COUNTER_INTERVAL_MS=100'] });
    same(await both((s) => ['run', '-d', '--bundle', bundleOf(s, id), id], { devNull: true }), 0);
    await waitCounts(id);
    const dir = (s: SideName, name: string) => path.join(work, s, `${id}-${name}`);
    // A pre-dump needs the kernel's dirty-memory tracking, which some VMs lack: then both fail alike.
    const tracking =
      (await execa(node.ctx.settings.criu, ['check', '--feature', 'mem_dirty_track'], { reject: false })).exitCode ===
      0;
    const pre = await both((s) => ['checkpoint', '--pre-dump', '--image-path', dir(s, 'pre'), id], { criu: true });
    same(pre, tracking ? 0 : 1);
    if (!tracking) expect(pre.a.stderr).toMatch(/CRIU is missing features/);
    expect(await statuses(id)).toEqual(['running', 'running']);
    if (!tracking) {
      same(await both(() => ['delete', '--force', id]), 0);
      return;
    }
    same(
      await both(
        (s) => [
          'checkpoint',
          '--leave-running',
          '--parent-path',
          '../' + path.basename(dir(s, 'pre')),
          '--image-path',
          dir(s, 'final'),
          id,
        ],
        { criu: true },
      ),
      0,
    );
    expect(await statuses(id)).toEqual(['running', 'running']);
    for (const s of SIDES)
      expect(fs.readlinkSync(path.join(dir(s, 'final'), 'parent'))).toBe('../' + path.basename(dir(s, 'pre')));
    // Its pages are in the parent: ARCH publishes no checkpoint of it (it would not restore).
    expect(await new CheckpointStore(path.join(storage, 'arch', id)).current()).toBeFalsy();
    same(await both(() => ['kill', id, 'KILL']), 0);
    await waitFor('both stopped', async () => ((await statuses(id)).every((x) => x === 'stopped') ? true : undefined));
    same(await both(() => ['delete', id]), 0);
    const at: [number, number] = [countIn('arch', id), countIn('runc', id)];
    same(
      await both((s) => ['restore', '-d', '--image-path', dir(s, 'final'), '--bundle', bundleOf(s, id), id], {
        criu: true,
        devNull: true,
      }),
      0,
    );
    expect(await statuses(id)).toEqual(['running', 'running']);
    await waitFor('both count on from the restored value', () =>
      SIDES.every((s, i) => countIn(s, id) > 0 && countIn(s, id) !== at[i]) ? true : undefined,
    );
    same(await both(() => ['delete', '--force', id]), 0);
  });

  test('checkpoint --lazy-pages with a page server and --status-fd; restore --lazy-pages', async () => {
    const id = 'sbs-lazy';
    await pair(id, { env: ['COUNTER_INTERVAL_MS=100'] });
    same(await both((s) => ['run', '-d', '--bundle', bundleOf(s, id), id], { devNull: true }), 0);
    await waitCounts(id);
    // The dumped container exists until its pages are moved: the restore is another container (as on another host).
    const to = `${id}-to`;
    await pair(to, { env: ['COUNTER_INTERVAL_MS=100'] });
    const results: Record<SideName, { dump: CallResult; restore: CallResult; ready: boolean }> = {} as never;
    for (const [i, s] of SIDES.entries())
      results[s] = await lazyMigrate(s, id, to, 27_300 + (process.pid % 300) * 2 + i);
    expectSame(results.arch.dump, results.runc.dump, masks());
    expectSame(results.arch.restore, results.runc.restore, masks());
    // Both dumps said on the status descriptor that their page server was ready (arch-runc handed it on).
    expect([results.arch.ready, results.runc.ready]).toEqual([true, true]);
    // The lazy restore itself fails on these VMs, with runc as with arch-runc (compared above); where it works, both run on.
    if (results.runc.restore.exitCode === 0) {
      expect(await statuses(to)).toEqual(['running', 'running']);
      await waitCounts(to, [countIn('arch', id), countIn('runc', id)]);
    }
    // The pages went to the page server: ARCH publishes no checkpoint of such a dump.
    expect(await new CheckpointStore(path.join(storage, 'arch', id)).current()).toBeFalsy();
  });

  test('a container in an external network namespace: checkpoint, restore into the same namespace', async () => {
    const id = 'sbs-netns';
    await execa('ip', ['netns', 'add', netns]);
    const nsPath = `/run/netns/${netns}`;
    await pair(id, {
      env: ['COUNTER_INTERVAL_MS=100'],
      edit: (spec) =>
        void (spec.linux!.namespaces = spec.linux!.namespaces!.map((n) =>
          n.type === 'network' ? { type: 'network', path: nsPath } : n,
        )),
    });
    same(await both((s) => ['run', '-d', '--bundle', bundleOf(s, id), id], { devNull: true }), 0);
    await waitCounts(id);
    const inNs = async (s: SideName) =>
      fs.statSync(`/proc/${await pidOf(s, id)}/ns/net`).ino === fs.statSync(nsPath).ino;
    expect([await inNs('arch'), await inNs('runc')]).toEqual([true, true]);
    const images = (s: SideName) => path.join(work, s, `${id}-images`);
    same(await both((s) => ['checkpoint', '--image-path', images(s), id], { criu: true }), 0);
    const at: [number, number] = [countIn('arch', id), countIn('runc', id)];
    same(
      await both((s) => ['restore', '-d', '--image-path', images(s), '--bundle', bundleOf(s, id), id], {
        criu: true,
        devNull: true,
      }),
      0,
    );
    expect([await inNs('arch'), await inNs('runc')]).toEqual([true, true]);
    await waitCounts(id, at);
    const rules = await execa('ip', ['netns', 'exec', netns, 'iptables-save'], { reject: false, all: true });
    expect(String(rules.all ?? '')).not.toMatch(/CRIU/);
    same(await both(() => ['delete', '--force', id]), 0);
  });

  test('a container without ARCH through arch-runc: checkpoint without --criu, restore with --criu given', async () => {
    const id = 'sbs-plain';
    for (const s of SIDES) {
      await makeRuncBundle(bundleOf(s, id), path.join(work, 'rootfs'), {
        cgroupsPath: `${cgroupParent}/${s}-${id}`,
        env: ['COUNTER_INTERVAL_MS=100'],
      });
    }
    same(await both((s) => ['run', '-d', '--bundle', bundleOf(s, id), id], { devNull: true }), 0);
    expect(fs.existsSync(path.join(rootOf('arch'), id, 'arch.json'))).toBe(false);
    await waitCounts(id);
    const images = (s: SideName) => path.join(work, s, `${id}-images`);
    same(await both((s) => ['checkpoint', '--image-path', images(s), id], { criu: true }), 0);
    const at: [number, number] = [countIn('arch', id), countIn('runc', id)];
    // Given --criu (and its environment), arch-runc is runc itself.
    const c = criuFor('runc');
    same(
      await both((s) => [...c.globals, 'restore', '-d', '--image-path', images(s), '--bundle', bundleOf(s, id), id], {
        env: c.env,
        devNull: true,
      }),
      0,
    );
    await waitCounts(id, at);
    same(await both(() => ['delete', '--force', id]), 0);
  });
});

/**
 * runc's lazy migration on one side: the dump serves its pages from a page
 * server and says on --status-fd when it is ready; CRIU's lazy-pages daemon
 * fetches them for the restore. The dump exits once every page is moved.
 */
async function lazyMigrate(
  s: SideName,
  id: string,
  to: string,
  port: number,
): Promise<{ dump: CallResult; restore: CallResult; ready: boolean }> {
  const images = path.join(work, s, `${id}-lazy`);
  fs.mkdirSync(images, { recursive: true });
  const fifo = path.join(work, s, `${id}-status`);
  await execa('mkfifo', [fifo]);
  // Read without blocking: a blocking read of a FIFO would hold a thread of
  // libuv's pool (and so jest's process) for as long as any writer lives.
  const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const statusFd = fs.openSync(fifo, 'w'); // runc wants the status descriptor write-only
  let stopped = false;
  let daemon: ChildProcess | undefined;
  try {
    const ready = (async () => {
      const buf = Buffer.alloc(16);
      while (!stopped) {
        try {
          if (fs.readSync(reader, buf, 0, buf.length, null) > 0) return;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const dump = on(
      s,
      [
        'checkpoint',
        '--lazy-pages',
        '--page-server',
        `127.0.0.1:${port}`,
        '--status-fd',
        '3',
        '--image-path',
        images,
        '--work-path',
        images,
        id,
      ],
      { criu: true, fds: [statusFd], timeoutMs: 60_000 },
    );
    const first = await Promise.race([ready.then(() => undefined), dump]);
    if (first) return { dump: first, restore: first, ready: false }; // the dump ended before it was ready: compared as it is
    daemon = spawn(
      node.ctx.settings.criu,
      [
        'lazy-pages',
        '--page-server',
        '--address',
        '127.0.0.1',
        '--port',
        String(port),
        '--images-dir',
        images,
        '--work-dir',
        images,
      ],
      {
        stdio: 'ignore',
        env: { ...process.env, ...criuEnv(node.ctx.settings) },
      },
    );
    await waitFor(`${s} lazy-pages socket`, () =>
      fs.existsSync(path.join(images, 'lazy-pages.socket')) ? true : undefined,
    );
    const restore = await on(
      s,
      ['restore', '-d', '--lazy-pages', '--image-path', images, '--work-path', images, '--bundle', bundleOf(s, to), to],
      { criu: true, devNull: true, timeoutMs: 60_000 },
    );
    return { dump: await dump, restore, ready: true };
  } finally {
    stopped = true;
    daemon?.kill('SIGKILL');
    fs.closeSync(statusFd);
    fs.closeSync(reader);
  }
}

describe('a restore that fails is reported: shim state, arch-cli ls, the error log', () => {
  test('a checkpoint whose file is gone from the rootfs: fresh start, and the failure recorded', async () => {
    const id = 'sbs-restore-fails';
    // The job holds /etc/job-input open; without it (a fresh start) it runs all the same.
    await pair(id, {
      args: ['/bin/sh', '-c', '[ -e /etc/job-input ] && exec 3</etc/job-input; exec /usr/bin/counter'],
      env: ['COUNTER_INTERVAL_MS=100'],
    });
    const bundle = bundleOf('arch', id);
    const root = rootOf('arch');
    fs.writeFileSync(path.join(bundle, 'rootfs/etc/job-input'), 'input\n');
    expect((await on('arch', ['run', '-d', '--bundle', bundle, id], { devNull: true })).exitCode).toBe(0);
    await waitFor('count >= 3', () => (countIn('arch', id) >= 3 ? true : undefined));
    const res = await checkpointContainer(node.ctx, { namespace: 'arch', id, runcRoot: root });
    expect((await on('arch', ['delete', id])).exitCode).toBe(0);
    fs.rmSync(path.join(bundle, 'rootfs/etc/job-input')); // CRIU cannot open the file again

    const lines = node.logLines().length;
    expect((await on('arch', ['run', '-d', '--bundle', bundle, id], { devNull: true })).exitCode).toBe(0);
    expect(await statusOf('arch', id)).toBe('running');
    const failure = (await readShimState(root, id))?.lastRestoreFailure;
    expect(failure).toMatchObject({ reason: 'restore-failed', checkpointDir: path.dirname(res.dir) });
    expect(failure!.message).toMatch(/runc restore failed/);
    expect(Number.isNaN(Date.parse(failure!.at))).toBe(false);
    const logged = node
      .logLines()
      .slice(lines)
      .find((l) => l.container === id && l.level === 50);
    expect(logged).toMatchObject({
      reason: 'restore-failed',
      msg: 'checkpoint not restored; starting the container fresh',
    });

    const cli = (args: string[]) =>
      execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['ls', '--local', '-n', 'arch', ...args], {
        env: { ARCH_CONFIG: node.archConfig, ARCH_RUNC_ROOT: base },
        reject: false,
      });
    const json = await cli(['--json']);
    expect(json.exitCode).toBe(0);
    const listed = (
      JSON.parse(String(json.stdout)) as { containers: { id: string; lastRestoreFailure?: unknown }[] }
    ).containers.find((c) => c.id === id);
    expect(listed?.lastRestoreFailure).toEqual(failure);
    const text = String((await cli([])).stdout);
    expect(text).toMatch(new RegExp(`arch/${id} .*FAILED \\(restore-failed\\)`));
    expect(text).toContain(
      `arch/${id}: restore failed at ${failure!.at} (restore-failed), started fresh: ${failure!.message}`,
    );
    expect((await on('arch', ['delete', '--force', id])).exitCode).toBe(0);
  });
});
