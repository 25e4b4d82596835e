import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { median, p95, round } from './stats.js';

/** One timed side of an A/B comparison: a command line, or any synchronous action. */
export interface Side {
  /** Runs once; returns an error text when the call failed. */
  run(): string | undefined;
  /** Untimed, after each run (e.g. delete what a create made). */
  after?(): void;
}

export interface AbResult {
  a: number[];
  b: number[];
  /** a[i] - b[i], same iteration. */
  diff: number[];
}

/** Time one spawnSync in ms; stdio ignored unless given. */
export function commandSide(cmd: string, args: string[], opts: SpawnSyncOptions = {}, after?: () => void): Side {
  return {
    run() {
      const r = spawnSync(cmd, args, { stdio: 'ignore', ...opts });
      if (r.error) return `${cmd}: ${r.error.message}`;
      if (r.status !== 0)
        return `${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}${r.stderr ? `: ${String(r.stderr).slice(-500)}` : ''}`;
      return undefined;
    },
    after,
  };
}

/**
 * Interleaved A/B: each iteration runs both sides, alternating which goes
 * first (ABBA...) so drift and order effects cancel. `warmup` iterations are
 * run and dropped. Throws on the first failed call.
 */
export function interleaved(a: Side, b: Side, iterations: number, warmup = 5): AbResult {
  const out: AbResult = { a: [], b: [], diff: [] };
  const once = (s: Side, label: string): number => {
    const t0 = process.hrtime.bigint();
    const err = s.run();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    s.after?.();
    if (err) throw new Error(`${label}: ${err}`);
    return ms;
  };
  for (let i = -warmup; i < iterations; i++) {
    let ta: number;
    let tb: number;
    if (i % 2 === 0) {
      ta = once(a, 'A');
      tb = once(b, 'B');
    } else {
      tb = once(b, 'B');
      ta = once(a, 'A');
    }
    if (i < 0) continue;
    out.a.push(ta);
    out.b.push(tb);
    out.diff.push(ta - tb);
  }
  return out;
}

export function abSummary(r: AbResult) {
  return {
    n: r.a.length,
    archMedianMs: round(median(r.a)),
    rawMedianMs: round(median(r.b)),
    addedMedianMs: round(median(r.diff)),
    addedP95Ms: round(p95(r.diff)),
    archP95Ms: round(p95(r.a)),
    rawP95Ms: round(p95(r.b)),
  };
}
