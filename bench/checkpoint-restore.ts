import { readSignature, signManifest, trustOf, verifyManifestSignature } from '../core/trust.js';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer, type CheckpointResult } from '../core/checkpoint.js';
import type { NodeContext } from '../core/context.js';
import { criuRunEnv } from '../core/criu-network-lock.js';
import { readLogLines } from '../test/support/arch-env.js';
import { COUNTER_FILES } from '../test/support/images.js';
import { duBytes, startBenchNode, syncDisks, type BenchJob, type BenchNode } from './support/arch-bench-node.js';
import type { Benchmark, BenchEnv, BenchOutcome, Row, Table } from './support/registry.js';
import { median, msSince, pairedRatio, round } from './support/stats.js';
import { benchStandaloneRunc, type BundleSpec, type StandaloneRunc } from './support/standalone-runc.js';
import { MANIFEST_FILE } from '../core/checkpoint-layout.js';

/**
 * Checkpoint and restore of a counter holding MEM_MB resident (half random
 * bytes): ARCH against runc, same run, interleaved, medians of REPS.
 *
 * Checkpoint
 *   ARCH        checkpointContainer() total: freeze, runc checkpoint
 *               --leave-running, writable layer, sha256 of every file,
 *               fsync (ARCH_FSYNC=1, the default) or not (=0), publish, kill.
 *   raw (ctr)   `runc checkpoint --image-path` of the same counter run by the
 *               same containerd node with plain runc (processes stop).
 *               Reference rows: the same plus an fsync of its images (ARCH's
 *               durability), and the same with ARCH's CRIU network lock.
 *   raw (sa)    the same on a standalone runc container (no containerd).
 * Restore
 *   ARCH        the arch-runc `create` containerd's shim makes for the new
 *               container (front + Node + verify digests while the rootfs
 *               diff is applied + runc restore, page images verified
 *               meanwhile), timed by a wrapper around arch-runc; the
 *               shim's own durationMs (from inside Node) is reported beside it.
 *   raw         `runc restore --detach --image-path` of a standalone runc
 *               container (stdio pipes, as containerd gives); reference row:
 *               the same with ARCH's CRIU network lock.
 * The targets compare with runc as it comes (CRIU's defaults): choosing the
 * faster network lock is part of what ARCH does for its users.
 * Every restore is checked: the counter must go on from where it was (one
 * fresh start only), else the repetition fails.
 */
export const MEM_MB = 256;
const TARGET_RATIO = 1.2;

export interface ArchSample {
  rep: number;
  fsync: boolean;
  checkpointMs: number;
  result: CheckpointResult;
  restoreCallMs: number;
  restoreShimMs: number;
  restoreTimings: Record<string, number>;
  ctrRunMs: number;
  /** What signing adds: the node's keys read, the manifest signed, and on restore the keys read, signature read and verified. */
  signMs: number;
  verifyMs: number;
}

