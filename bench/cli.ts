import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import type { FinalizeReport } from '../core/finalize.js';
import { fsyncImages, MEM_MB } from './checkpoint-restore.js';
import { abSummary, commandSide, interleaved, type AbResult } from './support/ab.js';
import { startBenchNode, syncDisks, type BenchNode } from './support/arch-bench-node.js';
import { archHome } from './support/arch-home.js';
import type { Benchmark, BenchEnv, BenchOutcome, Row, Table } from './support/registry.js';
import { median, round } from './support/stats.js';

/**
 * arch-cli as a process, start-up included (issue 13: every command took
 * ~0.9 s before doing anything, and `finalize` spent that of a reclaim
 * notice).
 *
 * Start-up  `arch-cli --help` and `arch-cli ls --local` (one running ARCH
 *           container on the node) against `node -e 0`, same environment,
 *           interleaved; target ≤ 2x. For scale: --help through the modules
 *           of dist/ (no bundle, no code cache), as before the bundle.
 * finalize  the whole `arch-cli finalize` of one 256 MiB container (process
 *           start to exit: start-up, listing, planning, checkpoint with
 *           fsync, publish, stop) against raw `runc checkpoint` of the same
 *           counter under the same containerd node + an fsync of its images
 *           (ARCH's durability), same repetition; median of per-repetition
 *           ratios, target ≤ 1.1x. Beside it, the checkpoint inside that
 *           finalize against the same raw figure, and finalize's timeline
 *           (its report's ms since the process started: modules loaded,
 *           roots found, listed, planned, checkpointed; then the exit).
 */
const STARTUP_TARGET = 2;
const FINALIZE_TARGET = 1.1;
const NS = 'default';

