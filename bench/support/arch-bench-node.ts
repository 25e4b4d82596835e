import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import type { MountSpec } from '../../contract/types.js';
import { criuBinary, realRunc } from '../../test/support/arch-env.js';
import { startArchNode, waitFor, type ArchTestNode } from '../../test/support/arch-node.js';
import { archHome } from './arch-home.js';
import type { Cleanup } from './cleanup.js';

/**
 * A private containerd node with ARCH settings (test/support/arch-node.ts),
 * plus what the benchmarks need on top:
 * - a timing wrapper around bin/arch-runc: every runc call containerd's shim
 *   makes is logged with its wall time (front + Node side + real runc),
 *   which is the honest "ARCH restore" figure (the shim's own durationMs
 *   starts after Node has loaded);
 * - raw runc checkpoints of containers that containerd runs with plain runc.
 */
export interface BenchNode {
  node: ArchTestNode;
  /** Host directory given to containers as ARCH_CHECKPOINT_HOST_PATH. */
  storage: string;
  /** ctr run the counter (or `job.args` in its image); `arch` picks arch-runc (through the timer) or plain runc. */
  run(id: string, o: { arch: boolean; memMb: number } & Omit<BenchJob, 'memMb'>): Promise<void>;
  /** Wait until the counter has ticked `ticks` times (its memory is filled before the first tick). */
  ready(id: string, ticks?: number, timeoutMs?: number): Promise<number>;
  /** Wall time of arch-runc calls for `id` with subcommand `sub` (newest last). */
  callTimes(id: string, sub: string): number[];
  /** `runc checkpoint` (processes stop) of a plain-runc container of this node; resolves ms. */
  rawCheckpoint(id: string, imagePath: string, workPath: string, extraEnv?: Record<string, string>): Promise<number>;
  remove(id: string): Promise<void>;
}

/** What a benchmark's container runs beyond the counter's defaults. */
export interface BenchJob {
  /** Instead of the benchmark's default. */
  memMb?: number;
  env?: string[];
  mounts?: MountSpec[];
  /** Instead of the image's command (the counter). */
  args?: string[];
}

export async function startBenchNode(
  name: string,
  workDir: string,
  cleanup: Cleanup,
  overrides: Record<string, string> = {},
): Promise<BenchNode> {
  const storage = path.join(workDir, 'checkpoints');
  fs.mkdirSync(storage, { recursive: true });
  const { home, runcBin } = archHome();
  const timerLog = path.join(workDir, 'arch-runc-calls.log');
  const timer = path.join(workDir, 'arch-runc-timed');
  fs.writeFileSync(
    timer,
    [
      '#!/bin/sh',
      '# Benchmark wrapper: time one arch-runc call (front + Node side + real runc).',
      's=$(date +%s%N)',
      `${runcBin} "$@"`,
      'rc=$?',
      'e=$(date +%s%N)',
      `echo "$s $e $rc $*" >> ${timerLog}`,
      'exit $rc',
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  // ARCH_DEFAULT_CHECKPOINT_PATH: finalize keeps its throughput estimate beside it; not in /var/lib/arch.
  const node = await startArchNode(name, {
    ARCH_LOG_LEVEL: 'info',
    ARCH_HOME: home,
    ARCH_DEFAULT_CHECKPOINT_PATH: path.join(workDir, 'default-checkpoints'),
    ...overrides,
  });
  cleanup.defer(`containerd node ${name}`, () => node.stop());
  const criu = criuBinary();
  const runc = realRunc();
  return {
    node,
    storage,
    async run(id, o) {
      const env = [
        `COUNTER_MEM_MB=${o.memMb}`,
        ...(o.arch ? ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`] : []),
        ...(o.env ?? []),
      ];
      await node.containerd.run({
        image: node.image,
        id,
        env,
        detach: true,
        logFile: path.join(node.dir, `${id}-${Date.now()}.out`),
        runcBinary: o.arch ? timer : undefined,
        mounts: o.mounts,
        args: o.args,
      });
    },
    ready(id, ticks = 2, timeoutMs = 60_000) {
      return waitFor(
        `${id} ticks ${ticks}`,
        () => {
          const c = node.count(id);
          return c >= ticks ? c : undefined;
        },
        timeoutMs,
      );
    },
    callTimes(id, sub) {
      let text = '';
      try {
        text = fs.readFileSync(timerLog, 'utf8');
      } catch {
        return [];
      }
      const out: number[] = [];
      for (const line of text.split('\n')) {
        const f = line.trim().split(/\s+/);
        if (f.length < 5 || f[f.length - 1] !== id || !f.slice(3).includes(sub)) continue;
        out.push((Number(f[1]) - Number(f[0])) / 1e6);
      }
      return out;
    },
    async rawCheckpoint(id, imagePath, workPath, extraEnv = {}) {
      fs.mkdirSync(imagePath, { recursive: true });
      fs.mkdirSync(workPath, { recursive: true });
      const t0 = process.hrtime.bigint();
      const r = await execa(
        runc,
        [
          '--root',
          node.runcRoot('default'),
          '--criu',
          criu,
          'checkpoint',
          '--image-path',
          imagePath,
          '--work-path',
          workPath,
          id,
        ],
        {
          env: { ...process.env, CRIU_FAULT: '130', ...extraEnv },
          reject: false,
          all: true,
        },
      );
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.exitCode !== 0) throw new Error(`raw runc checkpoint of ${id} failed: ${r.all ?? ''}`);
      return ms;
    },
    async remove(id) {
      await node.containerd.removeContainer(id, 20_000);
    },
  };
}

/** Flush dirty pages so one measurement's writeback does not slow the next one down. */
export async function syncDisks(): Promise<void> {
  await execa('sync');
}

/** Total size of the regular files below dir. */
export function duBytes(dir: string): number {
  let total = 0;
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) total += fs.statSync(p).size;
    }
  };
  walk(dir);
  return total;
}