export const benchmark: Benchmark = {
  name: 'checkpoint-restore',
  title: `Checkpoint and restore of a ${MEM_MB} MiB container, ARCH vs runc`,
  order: 20,
  async run(env: BenchEnv): Promise<BenchOutcome> {
    const reps = env.reps || (env.quick ? 1 : 7);
    const bn = await startBenchNode('bench-cr', env.workDir, env.cleanup);
    const sa = benchStandaloneRunc(env, 'sa');
    // The CRIU network lock ARCH uses on this node, for raw runs with the same CRIU configuration.
    const criuLock = await criuRunEnv(bn.node.ctx.settings);
    const saSameLock = benchStandaloneRunc(env, 'sa-lock', criuLock.env);
    const scratch = path.join(env.workDir, 'raw-images');

    // Indexed by repetition, so ARCH can be paired with the raw run of the same repetition.
    const rawCtr: number[] = [];
    const rawCtrFsync: number[] = [];
    const rawCtrSameLock: number[] = [];
    const rawSaCkpt: number[] = [];
    const rawSaRestore: number[] = [];
    const rawSaRestoreSameLock: number[] = [];
    const rawSizes: number[] = [];
    const arch: ArchSample[] = [];

    const variants: Record<string, (rep: number) => Promise<void>> = {
      'raw-ctr': async (rep) => {
        const id = `raw-ctr-${rep}`;
        await bn.run(id, { arch: false, memMb: MEM_MB });
        const undo = env.cleanup.defer(`container ${id}`, () => bn.remove(id));
        await bn.ready(id);
        await syncDisks();
        const img = path.join(scratch, id);
        rawCtr[rep] = await bn.rawCheckpoint(id, img, `${img}-work`);
        // What making those images durable would add (ARCH publishes only fsynced checkpoints).
        rawCtrFsync[rep] = fsyncImages(img);
        rawSizes[rep] = duBytes(img);
        await bn.node.containerd.waitStatus(id, 'STOPPED', 15_000);
        await undo();
        fs.rmSync(img, { recursive: true, force: true });
        fs.rmSync(`${img}-work`, { recursive: true, force: true });
      },
      'raw-ctr-nft': async (rep) => {
        // The raw tool with the CRIU network lock ARCH picks on this node (for the ratio's fairness).
        const id = `raw-nft-${rep}`;
        await bn.run(id, { arch: false, memMb: MEM_MB });
        const undo = env.cleanup.defer(`container ${id}`, () => bn.remove(id));
        await bn.ready(id);
        await syncDisks();
        const img = path.join(scratch, id);
        rawCtrSameLock[rep] = await bn.rawCheckpoint(id, img, `${img}-work`, criuLock.env);
        await bn.node.containerd.waitStatus(id, 'STOPPED', 15_000);
        await undo();
        fs.rmSync(img, { recursive: true, force: true });
        fs.rmSync(`${img}-work`, { recursive: true, force: true });
      },
      'raw-standalone': (rep) =>
        rawStandalone(sa, `raw-sa-${rep}`, scratch, env.cleanup).then((r) => {
          rawSaCkpt[rep] = r.checkpointMs;
          rawSaRestore[rep] = r.restoreMs;
        }),
      'raw-standalone-nft': (rep) =>
        rawStandalone(saSameLock, `raw-sa-nft-${rep}`, scratch, env.cleanup).then((r) => {
          rawSaRestoreSameLock[rep] = r.restoreMs;
        }),
      'arch-fsync': (rep) => archCycle(bn, env, `arch-${rep}`, true).then((s) => void arch.push({ ...s, rep })),
      'arch-nofsync': (rep) =>
        archCycle(bn, env, `arch-nofsync-${rep}`, false).then((s) => void arch.push({ ...s, rep })),
    };
    const order = Object.keys(variants);
    // One warm-up round first (first CRIU runs, cold caches), recorded under index `reps` and dropped.
    for (const rep of [reps, ...Array.from({ length: reps }, (_, i) => i)]) {
      // Rotate the order so no variant always follows the same one.
      const rot = [...order.slice(rep % order.length), ...order.slice(0, rep % order.length)];
      for (const v of rot) {
        env.log(`checkpoint-restore: ${rep === reps ? 'warm-up' : `rep ${rep + 1}/${reps}`} ${v}`);
        await variants[v]!(rep);
      }
    }
    for (const xs of [rawCtr, rawCtrFsync, rawCtrSameLock, rawSaCkpt, rawSaRestore, rawSaRestoreSameLock, rawSizes])
      xs.length = reps;
    arch.splice(0, arch.length, ...arch.filter((s) => s.rep < reps));

    // ---- summary ----------------------------------------------------------
    const A1 = arch.filter((s) => s.fsync);
    const A0 = arch.filter((s) => !s.fsync);
    const med = (xs: number[]) => round(median(xs));
    const ph = (xs: ArchSample[], k: string) => med(xs.map((s) => s.result.timings[k] ?? 0));
    const ck1 = median(A1.map((s) => s.checkpointMs));
    const ck0 = median(A0.map((s) => s.checkpointMs));
    const rCtr = median(rawCtr);
    const rSa = median(rawSaCkpt);
    const rsArch = median(arch.map((s) => s.restoreCallMs));
    const rsShim = median(arch.map((s) => s.restoreShimMs));
    const rsRaw = median(rawSaRestore);
    const ctrRun = median(arch.map((s) => s.ctrRunMs));
    const rows: Row[] = [
      {
        metric: `checkpoint ${MEM_MB} MiB, ARCH_FSYNC=1 vs runc checkpoint (containerd node)`,
        unit: 'ms',
        arch: round(ck1),
        raw: round(rCtr),
        added: round(ck1 - rCtr),
        ratio: pairedRatio(A1, (s) => s.checkpointMs, rawCtr),
        n: A1.length,
        target: `≤ ${TARGET_RATIO}x`,
        pass: pairedRatio(A1, (s) => s.checkpointMs, rawCtr) <= TARGET_RATIO,
      },
      {
        metric: `checkpoint ${MEM_MB} MiB, ARCH_FSYNC=0 vs runc checkpoint (containerd node)`,
        unit: 'ms',
        arch: round(ck0),
        raw: round(rCtr),
        added: round(ck0 - rCtr),
        ratio: pairedRatio(A0, (s) => s.checkpointMs, rawCtr),
        n: A0.length,
        target: `≤ ${TARGET_RATIO}x`,
        pass: pairedRatio(A0, (s) => s.checkpointMs, rawCtr) <= TARGET_RATIO,
      },
      {
        metric: `checkpoint ${MEM_MB} MiB, ARCH_FSYNC=1 vs runc checkpoint + fsync of its images (containerd node, same durability)`,
        unit: 'ms',
        arch: round(ck1),
        raw: round(median(rawCtr.map((x, i) => x + rawCtrFsync[i]!))),
        added: round(ck1 - median(rawCtr.map((x, i) => x + rawCtrFsync[i]!))),
        ratio: pairedRatio(
          A1,
          (s) => s.checkpointMs,
          rawCtr.map((x, i) => x + rawCtrFsync[i]!),
        ),
        n: A1.length,
        note: `fsync of runc's images alone: ${round(median(rawCtrFsync))} ms`,
      },
      {
        metric: `checkpoint ${MEM_MB} MiB, ARCH_FSYNC=1 vs runc checkpoint with ARCH's CRIU network lock (${criuLock.networkLock})`,
        unit: 'ms',
        arch: round(ck1),
        raw: round(median(rawCtrSameLock)),
        added: round(ck1 - median(rawCtrSameLock)),
        ratio: pairedRatio(A1, (s) => s.checkpointMs, rawCtrSameLock),
        n: A1.length,
      },
      {
        metric: `checkpoint ${MEM_MB} MiB, ARCH_FSYNC=1 vs runc checkpoint (standalone)`,
        unit: 'ms',
        arch: round(ck1),
        raw: round(rSa),
        added: round(ck1 - rSa),
        ratio: pairedRatio(A1, (s) => s.checkpointMs, rawSaCkpt),
        n: A1.length,
      },
      {
        metric: `restore ${MEM_MB} MiB: arch-runc create + start vs runc restore -d`,
        unit: 'ms',
        arch: round(rsArch),
        raw: round(rsRaw),
        added: round(rsArch - rsRaw),
        ratio: pairedRatio(arch, (s) => s.restoreCallMs, rawSaRestore),
        n: arch.length,
        target: `≤ ${TARGET_RATIO}x`,
        pass: pairedRatio(arch, (s) => s.restoreCallMs, rawSaRestore) <= TARGET_RATIO,
        note: 'both ARCH_FSYNC settings pooled',
      },
      {
        metric: `restore ${MEM_MB} MiB: arch-runc create + start vs runc restore -d with ARCH's CRIU network lock (${criuLock.networkLock})`,
        unit: 'ms',
        arch: round(rsArch),
        raw: round(median(rawSaRestoreSameLock)),
        added: round(rsArch - median(rawSaRestoreSameLock)),
        ratio: pairedRatio(arch, (s) => s.restoreCallMs, rawSaRestoreSameLock),
        n: arch.length,
      },
      {
        metric: `signing: sign at publish + verify at restore, as a share of the ${MEM_MB} MiB restore (arch-runc create + start)`,
        unit: '%',
        arch: round((100 * median(arch.map((s) => s.signMs + s.verifyMs))) / rsArch),
        n: arch.length,
        target: '≤ 2 %',
        pass: (100 * median(arch.map((s) => s.signMs + s.verifyMs))) / rsArch <= 2,
        note: `sign ${round(median(arch.map((s) => s.signMs)))} ms, verify ${round(median(arch.map((s) => s.verifyMs)))} ms (keys read from the settings each time, as the shim does)`,
      },
      {
        metric: `restore ${MEM_MB} MiB: shim durationMs (Node loaded) vs runc restore -d`,
        unit: 'ms',
        arch: round(rsShim),
        raw: round(rsRaw),
        added: round(rsShim - rsRaw),
        ratio: pairedRatio(arch, (s) => s.restoreShimMs, rawSaRestore),
        n: arch.length,
      },
    ];

    const sizeMiB = round(median(arch.map((s) => s.result.sizeBytes)) / 2 ** 20);
    const rawMiB = round(median(rawSizes) / 2 ** 20);
    const phaseRow = (label: string, xs: ArchSample[]) => {
      const total = med(xs.map((s) => s.checkpointMs));
      const dump = ph(xs, 'dump');
      const rootfs = ph(xs, 'rootfs');
      const digest = ph(xs, 'digest');
      const fsync = ph(xs, 'fsync');
      const stop = ph(xs, 'stop');
      const publishOther = round(
        median(
          xs.map(
            (s) => (s.result.timings.publish ?? 0) - (s.result.timings.digest ?? 0) - (s.result.timings.fsync ?? 0),
          ),
        ),
      );
      const other = round(
        median(
          xs.map(
            (s) =>
              s.checkpointMs -
              ['dump', 'rootfs', 'publish', 'stop'].reduce((a, k) => a + (s.result.timings[k] ?? 0), 0),
          ),
        ),
      );
      return [label, total, dump, rootfs, digest, fsync, publishOther, stop, other, round(rCtr)];
    };
    const restoreRow = (label: string, xs: ArchSample[]) => {
      const rt = (k: string) => med(xs.map((s) => s.restoreTimings[k] ?? 0));
      // verify and rootfs run side by side; prepare is the wall time of both.
      const known = ['prepare', 'restore', 'verifyPages'];
      return [
        label,
        med(xs.map((s) => s.restoreCallMs)),
        round(median(xs.map((s) => s.restoreCallMs - s.restoreShimMs))),
        rt('verify'),
        rt('rootfs'),
        rt('prepare'),
        rt('restore'),
        rt('verifyPages'),
        round(median(xs.map((s) => s.restoreShimMs - known.reduce((a, k) => a + (s.restoreTimings[k] ?? 0), 0)))),
        round(rsRaw),
        med(xs.map((s) => s.ctrRunMs)),
      ];
    };
    const tables: Table[] = [
      {
        title: `ARCH checkpoint phases, ms (median of ${reps}; checkpoint ${sizeMiB} MiB, raw CRIU image ${rawMiB} MiB)`,
        header: [
          'variant',
          'total',
          'dump (freeze + runc checkpoint --leave-running; pages hashed and layer captured meanwhile)',
          'rootfs (left after the dump)',
          'digest (the other files)',
          'fsync (left after the dump)',
          'publish rest',
          'stop (kill)',
          'other (lock, inspect, staging)',
          'raw runc checkpoint',
        ],
        rows: [phaseRow('ARCH_FSYNC=1', A1), phaseRow('ARCH_FSYNC=0', A0)],
      },
      {
        title: `ARCH restore phases, ms (median of ${reps})`,
        header: [
          'variant',
          'arch-runc create + start (wall)',
          'front + Node start + imports',
          'verify (manifest, all but page images)',
          'rootfs diff (meanwhile)',
          'both (wall)',
          'runc restore (page images verified meanwhile)',
          'wait for page verification',
          'other',
          'raw runc restore -d',
          'ctr run -d (wall, info)',
        ],
        rows: [restoreRow('after ARCH_FSYNC=1', A1), restoreRow('after ARCH_FSYNC=0', A0)],
      },
    ];

    const bytes = median(arch.map((s) => s.result.sizeBytes));
    const mbps = (ms: number) => (ms > 0 ? round(bytes / 1e6 / (ms / 1000)) : NaN);
    const digestMs = median(arch.map((s) => s.result.timings.digest ?? 0));
    const hashTailMs = median(arch.map((s) => s.result.timings.hashTail ?? 0));
    const ckPrepareMs = median(arch.map((s) => s.result.timings.prepare ?? 0));
    const verifyMs = median(arch.map((s) => s.restoreTimings.verify ?? 0));
    const prepareMs = median(arch.map((s) => s.restoreTimings.prepare ?? 0));
    const pagesWaitMs = median(arch.map((s) => s.restoreTimings.verifyPages ?? 0));
    const fsyncMs = median(A1.map((s) => s.result.timings.fsync ?? 0));
    const dumpMs = median(arch.map((s) => s.result.timings.dump ?? 0));
    const nodeStart = median(arch.map((s) => s.restoreCallMs - s.restoreShimMs));
    const notes = [
      `Checkpoint: ARCH ${round(ck1)} ms (fsync) / ${round(ck0)} ms (no fsync) vs raw runc ${round(rCtr)} ms on the same containerd node (${round(rSa)} ms standalone): ${pairedRatio(A1, (s) => s.checkpointMs, rawCtr)}x / ${pairedRatio(A0, (s) => s.checkpointMs, rawCtr)}x (median of per-repetition ratios). Extra dump time over raw runc (freeze + --leave-running + hashing catching up, same rep): ${round(median(arch.map((s) => (s.result.timings.dump ?? 0) - rawCtr[s.rep]!)))} ms.`,
      `Where ARCH's checkpoint time goes (median): dump ${round(dumpMs)} ms (${mbps(dumpMs)} MB/s; the raw checkpoint of the same memory takes ${round(rCtr)} ms), of which hashing left when CRIU was done ${round(hashTailMs)} ms (the page images are hashed while CRIU writes them); sha256 of the other files ${round(digestMs)} ms; fsync left after the dump ${round(fsyncMs)} ms (the page images are written back during it); preparing (lock, inspect, staging) ${round(ckPrepareMs)} ms.`,
      `Restore: the arch-runc create + start take ${round(rsArch)} ms vs ${round(rsRaw)} ms for runc restore -d (${pairedRatio(arch, (s) => s.restoreCallMs, rawSaRestore)}x). Of ARCH's extra ${round(rsArch - rsRaw)} ms: front + Node start-up + module loading ${round(nodeStart)} ms, verifying the manifest and every image but the page images (${round(verifyMs)} ms) while the writable layer is written (${round(prepareMs)} ms for both); the page images are verified while CRIU restores them into stopped processes (left waiting for it afterwards: ${round(pagesWaitMs)} ms). The whole ctr run -d until RUNNING takes ${round(ctrRun)} ms.`,
      'Restores read the images from the page cache (just written); a restore on another node reading from network storage would be slower for both sides.',
    ];
    return {
      rows,
      tables,
      notes,
      details: {
        memMb: MEM_MB,
        reps,
        raw: {
          ctrCheckpointMs: rawCtr,
          standaloneCheckpointMs: rawSaCkpt,
          standaloneRestoreMs: rawSaRestore,
          imageBytes: rawSizes,
        },
        arch: arch.map((s) => ({
          fsync: s.fsync,
          checkpointMs: s.checkpointMs,
          checkpointTimings: s.result.timings,
          sizeBytes: s.result.sizeBytes,
          restoreCallMs: s.restoreCallMs,
          restoreShimMs: s.restoreShimMs,
          restoreTimings: s.restoreTimings,
          ctrRunMs: s.ctrRunMs,
        })),
      },
    };
  },
};

