import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { freePort } from '../../temporal/dev-server.js';
import { allPids, processArgv } from '../../core/processes.js';
import { writeArchConfig } from '../support/arch-env.js';
import { REPO_ROOT } from '../support/images.js';
import { TEMPORAL_CLI, waitUntil } from '../support/temporal.js';

/**
 * `arch-cli demo` end to end, as a user runs it: the real bin/arch-cli,
 * real containerd nodes, arch-runc with CRIU, the Temporal dev server and
 * two workers, on ports and directories of this test (never the user's
 * /var/lib/arch/demo, /run/arch/demo or port 7233). node-a gets its own
 * containerd too (--own-node-a), so the host's containerd and its settings
 * are not involved.
 */

const tag = `t${process.pid}`;
let stateDir: string;
let runDir: string;
let cfgDir: string;
let env: NodeJS.ProcessEnv;
let ports: { temporal: number; ui: number };

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function demo(args: string[], opts: { onOutput?: (out: string, kill: (s: NodeJS.Signals) => void) => void } = {}) {
  const child = spawn(path.join(REPO_ROOT, 'bin', 'arch-cli'), ['demo', ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  const kill = (s: NodeJS.Signals) => child.kill(s);
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString();
    opts.onOutput?.(stdout, kill);
  });
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
  return new Promise<Run>((resolve) =>
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }),
  );
}

const dirArgs = (): string[] => [
  '--own-node-a',
  '--state-dir',
  stateDir,
  '--run-dir',
  runDir,
  '--temporal-port',
  String(ports.temporal),
  '--ui-port',
  String(ports.ui),
  '--id',
  `demo-${tag}`,
  '--watch',
  '2',
];

/** Processes of the demo: anything whose command line names its run or state dir (containerd, shims, workers, dev server, ctr). */
function demoProcesses(): string[] {
  return allPids()
    .filter((p) => p !== process.pid)
    .map((p) => processArgv(p).join(' '))
    .filter((a) => a.includes(runDir) || a.includes(stateDir));
}

function demoMounts(): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.includes(runDir) || l.includes(stateDir));
}

function demoCgroups(): string[] {
  const out: string[] = [];
  for (const c of fs.readdirSync('/sys/fs/cgroup'))
    for (const n of ['node-a', 'node-b']) {
      const d = path.join('/sys/fs/cgroup', c, `arch-demo-${path.basename(runDir)}-${n}`);
      if (fs.existsSync(d)) out.push(d);
    }
  return out;
}

function expectNothingLeft(): void {
  expect(demoProcesses()).toEqual([]);
  expect(demoMounts()).toEqual([]);
  expect(demoCgroups()).toEqual([]);
  expect(fs.existsSync(path.join(runDir, 'demo.json'))).toBe(false);
}

/** The counts the demo printed, in order, with the node of each ("count N on node-x" and "count continues at N"). */
function countsOf(stdout: string): { count: number; node: string }[] {
  const out: { count: number; node: string }[] = [];
  for (const line of stdout.split('\n')) {
    const watch = /^\s+count (\d+) on (node-[ab])$/.exec(line);
    if (watch) out.push({ count: Number(watch[1]), node: watch[2]! });
    const restored = /restored on (node-[ab]) in .*count continues at (\d+)/.exec(line);
    if (restored) out.push({ count: Number(restored[2]), node: restored[1]! });
  }
  return out;
}

beforeAll(async () => {
  fs.mkdirSync('/var/lib/arch', { recursive: true });
  stateDir = fs.mkdtempSync('/var/lib/arch/demo-test-');
  runDir = `/run/arch/demo-${tag}`;
  cfgDir = fs.mkdtempSync('/tmp/arch-demo-test-');
  const archConfig = writeArchConfig(cfgDir, { ARCH_TEMPORAL_CLI: TEMPORAL_CLI });
  env = { ...process.env, ARCH_CONFIG: archConfig };
  ports = { temporal: await freePort(), ui: await freePort() };
});

