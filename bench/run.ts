/**
 * `npm run bench [-- --quick] [-- --only a,b] [-- --iterations N] [-- --reps N] [-- --list]`
 *
 * Runs every benchmark module of this directory (see support/registry.ts),
 * prints the summary table and writes bench/results.json and
 * bench/RESULTS.md. Needs root (runc, CRIU, containerd). Everything a
 * benchmark creates is removed afterwards, also on failure or Ctrl-C; leftovers
 * of a killed earlier run are removed at start.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { criuBinary, realRunc } from '../test/support/arch-env.js';
import { cleanupStaleNodes, stopAllNodes } from '../test/support/containerd-node.js';
import { REPO_ROOT } from '../test/support/images.js';
import { Cleanup } from './support/cleanup.js';
import { loadBenchmarks, type BenchResult } from './support/registry.js';
import { resultsMarkdown, summaryTable, type RunInfo } from './support/report.js';
import { destroyStandaloneBase } from './support/standalone-runc.js';
import { provenance, snapshotArchHome } from './support/arch-home.js';
import { forgetMallocTunables, withMallocTunables } from '../core/malloc-tunables.js';
import { withThreadPool } from '../core/thread-pool.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** Results go to the source folder bench/, not dist/bench/. */
const OUT_DIR = path.join(REPO_ROOT, 'bench');
const RUN_BASE = '/run/arch-bench';
const WORK_BASE = path.join(REPO_ROOT, '.bench');

interface Options {
  quick: boolean;
  only: string[];
  iterations: number;
  reps: number;
  list: boolean;
  write: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { quick: false, only: [], iterations: 0, reps: 0, list: false, write: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--quick') o.quick = true;
    else if (a === '--list') o.list = true;
    else if (a === '--no-write') o.write = false;
    else if (a.startsWith('--only')) o.only = val().split(',').filter(Boolean);
    else if (a.startsWith('--iterations')) o.iterations = Number(val());
    else if (a.startsWith('--reps')) o.reps = Number(val());
    else throw new Error(`unknown option ${a} (use --quick, --only a,b, --iterations N, --reps N, --list, --no-write)`);
  }
  return o;
}

