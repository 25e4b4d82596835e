import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { workflowIds } from '../contract/names.js';
import { workflowTimes, type ActivityRun } from '../temporal/history.js';
import { FakeAwsImds } from '../test/support/fake-metadata.js';
import { runningOn, waitUntil, withTimeout } from '../test/support/temporal.js';
import type { DrainResult, ReclaimWatchState } from '../contract/types.js';
import { syncDisks } from './support/arch-bench-node.js';
import type { Benchmark, BenchEnv, BenchOutcome, Row, Table } from './support/registry.js';
import { median, round } from './support/stats.js';
import { activityContainerId, resultTimings, startBenchCluster } from './support/temporal-cluster.js';

/**
 * Issue 4's figure, through the real path: time from a cloud reclaim notice
 * to every container checkpointed, for COUNT ARCH containers of MEM_MB MiB
 * resident memory each, as a share of a 30 s notice.
 *
 *   fake AWS IMDSv2 (loopback) ── polled every POLL_MS by node A's arch-worker
 *   → `reclaim` signal (signal-with-start) to A's reclaim watcher workflow
 *   → drainNode child workflow: plan, checkpoint every container on A
 *     (≤ 2 at a time), then restore each on B (reclaim target)
 *
 * The counters use shared storage (ARCH_SHAREDFS_HOST_PATH), so the drain is
 * checkpoint + restore with no copy. The notice is an EC2 spot
 * instance-action whose `time` is 30 s (rounded up to the second, as EC2
 * gives whole seconds) after the moment it becomes visible in the fake; every
 * time below counts from that moment:
 *   detected       the worker's poll that got the notice (fake's request log)
 *   signalled      the watcher workflow received the signal (its record)
 *   checkpointed   the container's checkpoint is published: mtime of the
 *                  `current` symlink of its shared checkpoint dir (set when
 *                  the link is created, just before it is renamed into place)
 *   running on B   the restore activity on B created the task (`ctr run -d`
 *                  returned: restored and running): the activity's close in
 *                  the drain's history minus its own "verify" step (the
 *                  worker's 1 s stability wait); checked with ctr afterwards
 *   verified on B  the restore activity closed (after that wait)
 * Nothing polls containerd during a repetition (2 cores: it would slow the
 * drain down); the checkpoint dirs are watched with lstat every 100 ms.
 */
const A = 'ntc-a';
const B = 'ntc-b';
const COUNT = 8;
const MEM_MB = 64;
const BUDGET_MS = 30_000;
const POLL_MS = 250;
const INSTANCE_ACTION = '/latest/meta-data/spot/instance-action';

interface RepSample {
  rep: number;
  deadline: string;
  /** All relative to the notice becoming visible, ms. */
  detectedMs: number;
  signalledMs: number;
  drainStartedMs: number;
  firstCheckpointMs: number;
  allCheckpointedMs: number;
  allRunningOnBMs: number;
  allVerifiedOnBMs: number;
  drainClosedMs: number;
  /** Most checkpoint activities running at once (the plan's parallelism as executed). */
  parallelism: number;
  /** Most restore activities running at once. */
  restoreParallelism: number;
  bytes: number;
  withinDeadline: boolean;
  drainCheckpointPhaseMs: number;
  drainTotalMs: number;
  perContainer: {
    id: string;
    checkpointedMs: number;
    runningOnBMs: number;
    verifiedOnBMs: number;
    checkpointRunMs: number;
    restoreRunMs: number;
    sizeBytes?: number;
  }[];
}