/** fsync every file below dir, then the directories (as ARCH's publish does); ms. */
export function fsyncImages(dir: string): number {
  const t0 = process.hrtime.bigint();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        const fd = fs.openSync(p, 'r');
        try {
          fs.fsyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
      }
    }
    const fd = fs.openSync(d, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  };
  walk(dir);
  return msSince(t0);
}

/** A counter in a standalone runc container: raw `runc checkpoint`, then raw `runc restore -d` of it. */
export async function rawStandalone(
  sa: StandaloneRunc,
  id: string,
  scratch: string,
  cleanup: BenchEnv['cleanup'],
  /** Another job than the counter holding MEM_MB. */
  job: BundleSpec = { args: ['/usr/bin/counter'], env: [`COUNTER_MEM_MB=${MEM_MB}`] },
): Promise<{ checkpointMs: number; fsyncMs: number; restoreMs: number }> {
  const bundle = await sa.bundle(id, job);
  const undo = cleanup.defer(`standalone ${id}`, () => sa.remove(id));
  await sa.run(id, bundle);
  const countFile = path.join(bundle, 'rootfs', COUNTER_FILES.count);
  const readCount = () => Number(fs.readFileSync(countFile, 'utf8').trim());
  await waitUntil(`${id} ready`, () => fs.existsSync(countFile) && readCount() >= 2);
  await syncDisks();
  const img = path.join(scratch, id);
  const checkpointMs = await sa.checkpoint(id, img, `${img}-work`);
  const fsyncMs = fsyncImages(img); // what ARCH's durability would add
  const at = readCount();
  await sa.remove(id); // the dumped container is gone already; this drops its pipes
  await syncDisks();
  const restoreMs = await sa.restore(id, bundle, img, `${img}-rwork`);
  await waitUntil(`${id} counting after restore`, () => readCount() > at + 2);
  const starts = fs
    .readFileSync(path.join(bundle, 'rootfs', COUNTER_FILES.starts), 'utf8')
    .trim()
    .split('\n').length;
  if (starts !== 1) throw new Error(`${id}: raw restore started the counter fresh (${starts} starts)`);
  await undo();
  for (const d of [img, `${img}-work`, `${img}-rwork`, bundle]) fs.rmSync(d, { recursive: true, force: true });
  return { checkpointMs, fsyncMs, restoreMs };
}

