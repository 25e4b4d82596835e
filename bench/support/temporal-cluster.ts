import fs from 'node:fs';
import path from 'node:path';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { REPO_ROOT } from '../../test/support/images.js';
import { startCluster, stopAllTemporal, type ClusterOptions, type TestCluster } from '../../test/support/temporal.js';
import { archHome } from './arch-home.js';
import type { Cleanup } from './cleanup.js';

/**
 * A Temporal cluster for benchmarks: test/support/temporal.ts startCluster
 * (a real dev server on loopback, a private containerd per node, one
 * `arch-worker` process per node), but running the code of the dist/
 * snapshot taken at the start of the run (support/arch-home.ts), like every
 * other benchmark, so a rebuild in the checkout while it runs cannot hand a
 * worker or a shim call half-written modules:
 * - arch-runc: the per-node settings file sets ARCH_HOME to the snapshot;
 * - arch-worker: bin/arch-worker runs `$ARCH_NODE_BIN <checkout>/dist/worker/main.js`;
 *   ARCH_NODE_BIN is set (for this benchmark only) to a wrapper that runs
 *   the snapshot's copy of any <checkout>/dist/ file it is given.
 * Everything is registered with the benchmark's cleanup as it comes into
 * existence: Temporal processes, the cluster (workers, containerd nodes,
 * containers), the environment change.
 */
export interface BenchCluster extends TestCluster {
  /** The entry point worker processes of this cluster actually run. */
  workerEntry(node: string): string;
}

export async function startBenchCluster(
  label: string,
  names: string[],
  workDir: string,
  cleanup: Cleanup,
  o: ClusterOptions = {},
): Promise<BenchCluster> {
  const { home } = archHome();
  const repoDist = `${fs.realpathSync(REPO_ROOT)}/dist/`;
  const wrapper = path.join(workDir, 'node-from-snapshot');
  const q = (s: string) => {
    if (/['\n]/.test(s)) throw new Error(`path with a quote or newline: ${JSON.stringify(s)}`);
    return `'${s}'`;
  };
  fs.writeFileSync(
    wrapper,
    [
      '#!/bin/sh',
      "# Benchmark: run a file of the checkout's dist/ from the snapshot of dist/ taken at the start of the run.",
      'case "$1" in',
      `  ${q(repoDist)}*) _f=\${1#${q(repoDist)}}; shift; exec ${q(process.execPath)} ${q(`${home}/dist/`)}"$_f" "$@" ;;`,
      'esac',
      `exec ${q(process.execPath)} "$@"`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  const had = Object.prototype.hasOwnProperty.call(process.env, 'ARCH_NODE_BIN');
  const before = process.env.ARCH_NODE_BIN;
  process.env.ARCH_NODE_BIN = wrapper;
  cleanup.defer('ARCH_NODE_BIN', () => {
    if (had) process.env.ARCH_NODE_BIN = before;
    else delete process.env.ARCH_NODE_BIN;
  });
  // Before the cluster exists: an interrupted start must not leave a dev server behind.
  cleanup.defer('Temporal dev server and workers', () => stopAllTemporal());
  const nodeSettings: Record<string, Record<string, string | undefined>> = {};
  for (const n of names) nodeSettings[n] = { ARCH_HOME: home, ARCH_LOG_LEVEL: 'info', ...o.nodeSettings?.[n] };
  const cluster = await startCluster(label, names, { ...o, nodeSettings });
  cleanup.defer(`cluster ${label} (workers, containerd nodes, containers)`, () => cluster.stop());
  return {
    ...cluster,
    workerEntry(node) {
      const w = cluster.workers[node];
      if (!w) return 'no worker';
      try {
        return fs.readFileSync(`/proc/${w.pid}/cmdline`, 'utf8').split('\0').filter(Boolean).slice(1).join(' ');
      } catch {
        return 'exited';
      }
    },
  };
}

/** The container id an activity's input names ({ref}, {spec} or {id}), if any. */
export function activityContainerId(input: unknown): string | undefined {
  if (!input || typeof input !== 'object') return undefined;
  const o = input as { id?: unknown; ref?: { id?: unknown }; spec?: { id?: unknown } };
  const id = o.spec?.id ?? o.ref?.id ?? o.id;
  return typeof id === 'string' ? id : undefined;
}

/** `timings` of an activity result ({timings: {step: ms}}), or {}. */
export function resultTimings(result: unknown): Record<string, number> {
  const t = (result as { timings?: unknown } | undefined)?.timings;
  if (!t || typeof t !== 'object') return {};
  return Object.fromEntries(
    Object.entries(t as Record<string, unknown>).filter((e): e is [string, number] => typeof e[1] === 'number'),
  );
}

/** Handles of the closed workflows of a type whose id starts with `prefix`, oldest first (visibility). */
export async function closedWorkflows(
  client: Client,
  type: string,
  prefix: string,
): Promise<{ workflowId: string; handle: WorkflowHandle; startTime: number }[]> {
  const out: { workflowId: string; handle: WorkflowHandle; startTime: number }[] = [];
  for await (const w of client.workflow.list({ query: `WorkflowType = '${type.replace(/'/g, '')}'` })) {
    if (!w.workflowId.startsWith(prefix) || w.status.name === 'RUNNING') continue;
    out.push({
      workflowId: w.workflowId,
      handle: client.workflow.getHandle(w.workflowId, w.runId),
      startTime: w.startTime.getTime(),
    });
  }
  return out.sort((a, b) => a.startTime - b.startTime);
}