export const benchmark: Benchmark = {
  name: 'notice',
  title: `Cloud notice → ${COUNT} containers of ${MEM_MB} MiB checkpointed (fake AWS spot notice, worker, reclaim workflow, 2 nodes), share of a ${BUDGET_MS / 1000} s notice`,
  order: 50,
  async run(env: BenchEnv): Promise<BenchOutcome> {
    const reps = env.reps || (env.quick ? 1 : 3);
    const loadBefore = os.loadavg()[0]!;
    const imds = await FakeAwsImds.start();
    env.cleanup.defer('fake AWS IMDS', () => imds.close());
    const cluster = await startBenchCluster('notice', [A, B], env.workDir, env.cleanup, {
      checkpointRoot: path.join(env.workDir, 'checkpoints'),
    });
    const shared = path.join(env.workDir, 'shared');
    fs.mkdirSync(shared, { recursive: true });
    // A's worker watches the fake metadata service and sends A's containers to B.
    await cluster.workers[A]!.stop();
    await cluster.startWorker(A, ['--reclaim-targets', B], {
      ARCH_CLOUD_PROVIDER: 'aws',
      ARCH_METADATA_URL: imds.url,
      ARCH_NOTICE_POLL_MS: String(POLL_MS),
    });
    await waitUntil(
      "A's worker polling the fake IMDS",
      () => (imds.requests.some((r) => r.path === INSTANCE_ACTION && r.status === 404) ? true : undefined),
      30_000,
      100,
    );
    const client = cluster.temporal.client;
    const watchId = workflowIds.reclaimWatch(A);
    const watchState = () => client.workflow.getHandle(watchId).query<ReclaimWatchState>('state');
    const samples: RepSample[] = [];

    for (let rep = 0; rep < reps; rep++) {
      const ids = Array.from({ length: COUNT }, (_, i) => `ntc${rep}-${i}`);
      env.log(`notice: rep ${rep + 1}/${reps}: starting ${COUNT} counters of ${MEM_MB} MiB on ${A}`);
      for (const id of ids) {
        await cluster.runCounter(A, id, [
          `COUNTER_MEM_MB=${MEM_MB}`,
          `ARCH_SHAREDFS_HOST_PATH=${shared}`,
          'ARCH_WORKDIR_CONTAINER_PATH=/work',
        ]);
      }
      const before: Record<string, number> = {};
      for (const id of ids) before[id] = await cluster.waitCount(A, id, 2, 60_000);
      await syncDisks();
      const currentLink = (id: string) => path.join(shared, 'checkpoint', 'default', id, 'current');
      for (const id of ids)
        if (fs.existsSync(currentLink(id))) throw new Error(`${id} has a checkpoint before the notice`);

      // The notice: visible from t0 on.
      const t0 = Date.now();
      const deadlineMs = Math.ceil((t0 + BUDGET_MS) / 1000) * 1000;
      const deadline = new Date(deadlineMs).toISOString().replace(/\.\d+Z$/, 'Z');
      imds.scheduleNotice({ action: 'terminate', time: deadline });
      env.log(`notice: rep ${rep + 1}/${reps}: spot instance-action, time ${deadline}`);

      const published = new Map<string, number>();
      await waitUntil(
        `all ${COUNT} checkpoints published`,
        () => {
          for (const id of ids) {
            if (published.has(id)) continue;
            try {
              published.set(id, fs.lstatSync(currentLink(id)).mtimeMs);
            } catch {
              // not yet
            }
          }
          return published.size === COUNT ? true : undefined;
        },
        120_000,
        100,
      ).catch(async (err: Error) => {
        // Say what the nodes saw: a failure seen once in a long run must explain itself.
        const state = await watchState().catch((e: Error) => `no watcher state: ${e.message}`);
        const polled = imds.requests.filter((r) => r.at >= t0 && r.path === INSTANCE_ACTION).map((r) => r.status);
        throw new Error(
          [
            err.message,
            `published: ${[...published.keys()].join(', ') || 'none'}`,
            `${A}'s polls of the notice since it was posted: ${polled.length} (statuses ${[...new Set(polled)].join(', ') || 'none'})`,
            `watcher ${watchId}: ${JSON.stringify(state)}`,
            `what the nodes logged (warnings and errors):\n${cluster.logDigest()}`,
          ].join('\n'),
        );
      });
      const drainId = await waitUntil(
        'the drain workflow id',
        async () => {
          const s = await watchState();
          return s.history[rep]?.drainWorkflowId ?? s.current?.drainWorkflowId;
        },
        30_000,
        250,
      );
      const drainHandle = client.workflow.getHandle(drainId);
      const drain = await withTimeout(drainHandle.result() as Promise<DrainResult>, 120_000);
      if (drain === 'timeout') throw new Error(`drain ${drainId} did not finish within 120 s`);
      const state = await waitUntil(
        'the watcher to record the drain',
        async () => {
          const s = await watchState();
          return s.history.length > rep && s.status === 'watching' ? s : undefined;
        },
        30_000,
        250,
      );
      const record = state.history[rep]!;

      // Correctness first: every container checkpointed in time and running on B, and counting on.
      if (Date.parse(drain.deadline) !== deadlineMs || !/^aws /.test(record.reason ?? '')) {
        throw new Error(
          `drain ${drainId} is not the notice's: deadline ${drain.deadline} (notice ${deadline}), reason ${record.reason}`,
        );
      }
      const wrong = drain.containers.filter(
        (c) => c.outcome !== 'migrated' || c.runningOn !== B || !c.checkpointedInTime,
      );
      if (drain.containers.length !== COUNT || wrong.length) {
        throw new Error(
          `drain ${drainId}: ${drain.containers.length}/${COUNT} containers, not migrated to ${B} in time: ${JSON.stringify(wrong)}`,
        );
      }
      for (const id of ids) {
        const where = await runningOn(cluster, id);
        if (where.join() !== B) throw new Error(`${id} runs on [${where.join(', ')}], expected ${B}`);
        await cluster.waitCount(B, id, before[id]! + 1, 30_000);
      }

      const times = await workflowTimes(drainHandle);
      const ofType = (t: string) => times.activities.filter((a) => a.type === t && a.ok);
      const byId = (runs: ActivityRun[]) => new Map(runs.map((r) => [activityContainerId(r.input) ?? '?', r]));
      const ck = byId(ofType('checkpointContainer'));
      const rs = byId(ofType('restoreContainer'));
      const detected = imds.requests.find((r) => r.at >= t0 && r.path === INSTANCE_ACTION && r.status === 200);
      const rel = (t: number) => t - t0;
      const perContainer = ids.map((id) => ({
        id,
        checkpointedMs: rel(published.get(id)!),
        runningOnBMs: rel((rs.get(id)?.closedAt ?? NaN) - (resultTimings(rs.get(id)?.result).verify ?? NaN)),
        verifiedOnBMs: rel(rs.get(id)?.closedAt ?? NaN),
        checkpointRunMs: (ck.get(id)?.closedAt ?? NaN) - (ck.get(id)?.startedAt ?? NaN),
        restoreRunMs: (rs.get(id)?.closedAt ?? NaN) - (rs.get(id)?.startedAt ?? NaN),
        sizeBytes: drain.containers.find((c) => c.id === id)?.sizeBytes,
      }));
      const s: RepSample = {
        rep,
        deadline,
        detectedMs: detected ? rel(detected.at) : NaN,
        signalledMs: rel(Date.parse(record.receivedAt)),
        drainStartedMs: rel(times.startedAt),
        firstCheckpointMs: Math.min(...perContainer.map((c) => c.checkpointedMs)),
        allCheckpointedMs: Math.max(...perContainer.map((c) => c.checkpointedMs)),
        allRunningOnBMs: Math.max(...perContainer.map((c) => c.runningOnBMs)),
        allVerifiedOnBMs: Math.max(...perContainer.map((c) => c.verifiedOnBMs)),
        drainClosedMs: rel(times.closedAt),
        parallelism: maxConcurrent(ofType('checkpointContainer')),
        restoreParallelism: maxConcurrent(ofType('restoreContainer')),
        bytes: drain.containers.reduce((a, c) => a + (c.sizeBytes ?? 0), 0),
        withinDeadline: drain.withinDeadline,
        drainCheckpointPhaseMs: drain.checkpointPhaseMs,
        drainTotalMs: drain.totalMs,
        perContainer,
      };
      samples.push(s);
      env.log(
        `notice: rep ${rep + 1}/${reps}: detected ${round(s.detectedMs)} ms, signalled ${round(s.signalledMs)} ms, all checkpointed ${round(s.allCheckpointedMs)} ms, all running on ${B} ${round(s.allRunningOnBMs)} ms`,
      );

      // Next repetition starts from the same state: nothing on either node.
      for (const id of ids) {
        await cluster.nodes[B]!.containerd.removeContainer(id, 20_000);
        await cluster.nodes[A]!.containerd.removeContainer(id, 20_000).catch(() => undefined);
        fs.rmSync(path.join(shared, 'checkpoint', 'default', id), { recursive: true, force: true });
      }
    }
    await client.workflow
      .getHandle(watchId)
      .terminate('benchmark done')
      .catch(() => undefined);

    const med = (f: (s: RepSample) => number) => round(median(samples.map(f)));
    const worst = Math.max(...samples.map((s) => s.allCheckpointedMs));
    const allCk = med((s) => s.allCheckpointedMs);
    const allB = med((s) => s.allRunningOnBMs);
    const pct = (ms: number) => round((100 * ms) / BUDGET_MS);
    const rows: Row[] = [
      {
        metric: `notice → all ${COUNT}×${MEM_MB} MiB checkpointed (fake AWS spot notice → worker → reclaim workflow → drain)`,
        unit: 'ms',
        arch: allCk,
        n: reps,
        target: `< ${BUDGET_MS} ms (all ${COUNT} inside the notice)`,
        pass: samples.every((s) => s.allCheckpointedMs < BUDGET_MS && s.withinDeadline),
        note: `worst ${round(worst)} ms`,
      },
      {
        metric: `notice → all ${COUNT} checkpointed: share of a ${BUDGET_MS / 1000} s notice`,
        unit: '%',
        arch: pct(allCk),
        n: reps,
        target: '< 100 %',
        pass: worst < BUDGET_MS,
        note: `worst ${pct(worst)} %`,
      },
      {
        metric: `notice → all ${COUNT} running on ${B} (restored from shared storage)`,
        unit: 'ms',
        arch: allB,
        n: reps,
        note: `${pct(allB)} % of ${BUDGET_MS / 1000} s`,
      },
      {
        metric: `notice → drain workflow started (poll every ${POLL_MS} ms, signal-with-start, child workflow)`,
        unit: 'ms',
        arch: med((s) => s.drainStartedMs),
        n: reps,
      },
    ];
    const tables: Table[] = [
      {
        title: `Timeline of each repetition, ms after the notice became visible (deadline = notice + ${BUDGET_MS / 1000} s, rounded up to the second)`,
        header: [
          'rep',
          'detected by the worker',
          'signal received by the watcher',
          'drain started',
          'first checkpoint',
          `all ${COUNT} checkpointed`,
          '% of 30 s',
          `all running on ${B}`,
          'all restores verified',
          'drain closed',
          'parallelism (checkpoint/restore)',
          'MiB written',
        ],
        rows: [
          ...samples.map((s) => [
            s.rep + 1,
            round(s.detectedMs),
            round(s.signalledMs),
            round(s.drainStartedMs),
            round(s.firstCheckpointMs),
            round(s.allCheckpointedMs),
            pct(s.allCheckpointedMs),
            round(s.allRunningOnBMs),
            round(s.allVerifiedOnBMs),
            round(s.drainClosedMs),
            `${s.parallelism}/${s.restoreParallelism}`,
            round(s.bytes / 2 ** 20),
          ]),
          [
            'median',
            med((s) => s.detectedMs),
            med((s) => s.signalledMs),
            med((s) => s.drainStartedMs),
            med((s) => s.firstCheckpointMs),
            allCk,
            pct(allCk),
            allB,
            med((s) => s.allVerifiedOnBMs),
            med((s) => s.drainClosedMs),
            '',
            med((s) => s.bytes / 2 ** 20),
          ],
        ],
      },
      {
        title: 'Per container (median over containers and repetitions), ms',
        header: [
          'checkpoint activity run',
          'restore activity run',
          'checkpoint published after notice',
          `running on ${B} after notice`,
          'MiB',
        ],
        rows: [
          [
            round(median(samples.flatMap((s) => s.perContainer.map((c) => c.checkpointRunMs)))),
            round(median(samples.flatMap((s) => s.perContainer.map((c) => c.restoreRunMs)))),
            round(median(samples.flatMap((s) => s.perContainer.map((c) => c.checkpointedMs)))),
            round(median(samples.flatMap((s) => s.perContainer.map((c) => c.runningOnBMs)))),
            round(median(samples.flatMap((s) => s.perContainer.map((c) => (c.sizeBytes ?? NaN) / 2 ** 20)))),
          ],
        ],
      },
    ];
    const ckSpan = med((s) => s.allCheckpointedMs - s.drainStartedMs);
    const notes = [
      `From a spot interruption notice appearing in the (loopback) EC2 metadata service to all ${COUNT} containers of ${MEM_MB} MiB checkpointed: ${allCk} ms median (${pct(allCk)} % of a ${BUDGET_MS / 1000} s notice; worst of ${reps}: ${round(worst)} ms, ${pct(worst)} %), on ${os.cpus().length} cores. All ${COUNT} ran on ${B} ${allB} ms after the notice (${pct(allB)} %).`,
      `Getting to work: the worker's poll (every ${POLL_MS} ms) saw the notice after ${med((s) => s.detectedMs)} ms, the watcher had the signal at ${med((s) => s.signalledMs)} ms and the drain workflow started at ${med((s) => s.drainStartedMs)} ms; from there to the last checkpoint published took ${ckSpan} ms (planning, describe and checkpoint activities, ${[...new Set(samples.map((s) => s.parallelism))].join(' or ')} at a time).`,
      `Checkpoint times are the mtimes of the \`current\` symlinks of the shared checkpoint dirs (set as each checkpoint is published); "running on ${B}" is when the restore activity's \`ctr run -d\` returned (its close in the drain's history minus its own verify step), "verified" its close after the worker's stability wait (--verify-stable, 1 s by default, which holds a restore lane: ${COUNT} restores, ${[...new Set(samples.map((s) => s.restoreParallelism))].join(' or ')} at a time, spend about ${round(COUNT / median(samples.map((s) => s.restoreParallelism)))} s of the restore phase waiting). Afterwards every container was checked running on ${B} with ctr and its counter still counting.`,
      `Load average (1 min) ${loadBefore.toFixed(2)} at start and ${os.loadavg()[0]!.toFixed(2)} at the end (other work shares this machine). The reclaim benchmark measures the same ${COUNT}×${MEM_MB} MiB checkpoint locally (finalizeNode, no Temporal).`,
    ];
    return {
      rows,
      tables,
      notes,
      details: {
        count: COUNT,
        memMb: MEM_MB,
        budgetMs: BUDGET_MS,
        pollMs: POLL_MS,
        reps,
        nodes: [A, B],
        workerEntry: cluster.workerEntry(A),
        samples,
        loadAvg: { start: loadBefore, end: os.loadavg()[0] },
      },
    };
  },
};

/** Most activities in flight at once. */
function maxConcurrent(runs: ActivityRun[]): number {
  const ev = runs
    .flatMap(
      (r) =>
        [
          [r.startedAt, 1],
          [r.closedAt, -1],
        ] as [number, number][],
    )
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let cur = 0;
  let best = 0;
  for (const [, d] of ev) {
    cur += d;
    best = Math.max(best, cur);
  }
  return best;
}
