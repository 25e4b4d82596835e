/**
 * Store format 2 (chunked, zstd, deduplicated) against issue 12's targets,
 * raw tools measured in the same run, interleaved, medians of paired
 * per-repetition ratios (`npm run bench -- --only store-v2`):
 *   checkpoint   checkpointContainer() of a MEM_MB counter, ARCH_FSYNC=1,
 *                ARCH_STORE_FORMAT=2 (chunks compressed, written, fsynced)
 *                vs `runc checkpoint` of the same counter on the same
 *                containerd node plus an fsync of its images;
 *   incremental  two checkpoints (left running) of a BIG_MB counter a few
 *                seconds apart: the second's bytes written and time against
 *                the first's;
 *   restore      the arch-runc create that restores the chunked checkpoint
 *                (chunks fetched, checked, assembled in tmpfs; the page
 *                images while runc and CRIU start, CRIU held at its gate
 *                until they are whole) vs `runc restore -d` of a standalone
 *                container;
 *   size         what the checkpoint takes in the store (du of its container
 *                directory: chunks + small files) vs podman's
 *                `checkpoint --export --compress zstd` of the same job
 *                (bench/support/podman.ts, installed when absent), else
 *                vs `tar | zstd -1` of runc's image directory (the row
 *                says so and why).
 *
 * `node dist/bench/chunking.js <a CRIU pages-N.img>` (no benchmark): how
 * many new bytes a second checkpoint stores with fixed-size and with
 * content-defined chunks, for two kinds of change made to a copy of a real
 * page image (README "Checkpoint store v2" has the numbers and the choice).
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { checkpointContainer, type CheckpointResult } from '../core/checkpoint.js';
import { criuBinary, realRunc } from '../test/support/arch-env.js';
import { archCycle, fsyncImages, rawStandalone } from './checkpoint-restore.js';
import { duBytes, startBenchNode, syncDisks, type BenchNode } from './support/arch-bench-node.js';
import type { Benchmark, BenchEnv, Row } from './support/registry.js';
import { median, msSince, round } from './support/stats.js';
import { startPodman } from './support/podman.js';
import { benchStandaloneRunc } from './support/standalone-runc.js';

const PAGE = 4096;
type Chunker = (b: Buffer) => Buffer[];

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function fixed(size: number): Chunker {
  return (buf) => {
    const out: Buffer[] = [];
    for (let o = 0; o < buf.length; o += size) out.push(buf.subarray(o, o + size));
    return out;
  };
}

/** Boundaries only between pages: after a page whose sampled bytes hash to 0 mod 256 (avg 1 MiB), 64..1024 pages a chunk. */
const pageCdc: Chunker = (buf) => {
  const out: Buffer[] = [];
  let start = 0;
  for (let p = 0; p < buf.length; p += PAGE) {
    const pages = (p + PAGE - start) / PAGE;
    let h = 2166136261;
    for (const off of [0, 1024, 2048, 3072, 4088])
      for (let i = off; i < off + 8 && p + i < buf.length; i++) h = Math.imul(h ^ buf[p + i]!, 16777619) >>> 0;
    if ((pages >= 64 && (h & 255) === 0) || pages >= 1024) {
      out.push(buf.subarray(start, p + PAGE));
      start = p + PAGE;
    }
  }
  if (start < buf.length) out.push(buf.subarray(start));
  return out;
};

function newBytes(before: Buffer, after: Buffer, chunker: Chunker): number {
  const have = new Set(chunker(before).map(sha));
  return chunker(after).reduce((n, c) => n + (have.has(sha(c)) ? 0 : c.length), 0);
}

export function compareChunking(file: string): string[] {
  const img = fs.readFileSync(file);
  // 4 MiB rewritten in place, as 64 runs of 64 KiB spread over the image...
  const inPlace = Buffer.from(img);
  for (let i = 0; i < 64; i++)
    randomBytes(65536).copy(inPlace, Math.floor(((i + 0.5) * img.length) / 64 / PAGE) * PAGE);
  // ...and the same with 3 pages that became present early on (what follows shifts by 12 KiB).
  const at = Math.floor((img.length * 0.1) / PAGE) * PAGE;
  const shifted = Buffer.concat([inPlace.subarray(0, at), randomBytes(3 * PAGE), inPlace.subarray(at)]);
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  return (
    [
      ['fixed 1 MiB', fixed(1 << 20)],
      ['fixed 4 MiB', fixed(4 << 20)],
      ['content-defined, page-aligned (avg 1 MiB)', pageCdc],
    ] as const
  ).map(
    ([name, ch]) =>
      `${name}: ${ch(img).length} chunks; in place: ${mib(newBytes(img, inPlace, ch))} new; plus the shift: ${mib(newBytes(img, shifted, ch))} new (of ${mib(img.length)})`,
  );
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node dist/bench/chunking.js <criu pages-N.img>');
    process.exit(2);
  }
  for (const line of compareChunking(file)) console.log(line);
}