const log = (msg: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
};

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Leftovers of bench runs whose process is gone: standalone containers, cgroups, dirs, containerd nodes. */
async function cleanupStale(): Promise<void> {
  const dead = (name: string) => {
    const pid = Number(name.split('-')[0]);
    return Number.isInteger(pid) && pid > 0 && pid !== process.pid && !pidAlive(pid);
  };
  for (const d of fs.existsSync(RUN_BASE) ? fs.readdirSync(RUN_BASE) : []) {
    if (!dead(d)) continue;
    const dir = path.join(RUN_BASE, d);
    // RUN_BASE/<pid>/<benchmark>/<standalone base>
    for (const bench of fs.readdirSync(dir)) {
      const bdir = path.join(dir, bench);
      if (!fs.statSync(bdir).isDirectory()) continue;
      for (const sub of fs.readdirSync(bdir)) {
        await destroyStandaloneBase(path.join(bdir, sub)).catch((e: unknown) =>
          log(`stale ${bdir}/${sub}: ${String(e)}`),
        );
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
    log(`removed stale ${dir}`);
  }
  for (const d of fs.existsSync(WORK_BASE) ? fs.readdirSync(WORK_BASE) : []) {
    if (dead(d)) fs.rmSync(path.join(WORK_BASE, d), { recursive: true, force: true });
  }
  const nodes = await cleanupStaleNodes();
  if (nodes.length) log(`removed stale test nodes: ${nodes.join(', ')}`);
}

async function hostInfo(): Promise<Record<string, string | number>> {
  const v = async (cmd: string, args: string[], re: RegExp) => {
    const r = await execa(cmd, args, { reject: false });
    return re.exec(`${r.stdout}\n${r.stderr}`)?.[1] ?? 'unknown';
  };
  const cpu = os.cpus();
  return {
    kernel: os.release(),
    cpus: cpu.length,
    cpu: cpu[0]?.model ?? 'unknown',
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    runc: await v(realRunc(), ['--version'], /runc version (\S+)/),
    criu: await v(criuBinary(), ['--version'], /Version: (\S+)/),
    containerd: await v('containerd', ['--version'], /containerd \S+ (\S+)/),
    debian: fs.existsSync('/etc/debian_version') ? fs.readFileSync('/etc/debian_version', 'utf8').trim() : 'unknown',
    loadAvgAtStart: os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
  };
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  const all = await loadBenchmarks(HERE, ['run.js']);
  if (opts.list) {
    for (const b of all) process.stdout.write(`${b.name}\t${b.title}${b.optIn ? ' (opt-in)' : ''}\n`);
    return 0;
  }
  const unknown = opts.only.filter((n) => !all.some((b) => b.name === n));
  if (unknown.length)
    throw new Error(`no benchmark named ${unknown.join(', ')} (have: ${all.map((b) => b.name).join(', ')})`);
  const chosen = opts.only.length ? all.filter((b) => opts.only.includes(b.name)) : all.filter((b) => !b.optIn);
  if (process.getuid?.() !== 0) throw new Error('the benchmarks need root (runc, CRIU, containerd)');

  const started = new Date();
  const t0 = Date.now();
  await cleanupStale();
  const runDir = path.join(RUN_BASE, String(process.pid));
  const workRoot = path.join(WORK_BASE, String(process.pid));

  // Ctrl-C / SIGTERM: undo the current benchmark, stop nodes, remove dirs, then exit.
  let current: Cleanup | undefined;
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: cleaning up`);
    void (async () => {
      await current?.run();
      await stopAllNodes().catch(() => undefined);
      fs.rmSync(workRoot, { recursive: true, force: true });
      fs.rmSync(runDir, { recursive: true, force: true });
      process.exit(130);
    })();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const host = { ...(await hostInfo()), ...(await provenance()) };
  for (let attempt = 1; ; attempt++) {
    try {
      await snapshotArchHome(path.join(workRoot, 'arch-home'));
      break;
    } catch (err) {
      if (attempt >= 5) throw err;
      log(`${err instanceof Error ? err.message : String(err)}; retrying`);
      await new Promise((r) => setTimeout(r, 3000));
    }
  }
  const results: BenchResult[] = [];
  try {
    for (const b of chosen) {
      const cleanup = new Cleanup(log);
      current = cleanup;
      const workDir = path.join(workRoot, b.name);
      const benchRunDir = path.join(runDir, b.name);
      fs.mkdirSync(workDir, { recursive: true });
      fs.mkdirSync(benchRunDir, { recursive: true });
      cleanup.defer('work dir', () => fs.rmSync(workDir, { recursive: true, force: true }));
      cleanup.defer('run dir', () => fs.rmSync(benchRunDir, { recursive: true, force: true }));
      log(`${b.name}: ${b.title}`);
      const bt = Date.now();
      try {
        const out = await b.run({
          quick: opts.quick,
          iterations: opts.iterations,
          reps: opts.reps,
          workDir,
          runDir: benchRunDir,
          cleanup,
          log,
        });
        results.push({ name: b.name, title: b.title, status: 'ok', durationMs: Date.now() - bt, ...out });
      } catch (err) {
        const msg = err instanceof Error ? (err.stack ?? err.message) : String(err);
        log(`${b.name} FAILED: ${msg}`);
        results.push({
          name: b.name,
          title: b.title,
          status: 'failed',
          error: msg,
          durationMs: Date.now() - bt,
          rows: [],
          details: {},
          notes: [],
        });
      } finally {
        const errors = await cleanup.run();
        await stopAllNodes().catch((e: unknown) => errors.push(String(e)));
        if (errors.length) log(`${b.name}: cleanup problems: ${errors.join('; ')}`);
        current = undefined;
      }
      log(`${b.name}: done in ${Math.round((Date.now() - bt) / 1000)} s`);
    }
  } finally {
    await stopAllNodes().catch(() => undefined);
    fs.rmSync(workRoot, { recursive: true, force: true });
    fs.rmSync(runDir, { recursive: true, force: true });
    if (fs.existsSync(WORK_BASE) && fs.readdirSync(WORK_BASE).length === 0) fs.rmdirSync(WORK_BASE);
  }

  const info: RunInfo = {
    startedAt: started.toISOString(),
    durationMs: Date.now() - t0,
    host: {
      ...host,
      loadAvgAtEnd: os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' '),
    },
    options: {
      quick: opts.quick,
      only: opts.only,
      iterations: opts.iterations || 'default',
      reps: opts.reps || 'default',
    },
  };
  process.stdout.write(`\n${summaryTable(results)}\n\n`);
  const samples = `${JSON.stringify({ ...info, results }, null, 1)}\n`;
  if (opts.write) {
    const json = path.join(OUT_DIR, 'results.json');
    fs.writeFileSync(json, await inPrettierFormat(json, samples));
    fs.writeFileSync(path.join(OUT_DIR, 'RESULTS.md'), resultsMarkdown(info, results));
    log(
      `wrote ${path.relative(REPO_ROOT, path.join(OUT_DIR, 'results.json'))} and ${path.relative(REPO_ROOT, path.join(OUT_DIR, 'RESULTS.md'))}`,
    );
  } else {
    // The tables and notes say what the summary rows cannot (per repetition, per container): kept where a reader finds them.
    const f = path.join(os.tmpdir(), `arch-bench-${process.pid}.md`);
    fs.writeFileSync(f, resultsMarkdown(info, results));
    // Its raw samples and phase timings too, as results.json would hold them.
    fs.writeFileSync(f.replace(/\.md$/, '.json'), samples);
    log(`tables and notes of this run: ${f} (raw samples: ${path.basename(f, '.md')}.json)`);
  }
  return results.some((r) => r.status === 'failed') ? 1 : 0;
}

/**
 * A committed file in the format the lint checks (`npm run lint` runs
 * Prettier over the repository, bench/results.json included): with the
 * repository's Prettier (a development dependency) and its settings, or as
 * written where it cannot be loaded.
 */
async function inPrettierFormat(file: string, text: string): Promise<string> {
  try {
    const prettier = await import('prettier');
    return await prettier.format(text, { ...((await prettier.resolveConfig(file)) ?? {}), filepath: file });
  } catch (err) {
    log(`results.json left as written (Prettier: ${String(err)}): run npx prettier --write on it before committing`);
    return text;
  }
}

/**
 * The benchmarks run ARCH's code in this process too (a sealed checkpoint's
 * encryption, say): with the glibc malloc settings and the libuv thread pool
 * ARCH's launchers give the worker and the CLI (core/malloc-tunables.ts,
 * core/thread-pool.ts), or its figures would not be theirs. glibc and libuv
 * read them only at start: so this process starts itself again with them, and waits (a Ctrl-C is the child's to handle: it cleans
 * up).
 */
function startTuned(): void {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => undefined);
  const r = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: withThreadPool(withMallocTunables(process.env)),
  });
  process.exit(r.status ?? 2);
}

if (process.env.GLIBC_TUNABLES === undefined || process.env.UV_THREADPOOL_SIZE === undefined) startTuned();
forgetMallocTunables(); // containerd, runc and CRIU get the environment as it was

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    log(`fatal: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    await stopAllNodes().catch(() => undefined);
    process.exit(2);
  },
);
