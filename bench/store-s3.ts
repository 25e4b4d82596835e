/**
 * Object storage against a local format-2 store, same node, same job, same
 * run, interleaved, medians of paired per-repetition ratios
 * (`npm run bench -- --only store-s3`): a MEM_MB counter checkpointed
 * (checkpointContainer(), ARCH_FSYNC=1) and restored (the arch-runc create)
 * once with ARCH_CHECKPOINT_HOST_PATH (a local format-2 store) and once with
 * ARCH_CHECKPOINT_URL=s3://… on a real S3 server on loopback (versitygw, as
 * the tests start it, serving a directory on this machine's disk). The
 * node's S3 cache is emptied before each restore: the restore reads the
 * bucket, as a node that did not make the checkpoint does. Info rows, no
 * targets: issue 12 asks for the ratio.
 */
import fs from 'node:fs';
import path from 'node:path';
import { closeS3Clients } from '../core/s3-store.js';
import { startS3Server } from '../test/support/s3-server.js';
import { archCycle, MEM_MB } from './checkpoint-restore.js';
import { startBenchNode } from './support/arch-bench-node.js';
import type { Benchmark, Row } from './support/registry.js';
import { median, round } from './support/stats.js';

const BUCKET = 'arch-bench';
const PREFIX = 'jobs';

export const benchmark: Benchmark = {
  name: 'store-s3',
  title: 'Object storage (loopback S3 server) vs a local format-2 store: checkpoint and restore',
  order: 23,
  async run(env) {
    const reps = env.reps || (env.quick ? 1 : 5);
    const s3 = await startS3Server();
    env.cleanup.defer('S3 server', () => s3.close());
    env.cleanup.defer('S3 clients', async () => closeS3Clients());
    await s3.createBucket(BUCKET);
    const cache = path.join(env.workDir, 's3-cache');
    const bn = await startBenchNode('bench-s3', env.workDir, env.cleanup, {
      ARCH_STORE_FORMAT: '2',
      ARCH_FSYNC: '1',
      ARCH_S3_CACHE_PATH: cache,
      ARCH_ALLOWED_BUCKETS: `${BUCKET}/${PREFIX}`,
      ...s3.settings(),
    });
    // The bench node's containers name a local store; emptied here, as a URL excludes it.
    const s3Env = ['ARCH_CHECKPOINT_HOST_PATH=', `ARCH_CHECKPOINT_URL=s3://${BUCKET}/${PREFIX}`];

    const localCkpt: number[] = [];
    const localRestore: number[] = [];
    const s3Ckpt: number[] = [];
    const s3Restore: number[] = [];
    const s3Timings: Record<string, number>[] = [];

    const variants: Record<string, (rep: number) => Promise<void>> = {
      local: async (rep) => {
        const s = await archCycle(bn, env, `local-v2-${rep}`, true);
        localCkpt[rep] = s.checkpointMs;
        localRestore[rep] = s.restoreCallMs;
      },
      s3: async (rep) => {
        const id = `s3-${rep}`;
        const s = await archCycle(
          bn,
          env,
          id,
          true,
          (r) => {
            if (r.manifest.mode !== 's3') throw new Error(`${id}: checkpointed to ${r.manifest.mode}, not the bucket`);
            fs.rmSync(cache, { recursive: true, force: true });
          },
          {},
          { env: s3Env },
        );
        fs.rmSync(path.join(s3.root, BUCKET, PREFIX, 'default', id), { recursive: true, force: true });
        s3Ckpt[rep] = s.checkpointMs;
        s3Restore[rep] = s.restoreCallMs;
        s3Timings[rep] = s.restoreTimings;
      },
    };
    const order = Object.keys(variants);
    // A warm-up round first (index `reps`, dropped), then the order swapped each repetition.
    for (const rep of [reps, ...Array.from({ length: reps }, (_, i) => i)]) {
      const rot = rep % 2 ? [...order].reverse() : order;
      for (const v of rot) {
        env.log(`store-s3: ${rep === reps ? 'warm-up' : `rep ${rep + 1}/${reps}`} ${v}`);
        await variants[v]!(rep);
      }
    }
    for (const xs of [localCkpt, localRestore, s3Ckpt, s3Restore, s3Timings]) xs.length = reps;

    const idx = Array.from({ length: reps }, (_, i) => i);
    const row = (metric: string, a: number[], b: number[]): Row => ({
      metric,
      unit: 'ms',
      arch: round(median(a)),
      raw: round(median(b)),
      ratio: round(median(idx.map((i) => a[i]! / b[i]!))),
      n: reps,
      note: '"arch" = from/to S3, "raw" = the local format-2 store',
    });
    const rows: Row[] = [
      row(
        `restore ${MEM_MB} MiB from the loopback S3 server vs from a local format-2 store (arch-runc create + start), info`,
        s3Restore,
        localRestore,
      ),
      row(
        `checkpoint ${MEM_MB} MiB to the loopback S3 server vs to a local format-2 store (ARCH_FSYNC=1), info`,
        s3Ckpt,
        localCkpt,
      ),
    ];
    const notes = [
      `The S3 server is versitygw on 127.0.0.1 serving a directory of this machine (no network, same disk): the ratio is the cost of the S3 protocol and the SDK (a request per chunk, HEAD before each upload), not of a remote store.`,
    ];
    for (const n of notes) env.log(`store-s3: ${n}`);
    return { rows, notes, details: { reps, memMb: MEM_MB, localCkpt, localRestore, s3Ckpt, s3Restore, s3Timings } };
  },
};
