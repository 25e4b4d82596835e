import path from 'node:path';
import type { CheckpointResult } from './checkpoint.js';
import type { NodeContext } from './context.js';
import { planDrain, ThroughputEstimator, type DrainPlan } from './drain-plan.js';
import { errorMessage } from '../contract/errors.js';
import { findArchContainers, type ArchContainer } from './node-containers.js';
import { describeSearched, type RuncRootsFound } from './runc-roots.js';
import { startRuncListing, type RuncListing } from './runc-listing.js';

/**
 * Checkpoint every running ARCH container on this node before a deadline:
 * what the original ARCH's container_finalizer did on a reclaim warning, now
 * planned. The planner orders by ARCH_PRIORITY then size and picks the
 * parallelism from measured disk throughput; containers still running when
 * the deadline comes are cancelled (CRIU aborts, the container is thawed, its
 * previous checkpoint stays) and reported, never half-published.
 */
export interface FinalizeOptions {
  deadline: Date;
  maxParallel?: number;
  /** Only these containers ("ns/id"); default all running ARCH containers. */
  only?: string[];
  namespaces?: string[];
  leaveRunning?: boolean;
  /** The node's throughput history (a worker's); default beside the checkpoint root. */
  throughputFile?: string;
  onPlan?: (plan: DrainPlan, containers: ArchContainer[]) => void;
  onResult?: (r: FinalizeItem) => void;
  signal?: AbortSignal;
  /** The `runc list`s, started by the caller already (core/runc-listing.ts; `namespaces` is then the caller's to apply). */
  listing?: Promise<RuncListing>;
}

export interface FinalizeItem {
  namespace: string;
  id: string;
  status: 'checkpointed' | 'failed' | 'deadline';
  expectedToFit: boolean;
  sizeBytes?: number;
  durationMs?: number;
  dir?: string;
  timings?: Record<string, number>;
  /** How many tries the checkpoint took, when more than one (a process that would not stop at first). */
  tries?: number;
  error?: string;
}

export interface FinalizeReport {
  node: string;
  startedAt: string;
  deadline: string;
  parallelism: number;
  wallMs: number;
  items: FinalizeItem[];
  ok: boolean;
  /** The runc roots looked in (a reclaim that finds nothing must say where it looked). */
  runcRoots: RuncRootsFound['searched'];
  /** Settings naming something that is not there (ARCH_RUNC_ROOT, ARCH_DOCKER_CONFIG...). */
  warnings: RuncRootsFound['warnings'];
  /**
   * When each step ended, in ms since this process started (Node's time
   * origin): `started` is finalizeNode's start (Node, modules, settings and
   * logger before it), then the runc roots found (and their `runc list`s
   * started, before `started` when the caller started them: then
   * `started`), the containers listed and planned, and every checkpoint
   * done. A reclaim notice is counted from
   * the process's start, not from the first checkpoint.
   */
  timeline: { started: number; rootsFound: number; listed: number; planned: number; checkpointed: number };
}

/** Fixed cost of one checkpoint (freeze, CRIU start, runc calls), measured on these machines. */
const PER_CONTAINER_OVERHEAD_MS = 350;

export function throughputFile(ctx: NodeContext): string {
  return path.join(path.dirname(ctx.settings.defaultCheckpointRoot), 'throughput.json');
}

/**
 * The checkpoint path's modules (most of what `arch-cli finalize` loads,
 * ~30 ms of JavaScript to run on these VMs), loaded while `runc list` runs
 * (a process, on the other core) rather than before it: a reclaim notice
 * counts from the process's start. The load waits a 2 ms head start, which
 * is usually enough for the listing's few file-system replies, so that
 * `runc list` is already running when this thread turns to loading. If it
 * is not, the load only comes first, as it did before.
 */
function loadCheckpointPath(): Promise<typeof import('./checkpoint.js')> {
  return new Promise((r) => setTimeout(r, LISTING_HEAD_START_MS)).then(() => import('./checkpoint.js'));
}
const LISTING_HEAD_START_MS = 2;