export const benchmark: Benchmark = {
  name: 'cli',
  title: `arch-cli start-up, and finalize of a ${MEM_MB} MiB container, against node and runc`,
  order: 22,
  async run(env: BenchEnv): Promise<BenchOutcome> {
    const iterations = env.iterations || (env.quick ? 10 : 40);
    const reps = env.reps || (env.quick ? 1 : 7);
    const { home } = archHome();
    const cli = path.join(home, 'bin/arch-cli');
    const bn = await startBenchNode('bench-cli', env.workDir, env.cleanup);
    const cliEnv = { ...process.env, ARCH_CONFIG: bn.node.archConfig };
    const scratch = path.join(env.workDir, 'raw-images');

    // ---- start-up ------------------------------------------------------------
    await bn.run('listed', { arch: true, memMb: 16 });
    const undoListed = env.cleanup.defer('container listed', () => bn.remove('listed'));
    await bn.ready('listed');
    const node0 = commandSide(process.execPath, ['-e', '0'], { env: cliEnv });
    const startup: Record<string, AbResult> = {};
    const pairs: Array<[string, string[]]> = [
      ['help', [cli, '--help']],
      ['lsLocal', [cli, 'ls', '--local']],
      // What bin/arch-cli ran before: the ES modules of dist/ (Node's own loader, no code cache).
      ['helpModules', [process.execPath, '--disable-warning=DEP0123', path.join(home, 'dist/cli/main.js'), '--help']],
    ];
    for (const [name, [cmd, ...args]] of pairs) {
      env.log(`cli: ${name} vs node -e 0, ${iterations} interleaved`);
      startup[name] = interleaved(commandSide(cmd!, args, { env: cliEnv }), node0, iterations);
    }
    const listed = await execa(cli, ['--json', 'ls', '--local'], { env: cliEnv });
    const names = (JSON.parse(listed.stdout) as { containers: { id: string }[] }).containers.map((c) => c.id);
    if (!names.includes('listed')) throw new Error(`arch-cli ls --local did not list the running container: ${names}`);
    await undoListed();

    // ---- finalize ------------------------------------------------------------
    const raw: number[] = [];
    const rawFsync: number[] = [];
    const arch: Array<{ rep: number; wallMs: number; report: FinalizeReport }> = [];
    const variants: Record<string, (rep: number) => Promise<void>> = {
      raw: async (rep) => {
        const id = `cli-raw-${rep}`;
        await bn.run(id, { arch: false, memMb: MEM_MB });
        const undo = env.cleanup.defer(`container ${id}`, () => bn.remove(id));
        await bn.ready(id);
        await syncDisks();
        const img = path.join(scratch, id);
        raw[rep] = await bn.rawCheckpoint(id, img, `${img}-work`);
        rawFsync[rep] = fsyncImages(img);
        await bn.node.containerd.waitStatus(id, 'STOPPED', 15_000);
        await undo();
        fs.rmSync(img, { recursive: true, force: true });
        fs.rmSync(`${img}-work`, { recursive: true, force: true });
      },
      arch: async (rep) => {
        arch.push({ rep, ...(await finalizeOne(bn, env, cli, cliEnv, `cli-arch-${rep}`)) });
      },
    };
    // One warm-up round (index `reps`, dropped), then the order alternates.
    for (const rep of [reps, ...Array.from({ length: reps }, (_, i) => i)]) {
      const order = rep % 2 === 0 ? ['raw', 'arch'] : ['arch', 'raw'];
      for (const v of order) {
        env.log(`cli: finalize ${rep === reps ? 'warm-up' : `rep ${rep + 1}/${reps}`} ${v}`);
        await variants[v]!(rep);
      }
    }
    raw.length = reps;
    rawFsync.length = reps;
    const counted = arch.filter((s) => s.rep < reps);
    const rawTotal = raw.map((x, i) => x + rawFsync[i]!);
    const ratio = round(median(counted.map((s) => s.wallMs / rawTotal[s.rep]!)));
    // Before finalizeNode starts: Node, the bundle, settings, logger (the report's wallMs starts inside).
    const beforeWork = round(median(counted.map((s) => s.wallMs - s.report.wallMs)));
    const checkpointMs = round(median(counted.map((s) => s.report.items[0]!.durationMs!)));

    const startupRow = (name: string, metric: string, target: boolean): Row => {
      const s = abSummary(startup[name]!);
      const r = round(s.archMedianMs / s.rawMedianMs);
      return {
        metric,
        unit: 'ms',
        arch: s.archMedianMs,
        raw: s.rawMedianMs,
        added: s.addedMedianMs,
        addedP95: s.addedP95Ms,
        ratio: r,
        n: s.n,
        ...(target ? { target: `≤ ${STARTUP_TARGET}x`, pass: r <= STARTUP_TARGET } : {}),
      };
    };
    const rows: Row[] = [
      startupRow('help', 'arch-cli --help vs node -e 0 (whole process)', true),
      startupRow('lsLocal', 'arch-cli ls --local (1 ARCH container) vs node -e 0 (whole process)', true),
      startupRow('helpModules', 'for scale: arch-cli --help from the modules of dist/ (no bundle) vs node -e 0', false),
      {
        metric: `arch-cli finalize, 1 container of ${MEM_MB} MiB (whole process) vs runc checkpoint + fsync of its images`,
        unit: 'ms',
        arch: round(median(counted.map((s) => s.wallMs))),
        raw: round(median(rawTotal)),
        added: round(median(counted.map((s) => s.wallMs - rawTotal[s.rep]!))),
        ratio,
        n: counted.length,
        target: `≤ ${FINALIZE_TARGET}x`,
        pass: ratio <= FINALIZE_TARGET,
        note: `before finalizeNode starts: ${beforeWork} ms; checkpoint inside: ${checkpointMs} ms; runc checkpoint alone ${round(median(raw))} ms, fsync ${round(median(rawFsync))} ms`,
      },
      {
        // The whole command's time next to its checkpoint's (issue 13): what start-up, listing and exit add.
        metric: `for scale: the checkpoint inside that finalize (lock to stopped) vs runc checkpoint + fsync of its images`,
        unit: 'ms',
        arch: checkpointMs,
        raw: round(median(rawTotal)),
        added: round(median(counted.map((s) => s.report.items[0]!.durationMs! - rawTotal[s.rep]!))),
        ratio: round(median(counted.map((s) => s.report.items[0]!.durationMs! / rawTotal[s.rep]!))),
        n: counted.length,
      },
    ];
    const phaseKeys = [...new Set(counted.flatMap((s) => Object.keys(s.report.items[0]!.timings ?? {})))];
    const med = (f: (s: (typeof counted)[number]) => number) => round(median(counted.map(f)));
    // ms since the process started, each step's end (core/finalize.ts FinalizeReport.timeline); exit from outside.
    const tl = (k: keyof FinalizeReport['timeline']) => med((s) => s.report.timeline[k]);
    const timelineSteps: Array<[string, number]> = [
      ['Node, bundle, settings, logger (finalizeNode starts)', tl('started')],
      ['runc roots found', tl('rootsFound')],
      ['containers listed', tl('listed')],
      ['planned', tl('planned')],
      ['checkpointed (published, stopped)', tl('checkpointed')],
      ['process exited', med((s) => s.wallMs)],
    ];
    const tables: Table[] = [
      {
        title: `arch-cli finalize of one ${MEM_MB} MiB container: where the process's time goes, ms (median of ${counted.length})`,
        header: [
          'whole process',
          'before finalizeNode',
          'finalizeNode',
          'checkpoint',
          ...phaseKeys,
          'raw runc checkpoint',
          'raw fsync',
        ],
        rows: [
          [
            med((s) => s.wallMs),
            beforeWork,
            med((s) => s.report.wallMs),
            checkpointMs,
            ...phaseKeys.map((k) => med((s) => s.report.items[0]!.timings?.[k] ?? 0)),
            round(median(raw)),
            round(median(rawFsync)),
          ],
        ],
      },
      {
        title: `arch-cli finalize of one ${MEM_MB} MiB container: timeline, ms since the process started (median of ${counted.length}; each step's own time in the second column)`,
        header: ['step ends', 'at', 'step'],
        rows: timelineSteps.map(([name, at], i) => [name, at, round(at - (i ? timelineSteps[i - 1]![1] : 0))]),
      },
    ];
    env.log(`cli: ${tables[0]!.header.map((k, i) => `${k} ${tables[0]!.rows[0]![i]}`).join(', ')}`);
    // The spread behind the median (a shared machine's noise shows here first).
    env.log(
      `cli: finalize whole/raw per repetition: ${counted
        .map(
          (s) =>
            `${round(s.wallMs / rawTotal[s.rep]!)} (started ${s.report.timeline.started}, listed ${s.report.timeline.listed - s.report.timeline.rootsFound}, exit ${round(s.wallMs - s.report.timeline.checkpointed)} ms)`,
        )
        .join(', ')}`,
    );
    const h = abSummary(startup.help!);
    const m = abSummary(startup.helpModules!);
    return {
      rows,
      tables,
      details: {
        startup: Object.fromEntries(Object.entries(startup).map(([k, v]) => [k, { ...abSummary(v), samples: v }])),
        finalize: { raw, rawFsync, arch: counted.map((s) => ({ rep: s.rep, wallMs: s.wallMs, report: s.report })) },
      },
      notes: [
        `arch-cli --help takes ${h.archMedianMs} ms against ${h.rawMedianMs} ms for node -e 0 (${round(h.archMedianMs / h.rawMedianMs)}x); from the modules of dist/ it takes ${m.archMedianMs} ms (${round(m.archMedianMs / m.rawMedianMs)}x).`,
        `arch-cli finalize of one ${MEM_MB} MiB container: ${round(median(counted.map((s) => s.wallMs)))} ms as a whole process, ${ratio}x runc checkpoint + fsync (${round(median(rawTotal))} ms); ${beforeWork} ms of it pass before finalizeNode starts.`,
      ],
    };
  },
};

