import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Cleanup } from './cleanup.js';

/**
 * The benchmark registry.
 *
 * A benchmark is a module `bench/<name>.ts` that exports
 * `export const benchmark: Benchmark = { name, title, order, run }`.
 * `bench/run.ts` imports every module of its directory and runs those that
 * export one: adding a benchmark is adding a file, nothing else changes.
 *
 * Rules for a benchmark:
 * - Measure ARCH and the raw tool on the same run, interleaved, and report
 *   RATIOS (or paired differences): absolute times on these VMs are noisy.
 * - Register every resource it creates with `env.cleanup.defer(...)` the
 *   moment it exists, so an error or Ctrl-C still removes it.
 * - Honour `env.quick` (fewer iterations) so `npm run bench -- --quick`
 *   stays well under a minute per benchmark.
 * - Return rows for the summary table plus whatever details help to explain
 *   them (they go to results.json as they are).
 */
export interface Row {
  /** What was measured, e.g. "runc --version" or "checkpoint 256 MiB". */
  metric: string;
  unit: 'ms' | 's' | '%' | 'MB/s' | 'x';
  /** ARCH's median. */
  arch?: number;
  /** The raw tool's median. */
  raw?: number;
  /** Median of paired differences ARCH - raw (same unit). */
  added?: number;
  /** 95th percentile of the paired differences. */
  addedP95?: number;
  /** arch / raw: ratio of the medians, or the median of paired per-repetition ratios where the benchmark says so. */
  ratio?: number;
  /** Human-readable target, e.g. "≤ 5 ms added" or "≤ 1.2x". */
  target?: string;
  pass?: boolean;
  /** Samples per side. */
  n?: number;
  note?: string;
}

export interface BenchOutcome {
  rows: Row[];
  /** Raw samples, phase timings, environment facts: written to results.json. */
  details: Record<string, unknown>;
  /** Findings in words (for RESULTS.md). */
  notes: string[];
  /** Extra tables for RESULTS.md (e.g. phase timings). */
  tables?: Table[];
}

export interface Table {
  title: string;
  header: string[];
  rows: (string | number)[][];
}

export interface BenchResult extends BenchOutcome {
  name: string;
  title: string;
  status: 'ok' | 'failed';
  error?: string;
  durationMs: number;
}

export interface BenchEnv {
  /** Fewer iterations/repetitions: a smoke run. */
  quick: boolean;
  /** Iterations for per-call benchmarks (0 = the benchmark's default). */
  iterations: number;
  /** Repetitions for heavy benchmarks (0 = the benchmark's default). */
  reps: number;
  /** Scratch directory private to this benchmark (removed afterwards). */
  workDir: string;
  /** Private base for runc state of standalone containers (removed afterwards). */
  runDir: string;
  cleanup: Cleanup;
  log(msg: string): void;
}

export interface Benchmark {
  name: string;
  title: string;
  /** Run order (lower first); ties by name. */
  order: number;
  /** Not run unless asked for with --only (e.g. needs a Temporal server). */
  optIn?: boolean;
  run(env: BenchEnv): Promise<BenchOutcome>;
}

/** Import every module in `dir` (except `exclude`) and collect their `benchmark` exports. */
export async function loadBenchmarks(dir: string, exclude: string[] = []): Promise<Benchmark[]> {
  const out: Benchmark[] = [];
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.js') && !exclude.includes(f))
    .sort();
  for (const f of files) {
    const mod = (await import(pathToFileURL(path.join(dir, f)).href)) as { benchmark?: Benchmark };
    if (mod.benchmark && typeof mod.benchmark.run === 'function') out.push(mod.benchmark);
  }
  const names = new Set<string>();
  for (const b of out) {
    if (names.has(b.name)) throw new Error(`two benchmarks are named "${b.name}"`);
    names.add(b.name);
  }
  return out.sort((a, b) => a.order - b.order || a.name.localeCompare(b.name));
}
