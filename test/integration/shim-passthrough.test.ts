import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { realRunc } from '../support/arch-env.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { makeRuncBundle } from '../support/direct-runc.js';
import { expectSame, runcCaller } from '../support/side-by-side.js';
import { buildRootfs, COUNTER_FILES } from '../support/images.js';

/**
 * arch-runc must be runc for everything that is not ARCH's business:
 * same stdout, stderr and exit code, stdin and signals reaching runc, and a
 * non-ARCH container under containerd behaving exactly as with plain runc.
 * Direct calls run bin/arch-runc and the real runc side by side with the
 * same arguments on containers of a private runc root.
 */

const RUNC = realRunc();
let node: ArchTestNode;
let work: string;
let root: string;
let bundleA: string;
let bundleB: string;
const A = `pt-a-${process.pid}`;
const B = `pt-b-${process.pid}`;
const cgroupParent = `/arch-pt-${process.pid}`;

function archEnv(): Record<string, string> {
  return { ARCH_CONFIG: node.archConfig };
}

const call = runcCaller(archEnv, () => work);

const both = async (args: (id: string) => string[], idArch: string, idRunc: string, input?: string, files = false) => {
  const a = await call(ARCH_RUNC_BIN, ['--root', root, ...args(idArch)], { input, files });
  const r = await call(RUNC, ['--root', root, ...args(idRunc)], { input, files });
  return { a, r };
};

async function status(id: string): Promise<string> {
  const r = await call(RUNC, ['--root', root, 'state', id]);
  if (r.exitCode !== 0) return 'absent';
  return (JSON.parse(r.stdout) as { status: string }).status;
}

async function makeBundle(dir: string, rootfsFrom: string, env: string[], name: string): Promise<void> {
  await makeRuncBundle(dir, rootfsFrom, { env, cgroupsPath: `${cgroupParent}/${name}` });
}

async function runDetached(id: string, bundle: string): Promise<void> {
  // The container inherits runc's stdio: /dev/null, so nothing holds our pipes.
  await execa(RUNC, ['--root', root, 'run', '-d', '--bundle', bundle, id], { stdio: 'ignore', timeout: 30_000 });
  expect(await status(id)).toBe('running');
}

async function removeDirect(id: string): Promise<void> {
  await execa(RUNC, ['--root', root, 'kill', '--all', id, 'KILL'], { reject: false, stdin: 'ignore', timeout: 10_000 });
  await execa(RUNC, ['--root', root, 'delete', '--force', id], { reject: false, stdin: 'ignore', timeout: 10_000 });
}

beforeAll(async () => {
  await cleanupStaleNodes();
  node = await startArchNode('passthrough');
  work = fs.mkdtempSync('/tmp/arch-passthrough-');
  root = path.join('/run', `arch-passthrough-${process.pid}`);
  fs.mkdirSync(root, { recursive: true });
  const rootfs = path.join(work, 'rootfs');
  await buildRootfs(rootfs);
  bundleA = path.join(work, 'bundle-a');
  bundleB = path.join(work, 'bundle-b');
  await makeBundle(bundleA, rootfs, [], A);
  await makeBundle(bundleB, rootfs, [], B);
});