/** Run an ARCH counter, time the whole `arch-cli finalize` that checkpoints (and stops) it, clean up. */
async function finalizeOne(
  bn: BenchNode,
  env: BenchEnv,
  cli: string,
  cliEnv: NodeJS.ProcessEnv,
  id: string,
): Promise<{ wallMs: number; report: FinalizeReport }> {
  await bn.run(id, { arch: true, memMb: MEM_MB });
  const undo = env.cleanup.defer(`container ${id}`, () => bn.remove(id));
  const ckpts = path.join(bn.storage, NS, id);
  env.cleanup.defer(`checkpoints of ${id}`, () => fs.rmSync(ckpts, { recursive: true, force: true }));
  await bn.ready(id);
  await syncDisks();
  const t0 = process.hrtime.bigint();
  const r = await execa(cli, ['--json', 'finalize', '-n', NS, '--deadline', '60s'], { env: cliEnv, reject: false });
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const report = JSON.parse(r.stdout || '{}') as FinalizeReport;
  const item = report.items?.[0];
  if (r.exitCode !== 0 || report.items.length !== 1 || item?.id !== id || item.status !== 'checkpointed')
    throw new Error(`arch-cli finalize of ${id} (exit ${r.exitCode}): ${r.stdout} ${r.stderr}`);
  await bn.node.containerd.waitStatus(id, 'STOPPED', 15_000);
  await undo();
  fs.rmSync(ckpts, { recursive: true, force: true });
  return { wallMs, report };
}
