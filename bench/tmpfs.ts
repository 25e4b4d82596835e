import path from 'node:path';
import { startBenchNode } from './support/arch-bench-node.js';
import type { Benchmark, BenchEnv, BenchOutcome } from './support/registry.js';
import { median, pairedRatio, round } from './support/stats.js';
import { benchStandaloneRunc } from './support/standalone-runc.js';
import { archCycle, rawStandalone, type ArchSample } from './checkpoint-restore.js';

/**
 * A job whose data lives in a tmpfs of its own (Docker's `--tmpfs` and its
 * /dev/shm: not bind mounts from the host, so CRIU keeps their files in the
 * checkpoint, as `tar --gzip`): checkpoint and restore, ARCH against runc,
 * same run, interleaved, medians of per-repetition ratios.
 *
 * The job: the counter (JOB_MEM_MB of memory) after it wrote TMPFS_MB of
 * random bytes into its tmpfs (a job's arrays or spilled tensors: as
 * incompressible as its memory).
 *   ARCH  checkpointContainer (fsync), then the arch-runc create + start
 *         that restores it (bench/checkpoint-restore.ts archCycle). CRIU's
 *         tar finds ARCH's gzip first (shim/criu-gzip.c: stored blocks).
 *   raw   standalone runc: `runc checkpoint` + an fsync of its images (the
 *         same durability), `runc restore -d`; CRIU's tar runs the system's gzip.
 */
const TMPFS_MB = 128;
const JOB_MEM_MB = 16;
const JOB_SCRIPT = `head -c ${TMPFS_MB * 1024 * 1024} /dev/urandom > /scratch/data && exec /usr/bin/counter`;

export const benchmark: Benchmark = {
  name: 'tmpfs',
  title: `Checkpoint and restore of a job with ${TMPFS_MB} MiB in a tmpfs of its own, ARCH vs runc`,
  order: 26,
  async run(env: BenchEnv): Promise<BenchOutcome> {
    const reps = env.reps || (env.quick ? 1 : 3);
    const bn = await startBenchNode('bench-tmpfs', env.workDir, env.cleanup);
    const sa = benchStandaloneRunc(env, 'sa-tmpfs');
    const scratch = path.join(env.workDir, 'raw-tmpfs-images');
    const env0 = [`COUNTER_MEM_MB=${JOB_MEM_MB}`];
    const args = ['/bin/sh', '-c', JOB_SCRIPT];

    const raw: { checkpointMs: number; fsyncMs: number; restoreMs: number }[] = [];
    const arch: (ArchSample & { rep: number })[] = [];
    const variants: Record<string, (rep: number) => Promise<void>> = {
      raw: async (rep) => {
        raw[rep] = await rawStandalone(sa, `raw-tmpfs-${rep}`, scratch, env.cleanup, {
          args,
          env: env0,
          mounts: [
            {
              destination: '/scratch',
              type: 'tmpfs',
              source: 'tmpfs',
              options: ['nosuid', 'nodev', 'mode=1777', 'size=512m'],
            },
          ],
        });
      },
      arch: async (rep) => {
        const s = await archCycle(
          bn,
          env,
          `arch-tmpfs-${rep}`,
          true,
          undefined,
          {},
          {
            memMb: JOB_MEM_MB,
            args,
            mounts: [{ type: 'tmpfs', src: 'tmpfs', dst: '/scratch', options: ['nosuid', 'nodev', 'size=512m'] }],
          },
        );
        arch.push({ ...s, rep });
      },
    };
    // One warm-up round first, recorded under index `reps` and dropped; the order alternates.
    for (const rep of [reps, ...Array.from({ length: reps }, (_, i) => i)]) {
      const order = rep % 2 ? ['arch', 'raw'] : ['raw', 'arch'];
      for (const v of order) {
        env.log(`tmpfs: ${rep === reps ? 'warm-up' : `rep ${rep + 1}/${reps}`} ${v}`);
        await variants[v]!(rep);
      }
    }
    raw.length = reps;
    const A = arch.filter((s) => s.rep < reps);
    const rawCkpt = raw.map((r) => r.checkpointMs + r.fsyncMs);
    const ckRatio = pairedRatio(A, (s) => s.checkpointMs, rawCkpt);
    const rsRatio = pairedRatio(
      A,
      (s) => s.restoreCallMs,
      raw.map((r) => r.restoreMs),
    );
    return {
      rows: [
        {
          metric: `checkpoint of a job with ${TMPFS_MB} MiB in its own tmpfs (${JOB_MEM_MB} MiB of memory) vs runc checkpoint + fsync of its images`,
          unit: 'ms',
          arch: round(median(A.map((s) => s.checkpointMs))),
          raw: round(median(rawCkpt)),
          ratio: ckRatio,
          n: A.length,
          target: '≤ 1.0x',
          pass: ckRatio <= 1,
          note: `the job frozen meanwhile; runc's fsync alone ${round(median(raw.map((r) => r.fsyncMs)))} ms`,
        },
        {
          metric: `restore of it: arch-runc create + start vs runc restore -d`,
          unit: 'ms',
          arch: round(median(A.map((s) => s.restoreCallMs))),
          raw: round(median(raw.map((r) => r.restoreMs))),
          ratio: rsRatio,
          n: A.length,
          target: '≤ 1.2x',
          pass: rsRatio <= 1.2,
        },
      ],
      details: {
        raw,
        arch: A.map((s) => ({ ...s, result: { timings: s.result.timings, sizeBytes: s.result.sizeBytes } })),
      },
      notes: [
        `CRIU archives a tmpfs mount's files with tar and gzip. runc's CRIU runs the system's gzip (about 30 MB/s here on any data); ARCH's CRIU finds ARCH's gzip first, which writes the same format with stored blocks (shim/criu-gzip.c), and inflates with zlib on restore.`,
      ],
    };
  },
};
