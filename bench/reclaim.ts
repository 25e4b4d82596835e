import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer, type CheckpointResult } from '../core/checkpoint.js';
import { finalizeNode, type FinalizeReport } from '../core/finalize.js';
import { duBytes, startBenchNode, syncDisks } from './support/arch-bench-node.js';
import type { Benchmark, BenchEnv, BenchOutcome, Row, Table } from './support/registry.js';
import { median, msSince, round } from './support/stats.js';

/**
 * A reclaim notice on a node running COUNT ARCH containers of MEM_MB each:
 * time from the notice until every container is checkpointed, against the
 * 30 s budget of the shortest notice (GCP/Azure), and against raw runc
 * checkpointing the same containers with the same parallelism.
 *
 *   finalize  core/finalize.ts finalizeNode (planner picks the parallelism,
 *             at most PARALLEL), as `arch-cli finalize` / the reclaim workflow do
 *   pool      checkpointContainer over the containers, PARALLEL at a time
 *   raw       `runc checkpoint` of the same counters run with plain runc,
 *             PARALLEL at a time
 * Containers are started fresh for every variant and repetition.
 */
const COUNT = 8;
const MEM_MB = 64;
const PARALLEL = 2;
const BUDGET_MS = 30_000;

interface VariantSample {
  wallMs: number;
  bytes: number;
  parallelism: number;
  perContainer: { id: string; ms: number; timings?: Record<string, number> }[];
}

