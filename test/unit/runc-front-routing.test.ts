import { execa } from 'execa';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SPEC_FILE } from '../../core/checkpoint-layout.js';
import { ARCH_STATE_FILE, KILLED_FILE, RESTORED_FILE } from '../../core/shim-state.js';
import { containerIdOf, optionString, parseRuncArgs, type RuncCall } from '../../core/runc-args.js';
import { fakeFrontTargets } from '../support/fake-front-targets.js';
import { REPO_ROOT } from '../support/images.js';

/**
 * The runc argument grammar is spelled twice: in C by bin/arch-runc's front (shim/arch-runc.c)
 * (which calls go to Node at all) and in TypeScript by core/runc-args.ts
 * (what the Node side then reads: root, subcommand, id, bundle, --criu).
 * Each argument vector below goes to both. The front runs for real, with
 * the exec targets it picks between replaced by two scripts that print
 * "node" or "runc", in worlds arranged from runc-args.ts's reading: the
 * shim's marker file (and a live init pid) in <root>/<id>/, an ARCH_ENABLE
 * spec in the bundle, or neither. The front's choice must be the one the
 * routing rule gives on runc-args.ts's reading; a front that found another
 * root, id or bundle would choose otherwise in one of the worlds.
 */
const FRONT = path.join(REPO_ROOT, 'bin/arch-runc');
let dir: string;
let root: string;
let bundle: string;
let env: Record<string, string>;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-front-'));
  root = path.join(dir, 'root');
  bundle = path.join(dir, 'bundle');
  fs.mkdirSync(bundle, { recursive: true });
  env = fakeFrontTargets(dir, (name) => `echo ${name}`);
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

interface World {
  marker: boolean;
  enabled: boolean;
}

/** bin/arch-runc's routing rule, on runc-args.ts's reading of the call. */
function expected(call: RuncCall, w: World): 'node' | 'runc' {
  switch (call.subcommand) {
    case 'create':
    case 'run':
      return w.enabled ? 'node' : 'runc';
    case 'delete':
      return w.marker ? 'node' : 'runc';
    case 'checkpoint':
    case 'restore':
      return !call.globals.has('--criu') || w.marker ? 'node' : 'runc';
    default:
      return 'runc';
  }
}

function arrange(call: RuncCall, w: World): { stateDir: string | undefined } {
  fs.rmSync(root, { recursive: true, force: true });
  fs.rmSync(path.join(bundle, SPEC_FILE), { force: true });
  const id = containerIdOf(call);
  const stateDir = id ? path.join(call.root, id) : undefined;
  if (w.marker && stateDir) {
    fs.mkdirSync(stateDir, { recursive: true });
    fs.writeFileSync(path.join(stateDir, ARCH_STATE_FILE), '{}');
    // A live init process: this test's own pid.
    fs.writeFileSync(path.join(stateDir, 'state.json'), JSON.stringify({ init_process_pid: process.pid }));
  }
  if (w.enabled) {
    const b = path.resolve(bundle, optionString(call, '--bundle', '-b') ?? '.');
    fs.writeFileSync(path.join(b, SPEC_FILE), JSON.stringify({ process: { env: ['ARCH_ENABLE=1'] } }));
  }
  return { stateDir };
}

const vectors = (): [string, string[]][] => {
  const G = ['--root', root, '--log', `${bundle}/log.json`, '--log-format', 'json'];
  return [
    ['containerd create', [...G, 'create', '--bundle', bundle, '--pid-file', `${bundle}/init.pid`, 'job-1']],
    ['create -b, --bundle= forms', [...G, 'create', '-b', bundle, '--no-pivot', 'job-1']],
    ['create --bundle=', ['--root=' + root, 'create', `--bundle=${bundle}`, 'job-1']],
    ['create in the bundle (no --bundle)', [...G, 'create', 'job-1']],
    ['run -d', [...G, 'run', '-d', '--bundle', bundle, 'job-1']],
    ['start', [...G, 'start', 'job-1']],
    ['delete', [...G, 'delete', 'job-1']],
    ['delete --force', [...G, 'delete', '--force', 'job-1']],
    ['delete -f', [...G, 'delete', '-f', 'job-1']],
    [
      'checkpoint from containerd',
      [...G, 'checkpoint', '--image-path', `${bundle}/img`, '--work-path', `${bundle}/work`, 'job-1'],
    ],
    ['checkpoint --leave-running', [...G, 'checkpoint', '--leave-running', '--image-path', `${bundle}/img`, 'job-1']],
    [
      'checkpoint with --criu',
      ['--criu', '/usr/sbin/criu', ...G, 'checkpoint', '--image-path', `${bundle}/img`, 'job-1'],
    ],
    ['checkpoint with --criu=', [...G, '--criu=/usr/sbin/criu', 'checkpoint', 'job-1']],
    ['restore', [...G, 'restore', '--bundle', bundle, '--image-path', `${bundle}/img`, '--detach', 'job-1']],
    ['restore with --criu', [...G, '--criu', '/usr/sbin/criu', 'restore', '--bundle', bundle, 'job-1']],
    ['rootless global with a value', ['--rootless', 'false', '--root', root, 'start', 'job-1']],
    ['boolean global', ['--systemd-cgroup', '--root', root, 'delete', 'job-1']],
    ['state', [...G, 'state', 'job-1']],
    ['kill', [...G, 'kill', 'job-1', '9']],
    ['kill --all', [...G, 'kill', '--all', 'job-1', 'SIGKILL']],
    ['no subcommand', ['--version']],
  ];
};

