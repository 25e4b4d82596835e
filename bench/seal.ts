import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { archCycle, fsyncImages, MEM_MB, rawStandalone, type ArchSample } from './checkpoint-restore.js';
import { duBytes, startBenchNode, syncDisks } from './support/arch-bench-node.js';
import type { Benchmark, BenchEnv, BenchOutcome, Row } from './support/registry.js';
import { median, pairedRatio, round } from './support/stats.js';
import { loadSettings } from '../core/settings.js';
import { benchStandaloneRunc } from './support/standalone-runc.js';

/**
 * Encryption at rest (ARCH_STORE_KEY_FILE, core/seal.ts): a sealed
 * checkpoint and restore of the MEM_MB counter against raw runc, same run,
 * interleaved, medians of per-repetition ratios.
 *
 *   sealed      checkpointContainer() with the node's store key: CRIU dumps
 *               to a tmpfs scratch, the page images and layer archive are
 *               sealed into the store as CRIU writes them, fsync, publish,
 *               kill; then the arch-runc create containerd makes (decrypt
 *               into tmpfs, runc restore, ciphertext digests checked meanwhile).
 *   plain       the same without a key (the environment's empty
 *               ARCH_STORE_KEY_FILE wins over the settings file), for what
 *               sealing itself adds.
 *   raw         `runc checkpoint` of the same counter on the same containerd
 *               node + fsync of its images (same durability); `runc restore
 *               -d` of a standalone runc container.
 * Targets: sealed checkpoint ≤ 1.0x raw checkpoint + fsync; sealed restore
 * ≤ 1.2x raw restore.
 *
 * More sealed variants for A/B in the same run, named in SEAL_BENCH_VARIANTS
 * (comma-separated, added to the four above; reported in the log and the
 * details):
 *   direct      ARCH_SEAL_DIRECT=1: the ciphertext written and read around
 *               the page cache (core/direct-append.ts).
 *   two-threads ARCH_UNSEAL_THREADS=2: the page images decrypted on two
 *               threads on restore (the digest then a pass of its own).
 *   format2     ARCH_STORE_FORMAT=2 with the same key: encrypted chunks.
 */
const EXTRA_VARIANTS: Record<string, Record<string, string>> = {
  direct: { ARCH_SEAL_DIRECT: '1' },
  'two-threads': { ARCH_UNSEAL_THREADS: '2' },
  format2: { ARCH_STORE_FORMAT: '2' },
};
const CHECKPOINT_TARGET = 1.0;
const RESTORE_TARGET = 1.2;

