import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { realRunc, writeArchConfig } from '../test/support/arch-env.js';
import { archHome } from './support/arch-home.js';
import { abSummary, commandSide, interleaved, type AbResult } from './support/ab.js';
import type { Benchmark, BenchEnv, BenchOutcome, Row } from './support/registry.js';
import { median, round } from './support/stats.js';
import { benchStandaloneRunc } from './support/standalone-runc.js';

/**
 * What bin/arch-runc costs on every runc call containerd makes: its front
 * (shim/arch-runc.c) against the real runc, same arguments, interleaved.
 * The pass-through calls must stay within a few ms; an ARCH create (Node
 * side, no checkpoint) is shown for scale.
 */
const TARGET_ADDED_MS = 5;

export const benchmark: Benchmark = {
  name: 'passthrough',
  title: 'arch-runc pass-through overhead per runc call',
  order: 10,
  async run(env: BenchEnv): Promise<BenchOutcome> {
    const iterations = env.iterations || (env.quick ? 30 : 200);
    const createIterations = iterations;
    const archCreateIterations = env.quick ? 5 : 30;
    const runc = realRunc();
    const cfgDir = path.join(env.workDir, 'cfg');
    const { home, runcBin: ARCH_RUNC_BIN } = archHome();
    const archConfig = writeArchConfig(cfgDir, {
      ARCH_NODE_NAME: 'bench-passthrough',
      ARCH_LOG_LEVEL: 'info',
      ARCH_HOME: home,
    });
    const sa = benchStandaloneRunc(env, 'pt');
    const root = sa.root;
    const callEnv = { ...process.env, ARCH_CONFIG: archConfig };

    // A running container for `state`, a plain bundle for `create`, an ARCH bundle for the Node path.
    const sleeper = await sa.bundle('pt-sleeper', { args: ['/bin/sleep', '3600'] });
    await sa.runQuiet('pt-sleeper', sleeper);
    const plain = await sa.bundle('pt-plain', { args: ['/bin/sleep', '3600'] });
    const archBundle = await sa.bundle('pt-arch', {
      args: ['/bin/sleep', '3600'],
      env: ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${path.join(env.workDir, 'checkpoints')}`],
    });

    const del = (id: string) => () => {
      spawnSync(runc, ['--root', root, 'delete', '--force', id], { stdio: 'ignore' });
    };
    // containerd's runc shim calls: --root R --log B/log.json --log-format json create --bundle B --pid-file B/init.pid ID
    const createArgs = (bundle: string, id: string) => [
      '--root',
      root,
      '--log',
      path.join(bundle, 'log.json'),
      '--log-format',
      'json',
      'create',
      '--bundle',
      bundle,
      '--pid-file',
      path.join(bundle, 'init.pid'),
      id,
    ];
    const pair = (args: string[], afterA?: () => void, afterB?: () => void) =>
      [
        commandSide(ARCH_RUNC_BIN, args, { env: callEnv }, afterA),
        commandSide(runc, args, { env: callEnv }, afterB),
      ] as const;

    const cases: {
      metric: string;
      n: number;
      sides: readonly [ReturnType<typeof commandSide>, ReturnType<typeof commandSide>];
      passThrough: boolean;
      note?: string;
    }[] = [
      { metric: 'runc --version', n: iterations, sides: pair(['--version']), passThrough: true },
      { metric: 'runc --root R list', n: iterations, sides: pair(['--root', root, 'list']), passThrough: true },
      {
        metric: 'runc --root R state ID (running)',
        n: iterations,
        sides: pair(['--root', root, 'state', 'pt-sleeper']),
        passThrough: true,
      },
      {
        metric: 'runc create, non-ARCH bundle (containerd argv)',
        n: createIterations,
        passThrough: true,
        sides: [
          commandSide(ARCH_RUNC_BIN, createArgs(plain, 'pt-create-a'), { env: callEnv }, del('pt-create-a')),
          commandSide(runc, createArgs(plain, 'pt-create-b'), { env: callEnv }, del('pt-create-b')),
        ],
        note: 'the front reads config.json',
      },
      {
        metric: 'runc create, ARCH bundle, no checkpoint (Node side)',
        n: archCreateIterations,
        passThrough: false,
        sides: [
          commandSide(ARCH_RUNC_BIN, createArgs(archBundle, 'pt-arch-a'), { env: callEnv }, del('pt-arch-a')),
          commandSide(runc, createArgs(archBundle, 'pt-arch-b'), { env: callEnv }, del('pt-arch-b')),
        ],
        note: 'for scale: not a pass-through',
      },
    ];

    // The front's own cost without runc's noise: the "real runc" is /bin/true.
    const trueConfig = writeArchConfig(path.join(env.workDir, 'cfg-true'), {
      ARCH_NODE_NAME: 'bench-passthrough',
      ARCH_HOME: home,
      ARCH_RUNC: '/bin/true',
    });
    const trueEnv = { ...process.env, ARCH_CONFIG: trueConfig };
    cases.push(
      {
        metric: 'front alone (real runc = /bin/true): state ID',
        n: iterations,
        passThrough: true,
        sides: [
          commandSide(ARCH_RUNC_BIN, ['--root', root, 'state', 'pt-sleeper'], { env: trueEnv }),
          commandSide('/bin/true', ['--root', root, 'state', 'pt-sleeper'], { env: trueEnv }),
        ],
        note: 'settings file read',
      },
      {
        metric: 'front alone (real runc = /bin/true): create, non-ARCH bundle',
        n: iterations,
        passThrough: true,
        sides: [
          commandSide(ARCH_RUNC_BIN, createArgs(plain, 'pt-true'), { env: trueEnv }),
          commandSide('/bin/true', createArgs(plain, 'pt-true'), { env: trueEnv }),
        ],
        note: 'settings file and config.json read',
      },
    );

    const rows: Row[] = [];
    const samples: Record<string, AbResult & { summary: ReturnType<typeof abSummary> }> = {};
    for (const c of cases) {
      env.log(`passthrough: ${c.metric} x${c.n}`);
      const r = interleaved(c.sides[0], c.sides[1], c.n, c.n >= 30 ? 10 : 2);
      const s = abSummary(r);
      samples[c.metric] = { ...r, summary: s };
      rows.push({
        metric: c.metric,
        unit: 'ms',
        arch: s.archMedianMs,
        raw: s.rawMedianMs,
        added: s.addedMedianMs,
        addedP95: s.addedP95Ms,
        ratio: round(median(r.a) / median(r.b)),
        n: s.n,
        target: c.passThrough ? `≤ ${TARGET_ADDED_MS} ms added` : undefined,
        pass: c.passThrough ? s.addedMedianMs <= TARGET_ADDED_MS : undefined,
        note: c.note,
      });
    }

    // For the explanation: what starting a shell and starting Node cost here.
    // Start-up costs, measured round-robin (each arm once per round) so load drift hits all alike.
    const roundRobin = (
      arms: Record<string, [string, string[]]>,
      n: number,
      armEnv: NodeJS.ProcessEnv = process.env,
    ): Record<string, number> => {
      const xs: Record<string, number[]> = Object.fromEntries(Object.keys(arms).map((k) => [k, []]));
      for (let i = -1; i < n; i++) {
        for (const [k, [cmd, args]] of Object.entries(arms)) {
          const t0 = process.hrtime.bigint();
          const r = spawnSync(cmd, args, { stdio: 'ignore', cwd: home, env: armEnv });
          if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ').slice(0, 200)} exited ${r.status ?? r.signal}`);
          if (i >= 0) xs[k]!.push(Number(process.hrtime.bigint() - t0) / 1e6);
        }
      }
      return Object.fromEntries(Object.entries(xs).map(([k, v]) => [k, round(median(v))]));
    };
    const imports = (specs: string[]): [string, string[]] => [
      process.execPath,
      ['--input-type=module', '-e', `for (const m of ${JSON.stringify(specs)}) await import(m);`],
    ];
    const pkgs = ['execa', 'pino', 'zod', 'tar'];
    // Node as the front starts it (no extra CA certificates, no NODE_OPTIONS); the shim's
    // Node side on a call it passes through to /bin/true: from the start-up snapshot, with the code cache, and without.
    const nodeEnv: NodeJS.ProcessEnv = { ...process.env, ARCH_CONFIG: archConfig, ARCH_RUNC: '/bin/true' };
    delete nodeEnv.NODE_EXTRA_CA_CERTS;
    delete nodeEnv.NODE_OPTIONS;
    const nodeTimes = roundRobin(
      {
        nodeEmpty: [process.execPath, ['-e', '0']],
        shimSnapshot: [
          process.execPath,
          ['--snapshot-blob', path.join(home, 'dist/shim/arch-runc.blob'), '--', 'state', 'x'],
        ],
        shimStart: [process.execPath, [path.join(home, 'dist/shim/start.cjs'), 'state', 'x']],
        shimNoCodeCache: [process.execPath, [path.join(home, 'dist/shim/arch-runc.cjs'), 'state', 'x']],
        ...Object.fromEntries(pkgs.map((p) => [p, imports([p])])),
      },
      env.quick ? 5 : 20,
      nodeEnv,
    );
    const shTimes = roundRobin({ sh: ['/bin/sh', ['-c', ':']], shSource: ['/bin/sh', ['-c', `. ${archConfig}`]] }, 50);
    const nodeEmptyMs = nodeTimes.nodeEmpty!;
    const pkgImportMs: Record<string, number> = Object.fromEntries(
      pkgs.map((p) => [p, round(nodeTimes[p]! - nodeEmptyMs)]),
    );
    const startup = {
      shTrueMs: shTimes.sh!,
      shSourceConfigMs: shTimes.shSource!,
      nodeEmptyMs,
      /** The shim's Node side start to exit on a pass-through call: from the start-up snapshot (what arch-runc runs), with V8's code cache (its fallback), and without. */
      nodeShimSnapshotMs: nodeTimes.shimSnapshot!,
      nodeShimStartMs: nodeTimes.shimStart!,
      nodeShimStartNoCodeCacheMs: nodeTimes.shimNoCodeCache!,
      /** Added by importing each package alone (ms over node -e 0). */
      pkgImportMs,
      shell: fs.realpathSync('/bin/sh'),
    };
    const worst = rows.filter((r) => r.target).reduce((m, r) => Math.max(m, r.added ?? 0), 0);
    const archCreate = rows.find((r) => r.metric.includes('Node side'));
    const frontState = rows.find((r) => r.metric.startsWith('front alone') && r.metric.endsWith('state ID'));
    const frontCreate = rows.find((r) => r.metric.startsWith('front alone') && r.metric.includes('create'));
    return {
      rows,
      details: { startup, samples },
      notes: [
        `Pass-through adds at most ${round(worst)} ms (median, worst of the pass-through calls); starting ${startup.shell} here costs ${startup.shTrueMs} ms, sourcing the settings file ${startup.shSourceConfigMs} ms, \`node -e 0\` ${startup.nodeEmptyMs} ms.`,
        frontState && frontCreate
          ? `The front alone (real runc replaced by /bin/true, so no runc noise) adds ${frontState.added} ms to a state call and ${frontCreate.added} ms to a create: the difference, ${round((frontCreate.added ?? 0) - (frontState.added ?? 0))} ms, is the \`grep\` of config.json (a fork+exec of a dynamically linked program); create's larger median in the real-runc row is runc create's own variance (p95 of the difference ${rows.find((r) => r.metric.startsWith('runc create, non-ARCH'))?.addedP95} ms).`
          : '',
        archCreate
          ? `An ARCH create without checkpoint goes through Node: +${archCreate.added} ms median over plain runc create. Starting the shim's Node side alone (a call it passes on to /bin/true) takes ${startup.nodeShimSnapshotMs} ms from its start-up snapshot, ${startup.nodeShimStartMs} ms with V8's code cache (the fallback) and ${startup.nodeShimStartNoCodeCacheMs} ms with neither (node -e 0: ${nodeEmptyMs} ms; importing alone adds execa ${pkgImportMs.execa}, pino ${pkgImportMs.pino}, zod ${pkgImportMs.zod}, tar ${pkgImportMs.tar} ms).`
          : '',
      ].filter(Boolean),
    };
  },
};
