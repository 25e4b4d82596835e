import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { ArchInputError, errorMessage } from '../contract/errors.js';

/**
 * Deadline-aware drain planning: given a reclaim deadline and the containers
 * on this node, which checkpoints do we run, in what order, how many at once,
 * and which are expected to make it?
 *
 * Cost model (per container):
 *   bytes    = rssBytes + upperDirBytes (memory image + rootfs diff written)
 *   overhead = perContainerOverheadMs   (freeze, CRIU setup, runc bookkeeping,
 *                                         fsync: latency, not disk bandwidth)
 * A checkpoint first spends its overhead, then writes its bytes. All lanes
 * writing at the same moment share ONE disk: with n writers each gets
 * throughput / n (fluid fair share, as the kernel's I/O scheduler roughly
 * does). Consequences the planner relies on:
 *   - total bytes / throughput is a floor on the drain time whatever the
 *     parallelism; extra lanes cannot add bandwidth;
 *   - parallelism pays by overlapping one container's overhead with another's
 *     writing, and costs by slowing each individual checkpoint down.
 * The plan is simulated exactly under this model (event by event), not
 * approximated by a formula, so the fit/not-fit split follows from it.
 */

export interface DrainContainer {
  namespace: string;
  id: string;
  /** Higher drains first (ARCH_PRIORITY). */
  priority: number;
  rssBytes: number;
  upperDirBytes: number;
}

export interface DrainInput {
  now: Date;
  deadline: Date;
  containers: DrainContainer[];
  /** Node disk throughput for checkpoint writes, measured (ThroughputEstimator) or a default. */
  throughputBytesPerSec: number;
  perContainerOverheadMs: number;
  maxParallel: number;
  /** Kept free before the deadline (upload, clock skew, estimate error). */
  safetyMarginMs: number;
}

export interface PlannedCheckpoint {
  namespace: string;
  id: string;
  priority: number;
  bytes: number;
  /** Simulated duration of this checkpoint (overhead + its share of the disk). */
  estimatedMs: number;
  /** Offsets from `now`. */
  expectedStartMs: number;
  expectedFinishMs: number;
}

export interface DrainPlan {
  /** Execution order: expectedToFit first, then notExpectedToFit (best effort). */
  order: PlannedCheckpoint[];
  /** Lanes to run; the executor starts the next container whenever a lane frees. */
  parallelism: number;
  /**
   * Containers whose expectedFinishMs <= budgetMs. Their estimates assume the
   * notExpectedToFit ones are NOT started until all of these finished (else
   * they would steal disk bandwidth); the tail's estimates assume just that.
   */
  expectedToFit: PlannedCheckpoint[];
  notExpectedToFit: PlannedCheckpoint[];
  /** deadline - now - safetyMargin; may be <= 0. */
  budgetMs: number;
}

export function planDrain(input: DrainInput): DrainPlan {
  validate(input);
  const budgetMs = input.deadline.getTime() - input.now.getTime() - input.safetyMarginMs;
  const bytesPerMs = input.throughputBytesPerSec / 1000;
  const jobs: Job[] = input.containers
    .map((c) => ({ c, bytes: c.rssBytes + c.upperDirBytes }))
    .sort(
      (a, b) =>
        b.c.priority - a.c.priority ||
        a.bytes - b.bytes ||
        a.c.namespace.localeCompare(b.c.namespace) ||
        a.c.id.localeCompare(b.c.id),
    );

  let best: Candidate | undefined;
  const maxLanes = Math.max(1, Math.min(Math.floor(input.maxParallel), jobs.length));
  for (let lanes = 1; lanes <= maxLanes; lanes++) {
    const cand = admit(jobs, lanes, bytesPerMs, input.perContainerOverheadMs, budgetMs);
    if (!best || better(cand, best)) best = cand;
  }
  const chosen = best!;

  const fitTimes = simulate(chosen.admitted, chosen.lanes, bytesPerMs, input.perContainerOverheadMs, 0);
  const makespan = Math.max(0, ...fitTimes.map((t) => t.finish));
  const tailTimes = simulate(chosen.rejected, chosen.lanes, bytesPerMs, input.perContainerOverheadMs, makespan);
  const expectedToFit = chosen.admitted.map((j, i) => planned(j, fitTimes[i]!));
  const notExpectedToFit = chosen.rejected.map((j, i) => planned(j, tailTimes[i]!));
  return {
    order: [...expectedToFit, ...notExpectedToFit],
    parallelism: chosen.lanes,
    expectedToFit,
    notExpectedToFit,
    budgetMs,
  };
}