afterAll(async () => {
  // Whatever a failed test left: the demo's own --stop finds it by its record.
  if (fs.existsSync(path.join(runDir, 'demo.json'))) await demo(['--stop', '--run-dir', runDir]);
  fs.rmSync(stateDir, { recursive: true, force: true });
  fs.rmSync(cfgDir, { recursive: true, force: true });
});

test('demo --cleanup: the count goes on across node-a → node-b → node-a, then nothing is left', async () => {
  const r = await demo([...dirArgs(), '--cleanup']);
  const why = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
  expect({ code: r.code, why }).toEqual({ code: 0, why });
  expect(r.stdout).toMatch(/✔ started node-b \(containerd pid \d+/);
  expect(r.stdout).toMatch(/✔ started the Temporal dev server on 127\.0\.0\.1:\d+/);
  expect(r.stdout).toMatch(/✔ nothing of the demo is left running/);

  const counts = countsOf(r.stdout);
  // Where the job was, in order, and its count there: it visited node-a, node-b, node-a.
  const visits = counts.map((c) => c.node).filter((n, i, all) => i === 0 || all[i - 1] !== n);
  expect(visits).toEqual(['node-a', 'node-b', 'node-a']);
  expect(r.stdout.match(/✔ restored on node-[ab] in/g)).toHaveLength(2);
  // Each move goes on from the count the job had reached: the next number, none lost, none printed twice.
  const moves = [...r.stdout.matchAll(/count continues at (\d+) \(its last on node-[ab]: (\d+)\)/g)];
  expect(moves.map((m) => Number(m[1]) - Number(m[2]))).toEqual([1, 1]);
  // Strictly increasing: a fresh start on a node would begin at 1 again.
  for (let i = 1; i < counts.length; i++) expect(counts[i]!.count).toBeGreaterThan(counts[i - 1]!.count);
  expect(counts.length).toBeGreaterThanOrEqual(5);

  expectNothingLeft();
});

test('without --cleanup the job stays running; demo --stop then stops everything', async () => {
  const r = await demo(dirArgs());
  const why = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
  expect({ code: r.code, why }).toEqual({ code: 0, why });
  expect(r.stdout).toMatch(/Temporal UI: http:\/\/127\.0\.0\.1:\d+/);
  expect(r.stdout).toContain(`arch-cli demo --stop --run-dir ${runDir}`);
  // Still counting on node-a after the demo exited: its containerd, shim and worker are up.
  const procs = demoProcesses();
  expect(procs.some((a) => a.startsWith('containerd --config'))).toBe(true);
  expect(procs.some((a) => a.includes('worker/main.js'))).toBe(true);
  const log = path.join(stateDir, 'logs', 'node-a', 'arch-demo', `demo-${tag}.log`);
  const lastCount = (): number => Number([...fs.readFileSync(log, 'utf8').matchAll(/^count (\d+)$/gm)].pop()?.[1]);
  const before = lastCount();
  await waitUntil('the job keeps counting', () => (lastCount() > before + 3 ? true : undefined), 20_000);

  const stop = await demo(['--stop', '--run-dir', runDir]);
  expect({ code: stop.code, out: stop.stdout + stop.stderr }).toEqual({ code: 0, out: expect.any(String) });
  expect(stop.stdout).toMatch(/✔ removed job arch-demo\/demo-\S+ from node-a/);
  expectNothingLeft();
});

test('Ctrl-C during a migration stops everything the demo started', async () => {
  let sent = false;
  const r = await demo(dirArgs(), {
    onOutput: (out, kill) => {
      if (!sent && out.includes('→ migrating')) {
        sent = true;
        kill('SIGINT');
      }
    },
  });
  expect(sent).toBe(true);
  const why = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
  expect({ code: r.code, why }).toEqual({ code: 130, why });
  expect(r.stdout).toMatch(/interrupted: stopping what the demo started/);
  expect(r.stdout).toMatch(/✔ nothing of the demo is left running/);
  expectNothingLeft();
});