/** One ARCH cycle: run, checkpoint (timed), delete, ctr run again = restore (timed), check, delete. */
export async function archCycle(
  bn: BenchNode,
  env: BenchEnv,
  id: string,
  fsync: boolean,
  /** Looks at the published checkpoint before it is restored and removed (e.g. its size in the store), or empties a cache. */
  afterCheckpoint?: (r: CheckpointResult) => void,
  /** Other node settings for the checkpoint (e.g. another store format). */
  settings: Partial<NodeContext['settings']> = {},
  /** More for the container: environment (e.g. another place for its checkpoints), mounts, its command. */
  job: BenchJob = {},
): Promise<Omit<ArchSample, 'rep'>> {
  const node = bn.node;
  const ctx: NodeContext = { ...node.ctx, settings: { ...node.ctx.settings, ...settings, fsync } };
  await bn.run(id, { arch: true, memMb: MEM_MB, ...job });
  const undo = env.cleanup.defer(`container ${id}`, () => bn.remove(id));
  env.cleanup.defer(`checkpoints of ${id}`, () =>
    fs.rmSync(path.join(bn.storage, 'default', id), { recursive: true, force: true }),
  );
  await bn.ready(id);
  await syncDisks();
  const t0 = process.hrtime.bigint();
  const result = await checkpointContainer(ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') });
  const checkpointMs = msSince(t0);
  const { signMs, verifyMs } = await signingCost(ctx, result.dir);
  afterCheckpoint?.(result);
  await node.containerd.waitStatus(id, 'STOPPED', 15_000);
  const at = node.count(id);
  await bn.remove(id);
  await syncDisks();

  const t1 = process.hrtime.bigint();
  await bn.run(id, { arch: true, memMb: MEM_MB, ...job });
  const ctrRunMs = msSince(t1);
  await node.containerd.waitStatus(id, 'RUNNING', 15_000);
  const restored = readLogLines(node.archLog)
    .filter((l) => l.msg === 'restored from checkpoint' && l.container === id)
    .pop();
  if (!restored) {
    const why = readLogLines(node.archLog)
      .filter((l) => l.container === id && (l.level as number) >= 40)
      .map((l) => l.err ?? l.msg)
      .join('; ');
    throw new Error(`${id}: not restored from its checkpoint (${why || 'no log line'})`);
  }
  await bn.ready(id, at + 2, 20_000);
  const starts = node.readContainerFile(id, COUNTER_FILES.starts).trim().split('\n').length;
  if (starts !== 1) throw new Error(`${id}: counter started fresh after restore (${starts} starts)`);
  const creates = bn.callTimes(id, 'create');
  if (creates.length < 2) throw new Error(`${id}: arch-runc create timings missing (${creates.length})`);
  // The restored job goes on at its start (held from create until then, as runc holds a new container).
  const startCalls = bn.callTimes(id, 'start');
  if (startCalls.length < 2) throw new Error(`${id}: arch-runc start timings missing (${startCalls.length})`);
  await undo();
  fs.rmSync(path.join(bn.storage, 'default', id), { recursive: true, force: true });
  return {
    fsync,
    checkpointMs,
    result,
    restoreCallMs: creates[creates.length - 1]! + startCalls[startCalls.length - 1]!,
    restoreShimMs: Number(restored.durationMs),
    restoreTimings: (restored.timings ?? {}) as Record<string, number>,
    ctrRunMs,
    signMs,
    verifyMs,
  };
}

/**
 * The signature's share of the work, on the checkpoint just published: what
 * publish does (keys read, manifest bytes signed) and what a restore does
 * before anything else (keys read, signature read, verified). The median of
 * 5 each, in this (warm) process, as a share of the restore measured beside it.
 */
async function signingCost(ctx: NodeContext, dir: string): Promise<{ signMs: number; verifyMs: number }> {
  const bytes = fs.readFileSync(path.join(dir, MANIFEST_FILE));
  const signs: number[] = [];
  const verifies: number[] = [];
  for (let i = 0; i < 5; i++) {
    let t = process.hrtime.bigint();
    signManifest(bytes, trustOf(ctx.settings));
    signs.push(msSince(t));
    t = process.hrtime.bigint();
    verifyManifestSignature(
      fs.readFileSync(path.join(dir, MANIFEST_FILE)),
      await readSignature(dir),
      trustOf(ctx.settings),
    );
    verifies.push(msSince(t));
  }
  return { signMs: median(signs), verifyMs: median(verifies) };
}

async function waitUntil(what: string, fn: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (fn()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
