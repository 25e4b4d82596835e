import { execa } from 'execa';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SPEC_FILE } from '../../core/checkpoint-layout.js';
import { ARCH_STATE_FILE, KILLED_FILE } from '../../core/shim-state.js';
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
    case 'start':
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