export const benchmark: Benchmark = {
  name: 'reclaim',
  title: `Reclaim: ${COUNT} ARCH containers of ${MEM_MB} MiB checkpointed within a ${BUDGET_MS / 1000} s notice`,
  order: 30,
  async run(env: BenchEnv): Promise<BenchOutcome> {
    const reps = env.reps || (env.quick ? 1 : 2);
    const bn = await startBenchNode('bench-rc', env.workDir, env.cleanup);
    const samples: Record<string, VariantSample[]> = { finalize: [], pool: [], raw: [] };

    const start = async (prefix: string, arch: boolean): Promise<string[]> => {
      const ids = Array.from({ length: COUNT }, (_, i) => `${prefix}-${i}`);
      for (const id of ids) {
        env.cleanup.defer(`container ${id}`, () => bn.remove(id));
        env.cleanup.defer(`checkpoints of ${id}`, () =>
          fs.rmSync(path.join(bn.storage, 'default', id), { recursive: true, force: true }),
        );
        await bn.run(id, { arch, memMb: MEM_MB });
      }
      for (const id of ids) await bn.ready(id);
      await syncDisks();
      return ids;
    };
    const finish = async (ids: string[]): Promise<void> => {
      for (const id of ids) {
        await bn.node.containerd.waitStatus(id, 'STOPPED', 15_000).catch(() => undefined);
        await bn.remove(id);
        fs.rmSync(path.join(bn.storage, 'default', id), { recursive: true, force: true });
      }
    };

    const variants: Record<string, (rep: number) => Promise<VariantSample>> = {
      finalize: async (rep) => {
        const ids = await start(`rc-fin-${rep}`, true);
        const t0 = process.hrtime.bigint();
        const report: FinalizeReport = await finalizeNode(bn.node.ctx, {
          deadline: new Date(Date.now() + BUDGET_MS),
          maxParallel: PARALLEL,
          namespaces: ['default'],
        });
        const wallMs = msSince(t0);
        const bad = report.items.filter((i) => i.status !== 'checkpointed');
        if (bad.length || report.items.length !== COUNT) {
          throw new Error(
            `finalize: ${report.items.length}/${COUNT} handled, not checkpointed: ${bad.map((b) => `${b.id} ${b.status} ${b.error ?? ''}`).join('; ')}`,
          );
        }
        await finish(ids);
        return {
          wallMs,
          parallelism: report.parallelism,
          bytes: report.items.reduce((a, i) => a + (i.sizeBytes ?? 0), 0),
          perContainer: report.items.map((i) => ({ id: i.id, ms: i.durationMs ?? 0, timings: i.timings })),
        };
      },
      pool: async (rep) => {
        const ids = await start(`rc-pool-${rep}`, true);
        const t0 = process.hrtime.bigint();
        const results = await pool(ids, PARALLEL, async (id) => {
          const s = process.hrtime.bigint();
          const r: CheckpointResult = await checkpointContainer(bn.node.ctx, {
            namespace: 'default',
            id,
            runcRoot: bn.node.runcRoot('default'),
          });
          return { id, ms: msSince(s), timings: r.timings, bytes: r.sizeBytes };
        });
        const wallMs = msSince(t0);
        await finish(ids);
        return {
          wallMs,
          parallelism: PARALLEL,
          bytes: results.reduce((a, r) => a + r.bytes, 0),
          perContainer: results,
        };
      },
      raw: async (rep) => {
        const ids = await start(`rc-raw-${rep}`, false);
        const img = path.join(env.workDir, 'raw-images');
        const t0 = process.hrtime.bigint();
        const results = await pool(ids, PARALLEL, async (id) => ({
          id,
          ms: await bn.rawCheckpoint(id, path.join(img, id), path.join(img, `${id}-work`)),
        }));
        const wallMs = msSince(t0);
        const bytes = ids.reduce((a, id) => a + duBytes(path.join(img, id)), 0);
        fs.rmSync(img, { recursive: true, force: true });
        await finish(ids);
        return { wallMs, parallelism: PARALLEL, bytes, perContainer: results };
      },
    };
    const order = Object.keys(variants);
    for (let rep = 0; rep < reps; rep++) {
      const rot = [...order.slice(rep % order.length), ...order.slice(0, rep % order.length)];
      for (const v of rot) {
        env.log(`reclaim: rep ${rep + 1}/${reps} ${v}`);
        samples[v]!.push(await variants[v]!(rep));
      }
    }

    const wall = (v: string) => median(samples[v]!.map((s) => s.wallMs));
    const range = (v: string) => {
      const xs = samples[v]!.map((s) => s.wallMs);
      return `${round(Math.min(...xs))}–${round(Math.max(...xs))} ms`;
    };
    const fin = wall('finalize');
    const poolMs = wall('pool');
    const raw = wall('raw');
    const rows: Row[] = [
      {
        metric: `reclaim ${COUNT}×${MEM_MB} MiB: finalizeNode (≤ ${PARALLEL} parallel) vs raw runc checkpoint (${PARALLEL} parallel)`,
        unit: 'ms',
        arch: round(fin),
        raw: round(raw),
        added: round(fin - raw),
        ratio: round(fin / raw),
        n: reps,
      },
      {
        metric: `reclaim ${COUNT}×${MEM_MB} MiB: checkpointContainer pool(${PARALLEL}) vs raw`,
        unit: 'ms',
        arch: round(poolMs),
        raw: round(raw),
        added: round(poolMs - raw),
        ratio: round(poolMs / raw),
        n: reps,
      },
      {
        metric: `reclaim ${COUNT}×${MEM_MB} MiB: share of a ${BUDGET_MS / 1000} s notice (finalizeNode)`,
        unit: '%',
        arch: round((100 * fin) / BUDGET_MS),
        raw: round((100 * raw) / BUDGET_MS),
        n: reps,
        target: '< 100 %',
        pass: fin < BUDGET_MS,
      },
    ];
    const phaseSum = (v: string, k: string) =>
      round(median(samples[v]!.map((s) => s.perContainer.reduce((a, c) => a + (c.timings?.[k] ?? 0), 0))));
    const tables: Table[] = [
      {
        title: `Reclaim variants (median of ${reps}); phase columns are sums over the ${COUNT} containers, ms`,
        header: [
          'variant',
          'wall ms',
          'parallelism',
          'MiB written',
          'MB/s',
          'per container median ms',
          'dump',
          'rootfs',
          'digest',
          'fsync',
          'stop',
        ],
        rows: order.map((v) => {
          const xs = samples[v]!;
          const w = median(xs.map((s) => s.wallMs));
          const bytes = median(xs.map((s) => s.bytes));
          const hasPhases = v !== 'raw';
          return [
            v,
            round(w),
            xs.map((s) => s.parallelism).join('/'),
            round(bytes / 2 ** 20),
            round(bytes / 1e6 / (w / 1000)),
            round(median(xs.flatMap((s) => s.perContainer.map((c) => c.ms)))),
            ...(hasPhases
              ? ['dump', 'rootfs', 'digest', 'fsync', 'stop'].map((k) => phaseSum(v, k))
              : ['', '', '', '', '']),
          ];
        }),
      },
    ];
    const notes = [
      `finalizeNode checkpointed ${COUNT}×${MEM_MB} MiB in ${round(fin / 1000)} s (${round((100 * fin) / BUDGET_MS)} % of a ${BUDGET_MS / 1000} s notice); raw runc checkpoint of the same with ${PARALLEL} at a time: ${round(raw / 1000)} s (${round(fin / raw)}x).`,
      `finalizeNode vs a plain pool over checkpointContainer: ${round(fin)} vs ${round(poolMs)} ms (ranges ${range('finalize')} and ${range('pool')} over ${reps} repetitions: listing, sizing and planning are lost in the run-to-run noise).`,
    ];
    return {
      rows,
      tables,
      notes,
      details: { count: COUNT, memMb: MEM_MB, parallel: PARALLEL, budgetMs: BUDGET_MS, reps, samples },
    };
  },
};

/** Map with at most `n` in flight; results in input order. */
async function pool<T, R>(items: T[], n: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, lane));
  return out;
}