interface Job {
  c: DrainContainer;
  bytes: number;
}

interface Candidate {
  lanes: number;
  admitted: Job[];
  rejected: Job[];
  makespan: number;
}

/**
 * Greedy admission in priority order: take the next container if, with it
 * added, everything admitted so far still finishes within budget. A big
 * container that does not fit is skipped so smaller ones after it can still
 * be saved; adding one never pushes an earlier one past the deadline.
 */
function admit(jobs: Job[], lanes: number, bytesPerMs: number, overheadMs: number, budgetMs: number): Candidate {
  const admitted: Job[] = [];
  const rejected: Job[] = [];
  let makespan = 0;
  for (const job of jobs) {
    const trial = [...admitted, job];
    const times = simulate(trial, lanes, bytesPerMs, overheadMs, 0);
    const finish = Math.max(...times.map((t) => t.finish));
    if (finish <= budgetMs) {
      admitted.push(job);
      makespan = finish;
    } else {
      rejected.push(job);
    }
  }
  return { lanes, admitted, rejected, makespan };
}

/**
 * Which parallelism wins: save the most containers of the highest priority,
 * then of the next priority, and so on; then the most bytes; then the
 * earliest finish (most slack for estimate error); then fewer lanes.
 */
function better(a: Candidate, b: Candidate): boolean {
  const levels = [...new Set([...a.admitted, ...a.rejected].map((j) => j.c.priority))].sort((x, y) => y - x);
  for (const p of levels) {
    const ca = a.admitted.filter((j) => j.c.priority === p).length;
    const cb = b.admitted.filter((j) => j.c.priority === p).length;
    if (ca !== cb) return ca > cb;
  }
  const bytes = (c: Candidate): number => c.admitted.reduce((s, j) => s + j.bytes, 0);
  if (bytes(a) !== bytes(b)) return bytes(a) > bytes(b);
  if (a.makespan !== b.makespan) return a.makespan < b.makespan;
  return a.lanes < b.lanes;
}

interface Times {
  start: number;
  finish: number;
}

/**
 * Event-driven fluid simulation of the cost model: `lanes` workers take jobs
 * in order; a job spends overheadMs, then writes its bytes at
 * bytesPerMs / (number of jobs writing at that moment).
 */
export function simulate(
  jobs: { bytes: number }[],
  lanes: number,
  bytesPerMs: number,
  overheadMs: number,
  startAt: number,
): Times[] {
  const times: Times[] = jobs.map(() => ({ start: NaN, finish: NaN }));
  interface Active {
    idx: number;
    overheadLeft: number;
    bytesLeft: number;
  }
  const active: Active[] = [];
  let next = 0;
  let t = startAt;
  const EPS = 1e-9;

  const fill = (): void => {
    while (active.length < lanes && next < jobs.length) {
      times[next]!.start = t;
      active.push({ idx: next, overheadLeft: overheadMs, bytesLeft: jobs[next]!.bytes });
      next++;
    }
  };
  // Retire finished jobs (possibly zero-length ones) and refill lanes until stable.
  const settle = (): void => {
    for (;;) {
      fill();
      const done = active.filter((a) => a.overheadLeft <= EPS && a.bytesLeft <= EPS * Math.max(1, jobs[a.idx]!.bytes));
      if (done.length === 0) return;
      for (const a of done) {
        times[a.idx]!.finish = t;
        active.splice(active.indexOf(a), 1);
      }
    }
  };

  settle();
  while (active.length > 0) {
    const writers = active.filter((a) => a.overheadLeft <= EPS);
    const rate = writers.length > 0 ? bytesPerMs / writers.length : 0;
    let dt = Infinity;
    for (const a of active) {
      dt = Math.min(dt, a.overheadLeft > EPS ? a.overheadLeft : a.bytesLeft / rate);
    }
    for (const a of active) {
      if (a.overheadLeft > EPS) a.overheadLeft = Math.max(0, a.overheadLeft - dt);
      else a.bytesLeft = Math.max(0, a.bytesLeft - rate * dt);
    }
    t += dt;
    // Snap values within rounding error of zero so the step that should end a phase does.
    for (const a of active) {
      if (a.overheadLeft < EPS * Math.max(1, overheadMs)) a.overheadLeft = 0;
      if (a.bytesLeft < 1e-6) a.bytesLeft = 0;
    }
    settle();
  }
  return times;
}