export const benchmark: Benchmark = {
  name: 'seal',
  title: `Encrypted (sealed) checkpoint and restore of a ${MEM_MB} MiB container, ARCH vs runc`,
  order: 21,
  async run(env: BenchEnv): Promise<BenchOutcome> {
    const reps = env.reps || (env.quick ? 1 : 5);
    const keyFile = path.join(env.workDir, 'store.key');
    fs.writeFileSync(keyFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const bn = await startBenchNode('bench-seal', env.workDir, env.cleanup, {
      ARCH_STORE_KEY_FILE: keyFile,
      ARCH_ALLOWED_ROOTS: env.workDir,
    });
    const sa = benchStandaloneRunc(env, 'sa-seal');
    const scratch = path.join(env.workDir, 'raw-images-seal');

    const rawCkpt: number[] = [];
    const rawFsync: number[] = [];
    const rawRestore: number[] = [];
    const rawSizes: number[] = [];
    const sealed: ArchSample[] = [];
    const plain: ArchSample[] = [];
    const withoutKey = async <T>(fn: () => Promise<T>): Promise<T> => {
      const was = process.env.ARCH_STORE_KEY_FILE;
      process.env.ARCH_STORE_KEY_FILE = '';
      try {
        return await fn();
      } finally {
        if (was === undefined) delete process.env.ARCH_STORE_KEY_FILE;
        else process.env.ARCH_STORE_KEY_FILE = was;
      }
    };

    // A variant's settings: in the node's settings file for the shim (restore), in the context for the checkpoint.
    const baseConfig = fs.readFileSync(bn.node.archConfig, 'utf8');
    const withSettings = async <T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> => {
      const lines = Object.entries(vars).map(([k, v]) => `${k}=${v}\n`);
      fs.writeFileSync(bn.node.archConfig, `${baseConfig}${baseConfig.endsWith('\n') ? '' : '\n'}${lines.join('')}`);
      try {
        return await fn();
      } finally {
        fs.writeFileSync(bn.node.archConfig, baseConfig);
      }
    };
    const extraNames = (process.env.SEAL_BENCH_VARIANTS ?? '')
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean);
    for (const x of extraNames)
      if (!EXTRA_VARIANTS[x])
        throw new Error(`SEAL_BENCH_VARIANTS: unknown variant ${x} (known: ${Object.keys(EXTRA_VARIANTS).join(', ')})`);
    const extra: Record<string, ArchSample[]> = Object.fromEntries(extraNames.map((x) => [x, []]));
    const variants: Record<string, (rep: number) => Promise<void>> = {
      'raw-ctr': async (rep) => {
        const id = `seal-raw-${rep}`;
        await bn.run(id, { arch: false, memMb: MEM_MB });
        const undo = env.cleanup.defer(`container ${id}`, () => bn.remove(id));
        await bn.ready(id);
        await syncDisks();
        const img = path.join(scratch, id);
        rawCkpt[rep] = await bn.rawCheckpoint(id, img, `${img}-work`);
        rawFsync[rep] = fsyncImages(img);
        rawSizes[rep] = duBytes(img);
        await bn.node.containerd.waitStatus(id, 'STOPPED', 15_000);
        await undo();
        fs.rmSync(img, { recursive: true, force: true });
        fs.rmSync(`${img}-work`, { recursive: true, force: true });
      },
      'raw-restore': (rep) =>
        rawStandalone(sa, `seal-sa-${rep}`, scratch, env.cleanup).then((r) => void (rawRestore[rep] = r.restoreMs)),
      sealed: (rep) =>
        archCycle(bn, env, `seal-on-${rep}`, true).then((s) => {
          if (!s.result.manifest.seal) throw new Error('the sealed variant published an unsealed checkpoint');
          sealed.push({ ...s, rep });
        }),
      plain: (rep) =>
        withoutKey(() => archCycle(bn, env, `seal-off-${rep}`, true)).then((s) => {
          if (s.result.manifest.seal) throw new Error('the plain variant published a sealed checkpoint');
          plain.push({ ...s, rep });
        }),
      ...Object.fromEntries(
        extraNames.map((x) => [
          x,
          (rep: number) => {
            const vars = EXTRA_VARIANTS[x]!;
            const settings = loadSettings({ ...process.env, ARCH_CONFIG: bn.node.archConfig, ...vars });
            return withSettings(vars, () =>
              archCycle(bn, env, `seal-${x}-${rep}`, true, undefined, {
                sealDirect: settings.sealDirect,
                unsealThreads: settings.unsealThreads,
                storeFormat: settings.storeFormat,
              }),
            ).then((s) => {
              if (!s.result.manifest.seal && !s.result.manifest.chunked?.keyId)
                throw new Error(`the ${x} variant published an unencrypted checkpoint`);
              extra[x]!.push({ ...s, rep });
            });
          },
        ]),
      ),
    };
    const order = Object.keys(variants);
    for (const rep of [reps, ...Array.from({ length: reps }, (_, i) => i)]) {
      const rot = [...order.slice(rep % order.length), ...order.slice(0, rep % order.length)];
      for (const v of rot) {
        env.log(`seal: ${rep === reps ? 'warm-up' : `rep ${rep + 1}/${reps}`} ${v}`);
        await variants[v]!(rep);
      }
    }
    for (const xs of [rawCkpt, rawFsync, rawRestore, rawSizes]) xs.length = reps;
    for (const xs of [sealed, plain, ...Object.values(extra)])
      xs.splice(0, xs.length, ...xs.filter((s) => s.rep < reps));

    const rawCkptFsync = rawCkpt.map((x, i) => x + rawFsync[i]!);
    const med = (xs: number[]) => round(median(xs));
    const ph = (xs: ArchSample[], k: string) => med(xs.map((s) => s.result.timings[k] ?? 0));
    const rph = (xs: ArchSample[], k: string) => med(xs.map((s) => s.restoreTimings[k] ?? 0));
    const ckRatio = pairedRatio(sealed, (s) => s.checkpointMs, rawCkptFsync);
    const rsRatio = pairedRatio(sealed, (s) => s.restoreCallMs, rawRestore);
    const signShare =
      (100 * median(sealed.map((s) => s.signMs + s.verifyMs))) / median(sealed.map((s) => s.restoreCallMs));
    const rows: Row[] = [
      {
        metric: `sealed checkpoint ${MEM_MB} MiB vs runc checkpoint + fsync of its images (containerd node)`,
        unit: 'ms',
        arch: med(sealed.map((s) => s.checkpointMs)),
        raw: med(rawCkptFsync),
        ratio: ckRatio,
        n: sealed.length,
        target: `≤ ${CHECKPOINT_TARGET}x`,
        pass: ckRatio <= CHECKPOINT_TARGET,
      },
      {
        metric: `sealed restore ${MEM_MB} MiB: arch-runc create + start vs runc restore -d`,
        unit: 'ms',
        arch: med(sealed.map((s) => s.restoreCallMs)),
        raw: med(rawRestore),
        ratio: rsRatio,
        n: sealed.length,
        target: `≤ ${RESTORE_TARGET}x`,
        pass: rsRatio <= RESTORE_TARGET,
      },
      {
        metric: `signing: sign + verify of a sealed checkpoint's manifest, share of its restore`,
        unit: '%',
        arch: round(signShare),
        n: sealed.length,
        target: '≤ 2 %',
        pass: signShare <= 2,
      },
      {
        metric: `unsealed checkpoint ${MEM_MB} MiB vs runc checkpoint + fsync (same run, reference)`,
        unit: 'ms',
        arch: med(plain.map((s) => s.checkpointMs)),
        raw: med(rawCkptFsync),
        ratio: pairedRatio(plain, (s) => s.checkpointMs, rawCkptFsync),
        n: plain.length,
      },
      {
        metric: `unsealed restore ${MEM_MB} MiB vs runc restore -d (same run, reference)`,
        unit: 'ms',
        arch: med(plain.map((s) => s.restoreCallMs)),
        raw: med(rawRestore),
        ratio: pairedRatio(plain, (s) => s.restoreCallMs, rawRestore),
        n: plain.length,
      },
    ];
    const phases = ['prepare', 'dump', 'hashTail', 'sealTail', 'rootfsCapture', 'digest', 'fsync', 'publish', 'stop'];
    const restorePhases = [
      'verify',
      'unsealRootfs',
      'unsealImages',
      'unsealPages',
      'rootfs',
      'prepare',
      'restore',
      'verifyPages',
    ];
    // Each extra variant against raw runc, per repetition, and against the default sealed variant.
    for (const [x, xs] of Object.entries(extra)) {
      const per = (pick: (s: ArchSample) => number, raw: number[]) =>
        xs.map((s) => round(pick(s) / raw[s.rep]!)).join(', ');
      const ck = pairedRatio(xs, (s) => s.checkpointMs, rawCkptFsync);
      const rs = pairedRatio(xs, (s) => s.restoreCallMs, rawRestore);
      rows.push(
        {
          metric: `variant ${x} (${JSON.stringify(EXTRA_VARIANTS[x])}): checkpoint vs runc checkpoint + fsync`,
          unit: 'ms',
          arch: med(xs.map((s) => s.checkpointMs)),
          raw: med(rawCkptFsync),
          ratio: ck,
          n: xs.length,
        },
        {
          metric: `variant ${x}: restore vs runc restore -d`,
          unit: 'ms',
          arch: med(xs.map((s) => s.restoreCallMs)),
          raw: med(rawRestore),
          ratio: rs,
          n: xs.length,
        },
      );
      env.log(
        `seal variant ${x}: checkpoint ${ck}x (per rep ${per((s) => s.checkpointMs, rawCkptFsync)}), restore ${rs}x (per rep ${per((s) => s.restoreCallMs, rawRestore)}); phases ${JSON.stringify(Object.fromEntries(phases.map((p) => [p, ph(xs, p)])))} / ${JSON.stringify(Object.fromEntries(restorePhases.map((p) => [p, rph(xs, p)])))}`,
      );
    }
    for (const [name, xs] of [
      ['sealed', sealed],
      ['unsealed', plain],
    ] as const)
      env.log(
        `seal ${name} per rep: checkpoint ${xs.map((s) => round(s.checkpointMs / rawCkptFsync[s.rep]!)).join(', ')}; restore ${xs.map((s) => round(s.restoreCallMs / rawRestore[s.rep]!)).join(', ')}`,
      );
    // The phases in the run's log too (a --no-write run shows no tables).
    env.log(
      `seal phases: sealed checkpoint ${JSON.stringify(Object.fromEntries(phases.map((p) => [p, ph(sealed, p)])))}; unsealed ${JSON.stringify(Object.fromEntries(phases.map((p) => [p, ph(plain, p)])))}; raw runc ${med(rawCkpt)} + fsync ${med(rawFsync)}`,
    );
    env.log(
      `seal phases: sealed restore ${JSON.stringify(Object.fromEntries(restorePhases.map((p) => [p, rph(sealed, p)])))}; unsealed ${JSON.stringify(Object.fromEntries(restorePhases.map((p) => [p, rph(plain, p)])))}`,
    );
    return {
      rows,
      tables: [
        {
          title: 'Checkpoint phases (median ms)',
          header: ['variant', 'total', ...phases, 'raw runc checkpoint', 'raw fsync'],
          rows: [
            [
              'sealed',
              med(sealed.map((s) => s.checkpointMs)),
              ...phases.map((p) => ph(sealed, p)),
              med(rawCkpt),
              med(rawFsync),
            ],
            [
              'unsealed',
              med(plain.map((s) => s.checkpointMs)),
              ...phases.map((p) => ph(plain, p)),
              med(rawCkpt),
              med(rawFsync),
            ],
          ],
        },
        {
          title: 'Restore phases in the shim (median ms, cumulative from the start where marked in core/restore.ts)',
          header: ['variant', 'arch-runc create + start', 'shim durationMs', ...restorePhases, 'raw runc restore'],
          rows: [
            [
              'sealed',
              med(sealed.map((s) => s.restoreCallMs)),
              med(sealed.map((s) => s.restoreShimMs)),
              ...restorePhases.map((p) => rph(sealed, p)),
              med(rawRestore),
            ],
            [
              'unsealed',
              med(plain.map((s) => s.restoreCallMs)),
              med(plain.map((s) => s.restoreShimMs)),
              ...restorePhases.map((p) => rph(plain, p)),
              med(rawRestore),
            ],
          ],
        },
      ],
      notes: [
        `Sealed checkpoint ${ckRatio}x raw runc checkpoint + fsync (target ≤ ${CHECKPOINT_TARGET}x); sealed restore ${rsRatio}x raw runc restore (target ≤ ${RESTORE_TARGET}x). Sealing left after CRIU and the layer capture were done: ${ph(sealed, 'sealTail')} ms; decrypting before runc: ${rph(sealed, 'unsealImages')} ms (CRIU's small images) + ${rph(sealed, 'unsealRootfs')} ms (archive); the page images, decrypted while runc and CRIU start (CRIU held at its gate until they are), done ${rph(sealed, 'unsealPages')} ms after the small images were.`,
      ],
      details: {
        reps,
        extra: Object.fromEntries(
          Object.entries(extra).map(([x, xs]) => [
            x,
            xs.map((s) => ({
              rep: s.rep,
              checkpointMs: s.checkpointMs,
              timings: s.result.timings,
              restoreCallMs: s.restoreCallMs,
              restoreTimings: s.restoreTimings,
            })),
          ]),
        ),
        rawCkpt,
        rawFsync,
        rawRestore,
        rawSizes,
        sealed: sealed.map((s) => ({
          rep: s.rep,
          checkpointMs: s.checkpointMs,
          timings: s.result.timings,
          restoreCallMs: s.restoreCallMs,
          restoreShimMs: s.restoreShimMs,
          restoreTimings: s.restoreTimings,
          sizeBytes: s.result.sizeBytes,
        })),
        plain: plain.map((s) => ({
          rep: s.rep,
          checkpointMs: s.checkpointMs,
          timings: s.result.timings,
          restoreCallMs: s.restoreCallMs,
          restoreShimMs: s.restoreShimMs,
          restoreTimings: s.restoreTimings,
          sizeBytes: s.result.sizeBytes,
        })),
      },
    };
  },
};