afterAll(async () => {
  for (const id of [A, B, `${A}-0`, `${B}-0`, `${A}-off`]) await removeDirect(id);
  await stopAllNodes();
  // startArchNode's settings dir (arch.env, arch.log) is not removed by the support code.
  if (node) fs.rmSync(path.dirname(node.archConfig), { recursive: true, force: true });
  fs.rmSync(root, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
  for (const c of fs.readdirSync('/sys/fs/cgroup')) {
    try {
      fs.rmdirSync(path.join('/sys/fs/cgroup', c, cgroupParent));
    } catch {
      // not there or not empty
    }
  }
});

describe('direct calls: arch-runc and runc side by side', () => {
  test('--version, --help, no arguments, unknown subcommand, unknown global flag', async () => {
    for (const args of [
      ['--version'],
      ['-v'],
      ['--help'],
      [],
      ['frob'],
      ['frob', 'x'],
      ['--no-such-flag', 'list'],
      ['state'],
      ['delete'],
    ]) {
      const a = await call(ARCH_RUNC_BIN, args);
      const r = await call(RUNC, args);
      expectSame(a, r);
    }
    const r = await call(RUNC, ['frob']);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toContain('frob');
  });

  /** A directory whose "runc" is a symlink to arch-runc (as after `ln -s arch-runc runc`). */
  function pathWithSelfLink(): string {
    const dir = path.join(work, 'path-bin');
    fs.mkdirSync(dir, { recursive: true });
    fs.rmSync(path.join(dir, 'runc'), { force: true });
    fs.symlinkSync(ARCH_RUNC_BIN, path.join(dir, 'runc'));
    return dir;
  }

  test('with no runc configured: the runc on PATH that is not arch-runc itself', async () => {
    const dir = pathWithSelfLink();
    const env = { ARCH_CONFIG: path.join(work, 'no-such.env'), PATH: `${path.dirname(RUNC)}:/usr/bin:/bin` };
    expectSame(await call(ARCH_RUNC_BIN, ['--version'], { env, timeoutMs: 10_000 }), await call(RUNC, ['--version']));
    // Called through a link named runc that comes first on PATH: it skips itself.
    const viaLink = await call(path.join(dir, 'runc'), ['--version'], {
      env: { ...env, PATH: `${dir}:${env.PATH}` },
      timeoutMs: 10_000,
    });
    expectSame(viaLink, await call(RUNC, ['--version']));
    // No runc at all: a clear error, not a loop. (PATH holds a few tools, none of them runc.)
    const tools = path.join(work, 'path-tools');
    fs.mkdirSync(tools, { recursive: true });
    for (const t of ['dirname', 'basename', 'readlink', 'grep']) {
      if (!fs.existsSync(path.join(tools, t)))
        fs.symlinkSync((await execa('sh', ['-c', `command -v ${t}`])).stdout.trim(), path.join(tools, t));
    }
    const none = await call(ARCH_RUNC_BIN, ['--version'], { env: { ...env, PATH: tools }, timeoutMs: 10_000 });
    expect(none.exitCode).toBe(127);
    expect(none.stderr).toMatch(/no runc found on PATH; set ARCH_RUNC/);
  });

  // A PATH entry "runc -> arch-runc" is not taken for the real runc (resolved, not compared as text).
  test('a "runc" symlink to arch-runc first on PATH, with ARCH_RUNC= in the environment, is skipped', async () => {
    const dir = pathWithSelfLink();
    const env = {
      ARCH_CONFIG: path.join(work, 'no-such.env'),
      ARCH_RUNC: '',
      PATH: `${dir}:${path.dirname(RUNC)}:/usr/bin:/bin`,
    };
    const direct = await call(ARCH_RUNC_BIN, ['--version'], { env, timeoutMs: 5_000 });
    expectSame(direct, await call(RUNC, ['--version']));
  });

  // ARCH_RUNC pointing at arch-runc itself must stop with a clear error, not loop.
  test('ARCH_RUNC set to arch-runc itself: one clear error, exit 127', async () => {
    const dir = pathWithSelfLink();
    const env = {
      ARCH_CONFIG: path.join(work, 'no-such.env'),
      ARCH_RUNC: path.join(dir, 'runc'),
      PATH: `/usr/bin:/bin`,
    };
    const r = await call(ARCH_RUNC_BIN, ['--version'], { env, timeoutMs: 5_000 });
    expect(r.exitCode).toBe(127);
    expect(r.stderr).toMatch(/is arch-runc itself; set ARCH_RUNC/);
  });

  describe('on running containers', () => {
    beforeAll(async () => {
      await runDetached(A, bundleA);
      await runDetached(B, bundleB);
      // Let them tick so ps/events have something to show.
      await waitFor('counter A ticks', () =>
        fs.existsSync(path.join(bundleA, 'rootfs', COUNTER_FILES.count)) ? true : undefined,
      );
    });

    test('list, state, ps (table and json): identical output for the same container', async () => {
      // ps's C (CPU %) and TIME columns move between two calls on a running process: the rest must match.
      const maskPsClock = (out: string) =>
        out
          .split('\n')
          .map((line, i) => {
            const f = line.trim().split(/\s+/);
            if (i === 0 || f.length < 8) return line;
            f[3] = 'C';
            f[6] = 'TIME';
            return f.join(' ');
          })
          .join('\n');
      for (const args of [
        ['list'],
        ['list', '-q'],
        ['list', '--format', 'json'],
        ['state', A],
        ['ps', A],
        ['ps', '--format', 'json', A],
        ['state', 'no-such-id'],
        ['ps', 'no-such-id'],
      ]) {
        const a = await call(ARCH_RUNC_BIN, ['--root', root, ...args]);
        const r = await call(RUNC, ['--root', root, ...args]);
        const table = args[0] === 'ps' && !args.includes('json');
        expectSame(
          table ? { ...a, stdout: maskPsClock(a.stdout) } : a,
          table ? { ...r, stdout: maskPsClock(r.stdout) } : r,
        );
      }
      const l = await call(ARCH_RUNC_BIN, ['--root', root, 'list', '-q']);
      expect(l.stdout.split('\n').filter(Boolean).sort()).toEqual([A, B].sort());
    });

    test('events --stats (one shot): same shape, same container', async () => {
      const a = await call(ARCH_RUNC_BIN, ['--root', root, 'events', '--stats', A]);
      const r = await call(RUNC, ['--root', root, 'events', '--stats', A]);
      expect(a.exitCode).toBe(0);
      expect(a.exitCode).toBe(r.exitCode);
      expect(a.stderr).toBe(r.stderr);
      const ja = JSON.parse(a.stdout) as { type: string; id: string; data: Record<string, unknown> };
      const jr = JSON.parse(r.stdout) as typeof ja;
      expect(ja.type).toBe('stats');
      expect(ja.id).toBe(A);
      expect(Object.keys(ja.data).sort()).toEqual(Object.keys(jr.data).sort());
      expectSame(
        await call(ARCH_RUNC_BIN, ['--root', root, 'events', '--stats', 'no-such-id']),
        await call(RUNC, ['--root', root, 'events', '--stats', 'no-such-id']),
      );
    });

    test('exec: stdout, stderr, exit code, stdin', async () => {
      const args = (id: string) => [
        'exec',
        id,
        '/bin/sh',
        '-c',
        'echo out; echo err >&2; read x; echo "got $x"; exit 7',
      ];
      const { a, r } = await both(args, A, A, 'line\n');
      expect(a.exitCode).toBe(7);
      expect(a.stdout).toBe('out\ngot line\n');
      expectSame(a, r);
    });

    test('update --resources - reads stdin', async () => {
      const { a, r } = await both(
        (id) => ['update', '--resources', '-', id],
        A,
        B,
        JSON.stringify({ pids: { limit: 321 } }),
      );
      expectSame(a, r, [[A, B]]);
      expect(a.exitCode).toBe(0);
      for (const id of [A, B]) {
        const pidsMax = fs.readFileSync(path.join('/sys/fs/cgroup/pids', cgroupParent, id, 'pids.max'), 'utf8').trim();
        expect(pidsMax).toBe('321');
      }
    });

    test('pause / resume, and their errors', async () => {
      let x = await both((id) => ['pause', id], A, B);
      expectSame(x.a, x.r, [[A, B]]);
      expect(x.a.exitCode).toBe(0);
      expect([await status(A), await status(B)]).toEqual(['paused', 'paused']);
      x = await both((id) => ['pause', id], A, B); // already paused
      expectSame(x.a, x.r, [[A, B]]);
      x = await both((id) => ['resume', id], A, B);
      expectSame(x.a, x.r, [[A, B]]);
      expect([await status(A), await status(B)]).toEqual(['running', 'running']);
      x = await both((id) => ['resume', id], A, B); // not paused
      expectSame(x.a, x.r, [[A, B]]);
      expect(x.a.exitCode).not.toBe(0);
    });

    test('a long-running call (events) is runc itself (no Node in between) and SIGTERM ends it like runc', async () => {
      const ends: { code: number | null; signal: NodeJS.Signals | null; exe: string }[] = [];
      for (const bin of [ARCH_RUNC_BIN, RUNC]) {
        const p = spawn(bin, ['--root', root, 'events', '--interval', '1s', A], {
          env: { ...process.env, ...archEnv() },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        p.stdout.on('data', (d: Buffer) => (out += d.toString()));
        const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
          p.on('exit', (code, signal) => res({ code, signal })),
        );
        await waitFor(
          `${path.basename(bin)} events output`,
          () => (out.includes('"type":"stats"') ? true : undefined),
          10_000,
        );
        const exe = fs.readlinkSync(`/proc/${p.pid}/exe`);
        p.kill('SIGTERM');
        const end = await Promise.race([exited, sleep(10_000, undefined, { ref: false }).then(() => undefined)]);
        if (!end) {
          p.kill('SIGKILL');
          throw new Error(`${bin} events did not end on SIGTERM`);
        }
        ends.push({ ...end, exe });
      }
      expect(ends[0]!.exe).toBe(fs.realpathSync(RUNC));
      expect({ code: ends[0]!.code, signal: ends[0]!.signal }).toEqual({
        code: ends[1]!.code,
        signal: ends[1]!.signal,
      });
    });

    test('kill, delete (refused while running, then after the kill), and their errors', async () => {
      let x = await both((id) => ['delete', id], A, B); // running: refused
      expectSame(x.a, x.r, [[A, B]]);
      expect(x.a.exitCode).not.toBe(0);
      x = await both((id) => ['kill', id, 'KILL'], A, B);
      expectSame(x.a, x.r, [[A, B]]);
      expect(x.a.exitCode).toBe(0);
      await waitFor('both stopped', async () =>
        (await status(A)) === 'stopped' && (await status(B)) === 'stopped' ? true : undefined,
      );
      x = await both((id) => ['kill', id, 'KILL'], A, B); // not running
      expectSame(x.a, x.r, [[A, B]]);
      x = await both((id) => ['delete', id], A, B);
      expectSame(x.a, x.r, [[A, B]]);
      expect(x.a.exitCode).toBe(0);
      expect([await status(A), await status(B)]).toEqual(['absent', 'absent']);
      x = await both((id) => ['delete', id], A, B); // gone
      expectSame(x.a, x.r, [[A, B]]);
      x = await both((id) => ['kill', id], A, B);
      expectSame(x.a, x.r, [[A, B]]);
      // The kill note is only for ARCH containers: nothing was left in runc's root.
      expect(fs.readdirSync(root)).toEqual([]);
    });

    test('create and start (non-ARCH bundle) go straight to runc; errors too', async () => {
      const ids = [`${A}-0`, `${B}-0`];
      let x = await both(
        (id) => ['create', '--bundle', id.startsWith(A) ? bundleA : bundleB, id],
        ids[0]!,
        ids[1]!,
        undefined,
        true,
      );
      expectSame(x.a, x.r, [[ids[0]!, ids[1]!]]);
      expect(x.a.exitCode).toBe(0);
      expect([await status(ids[0]!), await status(ids[1]!)]).toEqual(['created', 'created']);
      x = await both(
        (id) => ['create', '--bundle', id.startsWith(A) ? bundleA : bundleB, id],
        ids[0]!,
        ids[1]!,
        undefined,
        true,
      ); // exists
      expectSame(x.a, x.r, [[ids[0]!, ids[1]!]]);
      expect(x.a.exitCode).not.toBe(0);
      x = await both((id) => ['start', id], ids[0]!, ids[1]!);
      expectSame(x.a, x.r, [[ids[0]!, ids[1]!]]);
      expect([await status(ids[0]!), await status(ids[1]!)]).toEqual(['running', 'running']);
      x = await both((id) => ['delete', '--force', id], ids[0]!, ids[1]!);
      expectSame(x.a, x.r, [[ids[0]!, ids[1]!]]);
      expect(fs.existsSync(path.join(root, ids[0]!))).toBe(false);
    });
  });

  test('ARCH_ENABLE=0 goes through the Node side and still behaves as runc (output, exit code, state)', async () => {
    const bundle = path.join(work, 'bundle-off');
    await makeBundle(
      bundle,
      path.join(work, 'rootfs'),
      ['ARCH_ENABLE=0', 'ARCH_CHECKPOINT_HOST_PATH=rel/ignored'],
      `${A}-off`,
    );
    const id = `${A}-off`;
    try {
      const linesBefore = node.logLines().length;
      const a = await call(ARCH_RUNC_BIN, ['--root', root, 'create', '--bundle', bundle, id], { files: true });
      expect(a).toEqual({ exitCode: 0, signal: undefined, stdout: '', stderr: '' });
      expect(await status(id)).toBe('created');
      expect(fs.existsSync(path.join(root, id, 'arch.json'))).toBe(false);
      // Same id again: runc's own error and exit code, through Node.
      const again = await call(ARCH_RUNC_BIN, ['--root', root, 'create', '--bundle', bundle, id], { files: true });
      const againRunc = await call(RUNC, ['--root', root, 'create', '--bundle', bundle, id], { files: true });
      expectSame(again, againRunc);
      expect(again.exitCode).not.toBe(0);
      expectSame(await call(ARCH_RUNC_BIN, ['--root', root, 'start', id]), {
        exitCode: 0,
        signal: undefined,
        stdout: '',
        stderr: '',
      });
      expect(await status(id)).toBe('running');
      // A disabled container is not ARCH's business: no errors about it.
      expect(
        node
          .logLines()
          .slice(linesBefore)
          .filter((l) => (l.level as number) >= 50),
      ).toEqual([]);
    } finally {
      await removeDirect(id);
    }
  });
});

describe('under containerd: a non-ARCH container through arch-runc is a runc container', () => {
  async function runBoth(idArch: string, idRunc: string, args: string[], env: string[] = []) {
    const outs: string[] = [];
    for (const [id, runcBinary] of [
      [idArch, ARCH_RUNC_BIN],
      [idRunc, undefined],
    ] as const) {
      const logFile = path.join(node.dir, `${id}.out`);
      outs.push(logFile);
      await node.containerd.run({
        image: node.image,
        id,
        env,
        args,
        logFile,
        detach: true,
        ...(runcBinary ? { runcBinary } : {}),
      });
    }
    return outs;
  }

  /** containerd's /tasks/exit events (ctr events), for exit statuses. */
  let events: ReturnType<typeof spawn> | undefined;
  let eventLog = '';
  beforeAll(async () => {
    events = spawn('ctr', ['-a', node.address, 'events'], { stdio: ['ignore', 'pipe', 'ignore'] });
    events.stdout!.on('data', (d: Buffer) => (eventLog += d.toString()));
    await sleep(300);
  });
  afterAll(() => {
    events?.kill('SIGKILL');
  });

  async function exitStatus(id: string): Promise<number> {
    return waitFor(
      `exit event of ${id}`,
      () => {
        for (const line of eventLog.split('\n')) {
          const m = /\/tasks\/exit (\{.*\})\s*$/.exec(line);
          if (!m) continue;
          const e = JSON.parse(m[1]!) as { container_id?: string; exit_status?: number };
          if (e.container_id === id) return e.exit_status ?? 0;
        }
        return undefined;
      },
      10_000,
    );
  }

  async function deleteExitCode(id: string): Promise<number> {
    const status = await exitStatus(id);
    await node.containerd.taskDelete(id);
    return status;
  }

  test('output, exit code, task states', async () => {
    const [ia, ir] = ['np-sh-arch', 'np-sh-runc'];
    try {
      const [oa, or] = await runBoth(ia, ir, ['/bin/sh', '-c', 'echo out; echo err >&2; sleep 0.3; exit 7']);
      await node.containerd.waitStatus(ia, 'STOPPED', 15_000);
      await node.containerd.waitStatus(ir, 'STOPPED', 15_000);
      // stdout and stderr are two pipes copied by the shim: their interleaving is not defined.
      const lines = (f: string): string[] => fs.readFileSync(f, 'utf8').split('\n').sort();
      expect({ arch: lines(oa!), runc: lines(or!) }).toEqual({ arch: ['', 'err', 'out'], runc: ['', 'err', 'out'] });
      const ea = await deleteExitCode(ia);
      const er = await deleteExitCode(ir);
      expect(ea).toBe(7);
      expect(ea).toBe(er);
      // The container was ARCH-free: no marker, and the shim never logged about it.
      expect(node.logLines().filter((l) => l.container === ia)).toEqual([]);
      // It really went through arch-runc (containerd stored it as the runtime binary).
      expect((await node.containerd.info(ia)).runtime.options?.BinaryName).toBe(ARCH_RUNC_BIN);
    } finally {
      await node.containerd.removeContainer(ia);
      await node.containerd.removeContainer(ir);
    }
  });

  test('a long-running counter: pause/resume, SIGTERM → clean exit 0, delete', async () => {
    const [ia, ir] = ['np-ctr-arch', 'np-ctr-runc'];
    try {
      const [oa, or] = await runBoth(ia, ir, [], ['COUNTER_INTERVAL_MS=50']);
      for (const id of [ia, ir]) {
        await node.containerd.waitStatus(id, 'RUNNING', 15_000);
        await node.waitCount(id, 3);
      }
      expect(fs.existsSync(path.join(node.runcRoot('default'), ia, 'arch.json'))).toBe(false);
      for (const id of [ia, ir]) await node.containerd.ctr(['tasks', 'pause', id]);
      for (const id of [ia, ir]) await node.containerd.waitStatus(id, 'PAUSED', 10_000);
      const frozen = node.count(ia);
      await sleep(400);
      expect(node.count(ia)).toBe(frozen);
      for (const id of [ia, ir]) await node.containerd.ctr(['tasks', 'resume', id]);
      await node.waitCount(ia, frozen + 2);
      for (const id of [ia, ir]) await node.containerd.taskKill(id, 'SIGTERM');
      for (const id of [ia, ir]) await node.containerd.waitStatus(id, 'STOPPED', 15_000);
      expect(await deleteExitCode(ia)).toBe(0);
      expect(await deleteExitCode(ir)).toBe(0);
      for (const f of [oa!, or!]) {
        const out = fs.readFileSync(f, 'utf8');
        expect(out).toMatch(/^counter start pid=1 /);
        expect(out).toMatch(/\ncounter exit \d+\n$/);
      }
      await node.containerd.containerDelete(ia);
      await node.containerd.containerDelete(ir);
      expect(await node.containerd.listContainers()).not.toContain(ia);
    } finally {
      await node.containerd.removeContainer(ia);
      await node.containerd.removeContainer(ir);
    }
  });

  test('ARCH_ENABLE=0 under containerd: runs as without ARCH, no marker, delete removes nothing', async () => {
    const id = 'np-disabled';
    const storage = fs.mkdtempSync('/tmp/arch-pt-storage-');
    try {
      const out = await node.runCounter(id, [
        'ARCH_ENABLE=0',
        `ARCH_CHECKPOINT_HOST_PATH=${storage}`,
        'COUNTER_EXIT_AFTER=3',
      ]);
      await node.containerd.waitStatus(id, 'STOPPED', 15_000);
      expect(fs.readFileSync(out, 'utf8')).toMatch(/count 1\ncount 2\ncount 3\ncounter exit 3\n$/);
      expect(await deleteExitCode(id)).toBe(0);
      expect(fs.readdirSync(storage)).toEqual([]);
    } finally {
      await node.containerd.removeContainer(id);
      fs.rmSync(storage, { recursive: true, force: true });
    }
  });
});