function planned(j: Job, t: Times): PlannedCheckpoint {
  return {
    namespace: j.c.namespace,
    id: j.c.id,
    priority: j.c.priority,
    bytes: j.bytes,
    estimatedMs: Math.ceil(t.finish - t.start),
    expectedStartMs: Math.ceil(t.start),
    expectedFinishMs: Math.ceil(t.finish),
  };
}

function validate(input: DrainInput): void {
  const nonNeg = (v: number, field: string): void => {
    if (!Number.isFinite(v) || v < 0)
      throw new ArchInputError(field, `${v} is not a finite number >= 0`, `pass a non-negative ${field}`);
  };
  if (Number.isNaN(input.now.getTime())) throw new ArchInputError('now', 'is an invalid date', 'pass a valid Date');
  if (Number.isNaN(input.deadline.getTime()))
    throw new ArchInputError('deadline', 'is an invalid date', 'pass the notice deadline as a valid Date');
  if (!Number.isFinite(input.throughputBytesPerSec) || input.throughputBytesPerSec <= 0) {
    throw new ArchInputError(
      'throughputBytesPerSec',
      `${input.throughputBytesPerSec} is not a positive number`,
      'pass ThroughputEstimator.bytesPerSec or a positive default',
    );
  }
  if (!Number.isInteger(input.maxParallel) || input.maxParallel < 1) {
    throw new ArchInputError('maxParallel', `${input.maxParallel} is not a whole number >= 1`, 'pass maxParallel >= 1');
  }
  nonNeg(input.perContainerOverheadMs, 'perContainerOverheadMs');
  nonNeg(input.safetyMarginMs, 'safetyMarginMs');
  for (const c of input.containers) {
    nonNeg(c.rssBytes, `containers[${c.namespace}/${c.id}].rssBytes`);
    nonNeg(c.upperDirBytes, `containers[${c.namespace}/${c.id}].upperDirBytes`);
    if (!Number.isFinite(c.priority))
      throw new ArchInputError(
        `containers[${c.namespace}/${c.id}].priority`,
        `${c.priority} is not a number`,
        'pass a finite priority',
      );
  }
}

// ---------------------------------------------------------------------------

/** Used until this node has measured anything: a modest local SSD. */
export const DEFAULT_THROUGHPUT_BYTES_PER_SEC = 300 * 1024 * 1024;

/** Where a worker keeps its node's throughput history (planning and local finalize read the same file). */
export function nodeThroughputFile(stateDir: string, node: string): string {
  return path.join(stateDir, `throughput-${node}.json`);
}

export interface ThroughputEstimatorOptions {
  /** Weight of each new sample in the moving average. Default 0.3. */
  alpha?: number;
  defaultBytesPerSec?: number;
  /**
   * Samples smaller than this are ignored: a tiny checkpoint's time is nearly
   * all fixed overhead and would make the disk look slow. Default 16 MiB.
   */
  minSampleBytes?: number;
  logger?: Logger;
}

interface EstimatorFile {
  version: 1;
  bytesPerSec: number;
  samples: number;
  updatedAt: string;
}

/** Sample rates outside this range are clock or accounting glitches, not disks. */
const MIN_RATE = 1024 * 1024;
const MAX_RATE = 100 * 1024 * 1024 * 1024;