const worlds: World[] = [
  { marker: false, enabled: false },
  { marker: true, enabled: false },
  { marker: false, enabled: true },
];

test.each(vectors().map(([name]) => name))('%s: the front routes as runc-args.ts reads it', async (name) => {
  const argv = vectors().find(([n]) => n === name)![1];
  const call = parseRuncArgs(argv);
  for (const w of worlds) {
    const { stateDir } = arrange(call, w);
    const r = await execa(FRONT, argv, { env, extendEnv: false, cwd: bundle, reject: false });
    expect({ world: w, exit: r.exitCode, to: r.stdout.trim() }).toEqual({
      world: w,
      exit: 0,
      to: expected(call, w),
    });
    if (call.subcommand === 'kill') {
      // The front's own kill bookkeeping: a note beside the marker, only for a container the shim created.
      expect({ world: w, killed: !!stateDir && fs.existsSync(path.join(stateDir, KILLED_FILE)) }).toEqual({
        world: w,
        killed: w.marker,
      });
    }
  }
});

/**
 * A container create restored is started by the front itself: the
 * processes held stopped since the restore (every process of the cgroup
 * RESTORED_FILE names, and of the cgroups below it) go on, the mark goes,
 * and neither runc nor Node runs. A kill before that start lets them go on
 * too (so they take its signal) and keeps the start ARCH's.
 */
describe("a restored container's start", () => {
  let sleepers: ChildProcess[] = [];
  afterEach(() => {
    for (const p of sleepers) p.kill('SIGKILL');
    sleepers = [];
  });

  /** A fake cgroup tree with a stopped `sleep` in it and one in a cgroup below; returns its dir and the pids. */
  function heldTree(): { cg: string; pids: number[] } {
    const cg = path.join(dir, 'cgroup');
    fs.rmSync(cg, { recursive: true, force: true });
    fs.mkdirSync(path.join(cg, 'inner'), { recursive: true });
    const pids: number[] = [];
    for (const at of [cg, path.join(cg, 'inner')]) {
      const p = spawn('sleep', ['60'], { stdio: 'ignore' });
      sleepers.push(p);
      process.kill(p.pid!, 'SIGSTOP');
      pids.push(p.pid!);
      fs.writeFileSync(path.join(at, 'cgroup.procs'), `${p.pid}\n`);
    }
    return { cg, pids };
  }

  /** The process's state letter (T: stopped), once the kernel shows the wanted one or after 2 s. */
  async function stateOf(pid: number, want: string): Promise<string> {
    let s = '';
    for (let i = 0; i < 200; i++) {
      s = /\) (\S)/.exec(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))![1]!;
      if (s === want) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    return s;
  }

  function restoredContainer(cg: string): string {
    fs.rmSync(root, { recursive: true, force: true });
    const stateDir = path.join(root, 'job-1');
    fs.mkdirSync(stateDir, { recursive: true });
    fs.writeFileSync(path.join(stateDir, ARCH_STATE_FILE), '{}');
    fs.writeFileSync(path.join(stateDir, 'state.json'), JSON.stringify({ init_process_pid: process.pid }));
    fs.writeFileSync(path.join(stateDir, RESTORED_FILE), `${cg}\n`);
    return stateDir;
  }

  const front = (args: string[]) =>
    execa(FRONT, ['--root', root, ...args], { env, extendEnv: false, cwd: bundle, reject: false });

  test("start lets the held processes go on, without runc or Node; a second start is runc's", async () => {
    const { cg, pids } = heldTree();
    const stateDir = restoredContainer(cg);
    for (const pid of pids) expect(await stateOf(pid, 'T')).toBe('T');
    const r = await front(['start', 'job-1']);
    expect({ exit: r.exitCode, out: r.stdout.trim() }).toEqual({ exit: 0, out: '' });
    for (const pid of pids) expect(await stateOf(pid, 'S')).toBe('S');
    expect(fs.existsSync(path.join(stateDir, RESTORED_FILE))).toBe(false);
    expect((await front(['start', 'job-1'])).stdout.trim()).toBe('runc');
  });

  test("a kill before the start lets them go on to take the signal; the start after it stays ARCH's", async () => {
    const { cg, pids } = heldTree();
    const stateDir = restoredContainer(cg);
    const k = await front(['kill', 'job-1', 'TERM']);
    expect({ exit: k.exitCode, out: k.stdout.trim() }).toEqual({ exit: 0, out: 'runc' });
    for (const pid of pids) expect(await stateOf(pid, 'S')).toBe('S');
    expect(fs.readFileSync(path.join(stateDir, RESTORED_FILE), 'utf8')).toBe('');
    const s = await front(['start', 'job-1']);
    expect({ exit: s.exitCode, out: s.stdout.trim() }).toEqual({ exit: 0, out: '' });
  });

  test('a container create did not restore is started by runc', async () => {
    restoredContainer('/unused');
    fs.rmSync(path.join(root, 'job-1', RESTORED_FILE));
    expect((await front(['start', 'job-1'])).stdout.trim()).toBe('runc');
  });
});