const MEM_MB = 256;
const BIG_MB = 1024;

interface Incremental {
  firstMs: number;
  secondMs: number;
  firstBytes: number;
  secondBytes: number;
  reused: number;
}

/** Two checkpoints (left running) of a BIG_MB counter that ticked a few times between them. */
async function incremental(bn: BenchNode, env: BenchEnv, id: string): Promise<Incremental> {
  const node = bn.node;
  await bn.run(id, { arch: true, memMb: BIG_MB });
  const undo = env.cleanup.defer(`container ${id}`, () => bn.remove(id));
  const storeDir = path.join(bn.storage, 'default', id);
  env.cleanup.defer(`checkpoints of ${id}`, () => fs.rmSync(storeDir, { recursive: true, force: true }));
  const at = await bn.ready(id, 2, 120_000);
  const once = async (): Promise<{ ms: number; r: CheckpointResult }> => {
    await syncDisks();
    const t0 = process.hrtime.bigint();
    const r = await checkpointContainer(node.ctx, {
      namespace: 'default',
      id,
      runcRoot: node.runcRoot('default'),
      leaveRunning: true,
    });
    return { ms: msSince(t0), r };
  };
  const first = await once();
  await bn.ready(id, at + 3, 30_000); // the job goes on and changes what a counter changes
  const second = await once();
  await undo();
  fs.rmSync(storeDir, { recursive: true, force: true });
  if (!first.r.chunkStats || !second.r.chunkStats) throw new Error(`${id}: not a format-2 checkpoint`);
  return {
    firstMs: first.ms,
    secondMs: second.ms,
    firstBytes: first.r.chunkStats.bytes,
    secondBytes: second.r.chunkStats.bytes,
    reused: second.r.chunkStats.reused,
  };
}

/** Bytes of `tar | zstd -1` of a runc image directory (what podman's --compress zstd export is, without podman). */
async function zstdTarBytes(dir: string): Promise<number> {
  const r = await execa('sh', ['-c', 'tar -C "$1" -cf - . | zstd -1 -q -c | wc -c', 'sh', dir]);
  return Number(r.stdout.trim());
}