export async function finalizeNode(ctx: NodeContext, opts: FinalizeOptions): Promise<FinalizeReport> {
  const t0 = Date.now();
  const since = () => Math.round(process.uptime() * 1000); // the clock of runc-listing.ts rootsFoundAt
  const started = since();
  const runcListing = opts.listing ?? startRuncListing(ctx.settings, { namespaces: opts.namespaces });
  // Found before finalizeNode started when the caller started the listing: then at `started`.
  const rootsFound = Math.max(started, Math.round((await runcListing).rootsFoundAt));
  const listing = findArchContainers(ctx, { listing: runcListing });
  const checkpointing = loadCheckpointPath();
  checkpointing.catch(() => undefined); // a failed load fails each checkpoint, said in its item
  const { containers: all, roots } = await listing;
  const listed = since();
  const running = all.filter(
    (c) =>
      (c.status === 'running' || c.status === 'paused') && (!opts.only || opts.only.includes(`${c.namespace}/${c.id}`)),
  );
  const estimator = new ThroughputEstimator(opts.throughputFile ?? throughputFile(ctx), { logger: ctx.log });
  const plan = planDrain({
    now: new Date(t0),
    deadline: opts.deadline,
    containers: running.map((c) => ({
      namespace: c.namespace,
      id: c.id,
      priority: c.contract.priority,
      rssBytes: c.rssBytes,
      upperDirBytes: c.upperDirBytes,
    })),
    throughputBytesPerSec: estimator.bytesPerSec,
    perContainerOverheadMs: PER_CONTAINER_OVERHEAD_MS,
    maxParallel: opts.maxParallel ?? 4,
    safetyMarginMs: 1000,
  });
  const planned = since();
  if (running.length === 0)
    ctx.log.warn(
      { phase: 'finalize', searched: roots.searched.map((r) => r.base) },
      `no running ARCH containers found; searched ${describeSearched(roots)}`,
    );
  opts.onPlan?.(plan, running);
  const byKey = new Map(running.map((c) => [`${c.namespace}/${c.id}`, c]));
  const fits = new Set(plan.expectedToFit.map((p) => `${p.namespace}/${p.id}`));
  if (plan.notExpectedToFit.length) {
    ctx.log.warn(
      {
        phase: 'finalize',
        notExpectedToFit: plan.notExpectedToFit.map((p) => `${p.namespace}/${p.id}`),
        budgetMs: plan.budgetMs,
      },
      'some containers are not expected to finish before the deadline; trying them last',
    );
  }
  // Past the deadline every in-flight checkpoint is cancelled: a late checkpoint is worth nothing.
  const deadlineAbort = new AbortController();
  const timer = setTimeout(
    () => deadlineAbort.abort(new Error('deadline reached')),
    Math.max(0, opts.deadline.getTime() - Date.now()),
  );
  const signal = opts.signal ? AbortSignal.any([opts.signal, deadlineAbort.signal]) : deadlineAbort.signal;
  const items: FinalizeItem[] = [];
  let next = 0;
  let batchBytes = 0;
  const lane = async (): Promise<void> => {
    while (next < plan.order.length) {
      const p = plan.order[next++]!;
      const key = `${p.namespace}/${p.id}`;
      const c = byKey.get(key)!;
      const base = { namespace: p.namespace, id: p.id, expectedToFit: fits.has(key) };
      let item: FinalizeItem;
      if (signal.aborted) {
        item = { ...base, status: 'deadline', error: 'not started: deadline reached' };
      } else {
        const s = Date.now();
        try {
          const { checkpointContainer } = await checkpointing;
          const r: CheckpointResult = await checkpointContainer(ctx, {
            namespace: p.namespace,
            id: p.id,
            runcRoot: c.runcRoot,
            listed: { bundle: c.bundle, status: c.status, pid: c.pid },
            leaveRunning: opts.leaveRunning,
            signal,
          });
          batchBytes += r.sizeBytes;
          item = {
            ...base,
            status: 'checkpointed',
            sizeBytes: r.sizeBytes,
            durationMs: r.totalMs,
            dir: r.dir,
            timings: r.timings,
            ...(r.retries ? { tries: r.retries.length + 1 } : {}),
          };
        } catch (err) {
          item = {
            ...base,
            status: signal.aborted ? 'deadline' : 'failed',
            durationMs: Date.now() - s,
            error: errorMessage(err).split('\n')[0],
          };
        }
      }
      items.push(item);
      opts.onResult?.(item);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, plan.parallelism) }, lane));
  } finally {
    clearTimeout(timer);
  }
  // Loaded by now whenever something was checkpointed; with nothing to do, as before the lazy load
  // (and so the build's warm-up run still compiles the checkpoint path into the code cache).
  await checkpointing.catch(() => undefined);
  const checkpointed = since();
  const wallMs = Date.now() - t0;
  if (batchBytes > 0) estimator.observe(batchBytes, wallMs);
  const report: FinalizeReport = {
    node: ctx.settings.nodeName,
    startedAt: new Date(t0).toISOString(),
    deadline: opts.deadline.toISOString(),
    parallelism: plan.parallelism,
    wallMs,
    items,
    ok: items.every((i) => i.status === 'checkpointed'),
    runcRoots: roots.searched,
    warnings: roots.warnings,
    timeline: { started, rootsFound, listed, planned, checkpointed },
  };
  ctx.log.info(
    {
      phase: 'finalize',
      durationMs: wallMs,
      checkpointed: items.filter((i) => i.status === 'checkpointed').length,
      total: items.length,
    },
    'finalize done',
  );
  return report;
}