/**
 * Exponentially weighted estimate of checkpoint write throughput on this
 * node, persisted as JSON so it survives worker restarts (the drain right
 * after a restart is when it matters). When checkpoints run in parallel,
 * report the batch (total bytes, wall time), since lanes share the disk.
 * Never throws on file problems: a drain must not fail over bookkeeping.
 */
export class ThroughputEstimator {
  private readonly file: string;
  private readonly alpha: number;
  private readonly defaultBytesPerSec: number;
  private readonly minSampleBytes: number;
  private readonly logger: Logger | undefined;
  private estimate: number | undefined;
  private samples = 0;

  constructor(file: string, opts: ThroughputEstimatorOptions = {}) {
    this.file = file;
    this.alpha = opts.alpha ?? 0.3;
    if (!(this.alpha > 0 && this.alpha <= 1))
      throw new ArchInputError('alpha', `${this.alpha} is not in (0, 1]`, 'pass alpha such as 0.3');
    this.defaultBytesPerSec = opts.defaultBytesPerSec ?? DEFAULT_THROUGHPUT_BYTES_PER_SEC;
    if (!(this.defaultBytesPerSec > 0)) {
      throw new ArchInputError(
        'defaultBytesPerSec',
        `${this.defaultBytesPerSec} is not positive`,
        'pass a positive default throughput',
      );
    }
    this.minSampleBytes = opts.minSampleBytes ?? 16 * 1024 * 1024;
    this.logger = opts.logger;
    this.load();
  }

  /** Current estimate, or the default when nothing was observed yet. */
  get bytesPerSec(): number {
    return this.estimate ?? this.defaultBytesPerSec;
  }

  get sampleCount(): number {
    return this.samples;
  }

  /** Record one checkpoint (or parallel batch) result; returns the new estimate. */
  observe(bytes: number, ms: number): number {
    if (!Number.isFinite(bytes) || !Number.isFinite(ms) || ms <= 0 || bytes < this.minSampleBytes) {
      this.logger?.debug({ event: 'throughput.sample_ignored', bytes, ms }, 'throughput sample ignored');
      return this.bytesPerSec;
    }
    const rate = Math.min(MAX_RATE, Math.max(MIN_RATE, (bytes * 1000) / ms));
    this.estimate = this.estimate === undefined ? rate : this.alpha * rate + (1 - this.alpha) * this.estimate;
    this.samples += 1;
    this.save();
    return this.estimate;
  }

  private load(): void {
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.logger?.warn(
          { event: 'throughput.load_failed', file: this.file, err: errorMessage(err) },
          'cannot read throughput history; using default',
        );
      }
      return;
    }
    try {
      const doc = JSON.parse(text) as Partial<EstimatorFile>;
      if (
        doc.version !== 1 ||
        typeof doc.bytesPerSec !== 'number' ||
        !(doc.bytesPerSec > 0) ||
        !Number.isFinite(doc.bytesPerSec)
      ) {
        throw new Error('unexpected content');
      }
      this.estimate = doc.bytesPerSec;
      this.samples = typeof doc.samples === 'number' && doc.samples >= 0 ? doc.samples : 0;
    } catch (err) {
      this.logger?.warn(
        { event: 'throughput.load_failed', file: this.file, err: errorMessage(err) },
        'throughput history unreadable; using default',
      );
    }
  }

  /** Write-then-rename so a crash mid-write never leaves half a JSON file. */
  private save(): void {
    const doc: EstimatorFile = {
      version: 1,
      bytesPerSec: this.estimate!,
      samples: this.samples,
      updatedAt: new Date().toISOString(),
    };
    const tmp = `${this.file}.${process.pid}.tmp`;
    try {
      fs.mkdirSync(path.dirname(this.file), { recursive: true });
      fs.writeFileSync(tmp, JSON.stringify(doc) + '\n');
      fs.renameSync(tmp, this.file);
    } catch (err) {
      this.logger?.warn(
        { event: 'throughput.save_failed', file: this.file, err: errorMessage(err) },
        'cannot persist throughput estimate; keeping it in memory',
      );
      try {
        fs.rmSync(tmp, { force: true });
      } catch {
        /* nothing more to do */
      }
    }
  }
}