export const benchmark: Benchmark = {
  name: 'store-v2',
  title: `Store format 2 (chunked, zstd, deduplicated): checkpoint, incremental, restore and size vs runc`,
  order: 22,
  async run(env) {
    const reps = env.reps || (env.quick ? 1 : 5);
    const bn = await startBenchNode('bench-v2', env.workDir, env.cleanup, { ARCH_STORE_FORMAT: '2', ARCH_FSYNC: '1' });
    if (bn.node.ctx.settings.storeFormat !== 2) throw new Error('the bench node is not set to store format 2');
    const sa = benchStandaloneRunc(env, 'sa');
    const scratch = path.join(env.workDir, 'raw-images');
    const pod = await startPodman(env.workDir, env.runDir, criuBinary(), realRunc(), env.cleanup);
    /** Why podman's side is missing (then the size row falls back to `tar | zstd -1`). */
    let podmanProblem = typeof pod === 'string' ? pod : undefined;
    const podSize: number[] = [];
    const podCkpt: number[] = [];

    const rawCkpt: number[] = [];
    const rawCkptFsync: number[] = [];
    const rawZstd: number[] = [];
    const rawRestore: number[] = [];
    const archCkpt: number[] = [];
    const archRestore: number[] = [];
    const archStored: number[] = [];
    const archTimings: Record<string, number>[] = [];
    const incr: Incremental[] = [];
    const v1Ckpt: number[] = [];
    const v1Restore: number[] = [];

    const variants: Record<string, (rep: number) => Promise<void>> = {
      'raw-ctr': async (rep) => {
        const id = `raw-ctr-${rep}`;
        await bn.run(id, { arch: false, memMb: MEM_MB });
        const undo = env.cleanup.defer(`container ${id}`, () => bn.remove(id));
        await bn.ready(id);
        await syncDisks();
        const img = path.join(scratch, id);
        const ms = await bn.rawCheckpoint(id, img, `${img}-work`);
        rawCkpt[rep] = ms;
        rawCkptFsync[rep] = ms + fsyncImages(img);
        rawZstd[rep] = await zstdTarBytes(img);
        if (process.env.STORE_V2_ONLY) env.log(`store-v2 probe: raw ckpt ${ms} + fsync ${rawCkptFsync[rep]! - ms} ms`);
        await bn.node.containerd.waitStatus(id, 'STOPPED', 15_000);
        await undo();
        fs.rmSync(img, { recursive: true, force: true });
        fs.rmSync(`${img}-work`, { recursive: true, force: true });
      },
      'raw-standalone': async (rep) => {
        rawRestore[rep] = (await rawStandalone(sa, `raw-sa-${rep}`, scratch, env.cleanup)).restoreMs;
        if (process.env.STORE_V2_ONLY) env.log(`store-v2 probe: raw restore ${rawRestore[rep]} ms`);
      },
      'arch-v2': async (rep) => {
        const s = await archCycle(bn, env, `arch-v2-${rep}`, true, (r) => {
          archStored[rep] = duBytes(r.containerDir);
        });
        archCkpt[rep] = s.checkpointMs;
        archRestore[rep] = s.restoreCallMs;
        archTimings[rep] = s.result.timings;
        if (process.env.STORE_V2_ONLY)
          env.log(
            `store-v2 probe: ckpt ${s.checkpointMs} ms ${JSON.stringify(s.result.timings)} restore ${s.restoreCallMs} ms ${JSON.stringify(s.restoreTimings)}`,
          );
      },
      'arch-v1': async (rep) => {
        const s = await archCycle(bn, env, `arch-v1-${rep}`, true, undefined, { storeFormat: 1 });
        v1Ckpt[rep] = s.checkpointMs;
        v1Restore[rep] = s.restoreCallMs;
      },
      podman: async (rep) => {
        if (podmanProblem || typeof pod === 'string') return;
        try {
          const r = await pod.exportCheckpoint(`podman-${rep}`, MEM_MB);
          podSize[rep] = r.bytes;
          podCkpt[rep] = r.ms;
        } catch (err) {
          podmanProblem = `podman container checkpoint failed: ${(err as Error).message.split('\n')[0]!.slice(0, 200)}`;
          env.log(`store-v2: ${podmanProblem}`);
        }
      },
      'arch-v2-incremental': async (rep) => {
        incr[rep] = await incremental(bn, env, `arch-v2-inc-${rep}`);
      },
    };
    const order = Object.keys(variants).filter(
      (v) => !process.env.STORE_V2_ONLY || process.env.STORE_V2_ONLY.split(',').includes(v),
    );
    // A warm-up round first (index `reps`, dropped), then the order rotated each repetition.
    for (const rep of [reps, ...Array.from({ length: reps }, (_, i) => i)]) {
      const rot = [...order.slice(rep % order.length), ...order.slice(0, rep % order.length)];
      for (const v of rot) {
        env.log(`store-v2: ${rep === reps ? 'warm-up' : `rep ${rep + 1}/${reps}`} ${v}`);
        await variants[v]!(rep);
      }
    }
    for (const xs of [
      rawCkpt,
      rawCkptFsync,
      rawZstd,
      podSize,
      podCkpt,
      rawRestore,
      archCkpt,
      archRestore,
      archStored,
      archTimings,
      incr,
      v1Ckpt,
      v1Restore,
    ])
      xs.length = reps;

    const idx = Array.from({ length: reps }, (_, i) => i);
    const paired = (a: number[], b: number[]) => round(median(idx.map((i) => a[i]! / b[i]!)));
    const row = (metric: string, unit: Row['unit'], a: number[], b: number[], max: number, note?: string): Row => {
      const ratio = paired(a, b);
      const mbNote = unit === 'x' ? `ARCH ${round(median(a))} MB, raw ${round(median(b))} MB` : undefined;
      if (mbNote) note = note ? `${mbNote}; ${note}` : mbNote;
      return {
        metric,
        unit,
        ...(unit === 'x' ? {} : { arch: round(median(a)), raw: round(median(b)) }),
        ratio,
        n: reps,
        target: `≤ ${max}x`,
        pass: ratio <= max,
        ...(note ? { note } : {}),
      };
    };
    const mb = (xs: number[]) => xs.map((x) => x / 1e6);
    const rows: Row[] = [
      row(
        `checkpoint ${MEM_MB} MiB, format 2 (ARCH_FSYNC=1) vs runc checkpoint + fsync of its images`,
        'ms',
        archCkpt,
        rawCkptFsync,
        1.0,
      ),
      row(
        `checkpoint ${MEM_MB} MiB, format 2 (ARCH_FSYNC=1) vs runc checkpoint (no fsync), info`,
        'ms',
        archCkpt,
        rawCkpt,
        Infinity,
      ),
      row(
        `second checkpoint of a barely changed ${BIG_MB} MiB job: bytes written vs the first's`,
        'x',
        mb(incr.map((s) => s.secondBytes)),
        mb(incr.map((s) => s.firstBytes)),
        0.15,
        `chunks reused by the second: ${round(median(incr.map((s) => s.reused)))}`,
      ),
      row(
        `second checkpoint of a barely changed ${BIG_MB} MiB job: time vs the first's`,
        'ms',
        incr.map((s) => s.secondMs),
        incr.map((s) => s.firstMs),
        0.6,
      ),
      row(
        `restore ${MEM_MB} MiB from a local format-2 store: arch-runc create + start vs runc restore -d`,
        'ms',
        archRestore,
        rawRestore,
        1.2,
      ),
      ...(podmanProblem
        ? [
            row(
              `size of a ${MEM_MB} MiB checkpoint in the store vs tar | zstd -1 of runc's images (no podman: ${podmanProblem})`,
              'x',
              mb(archStored),
              mb(rawZstd),
              1.0,
            ),
          ]
        : [
            row(
              `size of a ${MEM_MB} MiB checkpoint in the store vs podman container checkpoint --export --compress zstd of the same job`,
              'x',
              mb(archStored),
              mb(podSize),
              1.0,
            ),
            row(
              `checkpoint ${MEM_MB} MiB, format 2 (ARCH_FSYNC=1) vs podman container checkpoint --export --compress zstd, info`,
              'ms',
              archCkpt,
              podCkpt,
              Infinity,
            ),
            row(
              `size: tar | zstd -1 of runc's images vs podman's export, info`,
              'x',
              mb(rawZstd),
              mb(podSize),
              Infinity,
            ),
          ]),
      row(`checkpoint ${MEM_MB} MiB, format 2 vs format 1 (both ARCH_FSYNC=1), info`, 'ms', archCkpt, v1Ckpt, Infinity),
      row(
        `restore ${MEM_MB} MiB, format 2 vs format 1 (arch-runc create + start), info`,
        'ms',
        archRestore,
        v1Restore,
        Infinity,
      ),
    ];
    for (const r of rows)
      if (r.target === '≤ Infinityx') {
        delete r.target;
        delete r.pass;
      }
    const ph = (k: string) => round(median(archTimings.map((t) => t[k] ?? 0)));
    const notes = [
      `Checkpoint phases (median, ms): dump ${ph('dump')} (page images chunked, hashed, compressed and written meanwhile), rootfs ${ph('rootfs')}, chunk (what was left after the dump) ${ph('chunk')}, fsync ${ph('fsync')}, publish ${ph('publish')}, stop ${ph('stop')}.`,
      podmanProblem
        ? `podman's side is missing (${podmanProblem}): the size is compared with \`tar | zstd -1\` of the runc image directory, which is what \`podman container checkpoint --export --compress zstd\` writes (plus podman's small config files).`
        : "podman (Debian's, its own storage, runc, ARCH's CRIU first on PATH) checkpointed the same counter job; its export's size is the size target's reference.",
    ];
    for (const n of notes) env.log(`store-v2: ${n}`);
    return {
      rows,
      notes,
      details: {
        reps,
        memMb: MEM_MB,
        bigMb: BIG_MB,
        rawCkpt,
        rawCkptFsync,
        rawZstd,
        rawRestore,
        archCkpt,
        archRestore,
        archStored,
        archTimings,
        incr,
        v1Ckpt,
        v1Restore,
      },
    };
  },
};
