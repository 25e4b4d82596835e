/**
 * Bundle arch-cli into CommonJS files that bin/arch-cli runs through
 * cli/start.cts with V8's code cache (part of `npm run build`), then write
 * their caches with runs of the local commands.
 *
 * Why bundles: loaded module by module from dist/, `arch-cli --help` took
 * ~0.9 s on these VMs and `finalize` spent more time starting than
 * checkpointing. Why several: every start reads its bundle and its cache
 * whole (fresh memory costs ~3 ms/MiB here) and V8 deserializes all of the
 * cache; with one 1 MB bundle `--help` and `ls --local` paid for finalize's
 * checkpoint path, execa, tar, zod and pino. So:
 *  - arch-cli.cjs, the front: main, the declaration of every command
 *    (commander) and what they import statically, ~130 KB. `--help` and
 *    every usage error run on it alone.
 *  - arch-cli-NAME.cjs, loaded by an `import()` of the front (or of its
 *    parent bundle, SPLITS below) when a command's action runs: finalize
 *    (and its checkpoint path, loaded while `runc list` runs), ls --local,
 *    doctor, and temporal (every command that talks to Temporal).
 * A module is in one bundle of a process: a bundle that imports a module of
 * the front (or of a bundle above it) gets the front's instance, through a
 * registry of thunks (`globalThis[Symbol.for('arch-cli.modules')]`), so
 * classes stay one (instanceof in cli/main.ts) and so does module state.
 * Two sibling bundles may each hold a copy of a module: a process runs one
 * command, which loads one family.
 *
 * The Temporal SDK stays outside every bundle (and is loaded only by the
 * commands that talk to Temporal): it is most of that load time, it carries
 * native code (the worker of `arch-cli dev`), and bundling it would make
 * every start read it.
 *
 * A module that finds files beside itself (import.meta.url: the freeze
 * guard's child, the workflow bundle of `dev`) gets its own file's URL,
 * computed from where the bundle is at run time, so a moved checkout works.
 */
import { build, type BuildOptions, type Plugin } from 'esbuild';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire, isBuiltin } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT_DIR = path.join(DIST, 'cli');
const ENTRY = path.join(DIST, 'cli/main.js');
const FRONT = 'arch-cli.cjs';
const REGISTRY = `globalThis[Symbol.for('arch-cli.modules')]`;

/** A bundle loaded by an import() of its parent: the modules (relative to dist/) it is loaded for. */
interface Split {
  name: string;
  modules: string[];
  children?: Split[];
  /** Splits (planned before it) whose modules it takes rather than hold copies: loaded first when not yet. */
  uses?: string[];
}

/**
 * The front's import() of a module not in it loads the bundle named here,
 * `temporal` when none is; a lazy bundle's own import() of a module of a
 * child split loads that child. Any other import() stays inside its bundle.
 */
const SPLITS: Split[] = [
  // Started first by ls --local and finalize, which load the rest while runc runs (core/runc-listing.ts).
  { name: 'runc-listing', modules: ['core/runc-listing.js', 'core/runc-roots.js'] },
  {
    name: 'finalize',
    modules: ['core/context.js', 'core/finalize.js'],
    uses: ['runc-listing'],
    // Read and compiled while `runc list` runs (core/finalize.ts loadCheckpointPath): ~2/3 of finalize's code.
    children: [{ name: 'checkpoint', modules: ['core/checkpoint.js'] }],
  },
  { name: 'ls-local', modules: ['core/log.js', 'core/node-containers.js'], uses: ['runc-listing'] },
  { name: 'doctor', modules: ['core/doctor.js', 'temporal/payload-check.js'] },
];
const DEFAULT_SPLIT = 'temporal';

const bundleFile = (name: string) => (name === 'front' ? FRONT : `arch-cli-${name}.cjs`);

/** Registry key of a module: its path below dist/, or below node_modules/ for a package's file. */
function keyOf(file: string): string {
  const abs = path.resolve(file);
  const nm = abs.lastIndexOf(`${path.sep}node_modules${path.sep}`);
  if (nm >= 0) return `node_modules/${abs.slice(nm + '/node_modules/'.length)}`;
  return path.relative(DIST, abs);
}

const importMetaUrl: Plugin = {
  name: 'import-meta-url',
  setup(b) {
    b.onLoad({ filter: /\.js$/ }, (args) => {
      if (!args.path.startsWith(`${DIST}${path.sep}`)) return undefined;
      const source = fs.readFileSync(args.path, 'utf8');
      if (!source.includes('import.meta.url')) return undefined;
      const rel = JSON.stringify(path.relative(OUT_DIR, args.path));
      const url = `require('node:url').pathToFileURL(require('node:path').join(__dirname, ${rel})).href`;
      return { contents: source.replaceAll('import.meta.url', url), loader: 'js' };
    });
  },
};

/**
 * Modules that cost a start more than they are used (Node compiles a
 * built-in on its first require; times on these VMs): worker_threads (~4 ms;
 * loaded at require time by pino's thread-stream and core/digest.ts, used
 * when a checkpoint hashes) is the shim's lazy stand-in in every bundle.
 * LAZY of a bundle are stand-ins made here, loading the real module (a Node
 * built-in, or a package bundled as usual) on the first use of any of its
 * exports:
 *  - child_process (~4 ms with the stream and net modules it loads) in the
 *    front, for commander's executable subcommands, which arch-cli has none
 *    of, and in the listing's, which reads runc's files rather than run it
 *    (core/runc-state-files.ts) unless they puzzle it;
 *  - zod (its module body ~3 ms) wherever it is: only a manifest read
 *    (core/manifest.ts builds its schemas then) uses it, which finalize's
 *    checkpoint does not;
 *  - in ls --local's, node:crypto (~4 ms) and assert (~2 ms, for pino's
 *    sonic-boom), imported by the store and manifest signatures, and pino
 *    (~90 KB of modules), whose logger `ls` creates on its first line
 *    (core/log.ts createLazyLogger): a listing of containers without
 *    checkpoints and warnings needs none of them. Not in finalize's: it
 *    uses them all, and loaded at its start they load while runc lists.
 */
const WORKER_THREADS_LAZY = path.join(DIST, 'shim/worker-threads-lazy.js');
const LAZY: Record<string, string[]> = {
  front: ['child_process'],
  'runc-listing': ['child_process'],
  finalize: ['zod'],
  checkpoint: ['zod'],
  'ls-local': ['crypto', 'assert', 'pino', 'zod'],
  doctor: ['zod'],
  temporal: ['zod'],
};

/** A stand-in for a module that loads it on the first use of any of its exports (a function: of itself too). */
function lazyModuleSource(name: string): string {
  const real = createRequire(import.meta.url)(name) as object;
  const keys = Object.keys(real).filter((k) => !['length', 'name', 'prototype', '__esModule'].includes(k));
  return [
    `let m; const real = () => (m ??= require(${JSON.stringify(isBuiltin(name) ? `node:${name}` : name)}));`,
    typeof real === 'function'
      ? `module.exports = function (...a) { return new.target ? Reflect.construct(real(), a, new.target) : real().apply(this, a); };`
      : '',
    `for (const k of ${JSON.stringify(keys)}) Object.defineProperty(module.exports, k, { get: () => real()[k], enumerable: true });`,
  ].join('\n');
}

/** What one bundle is, as its build sees it. */
interface Plan {
  name: string;
  parent?: Plan;
  /** The modules of the bundles above it and of those it uses (their instances are used), by key: which bundle holds each. */
  above: Map<string, Plan>;
  /** import() targets (keys) that load a child bundle, and which. */
  childOf: Map<string, string>;
  /** Every other import() of a module outside `above` loads this bundle (the front only). */
  defaultChild?: string;
  /** What its entry requires: main for the front, the split's modules otherwise. */
  roots: string[];
  /** Keys it registers for the bundles below it. */
  exported: Set<string>;
  /** Found by its build: its modules, what it takes from above, and its import()s routed to a child. */
  modules: Set<string>;
  used: Set<string>;
  routed: Map<string, string>;
}

/**
 * Routes imports: a module of a bundle above becomes a thunk call into the
 * registry, an import() of a child split's module loads that bundle first.
 */
function splitter(plan: Plan, closureOnly: boolean): Plugin {
  return {
    name: 'arch-cli-split',
    setup(b) {
      b.onResolve({ filter: /^arch-cli:load$/ }, () => ({ path: 'load', namespace: 'arch-cli' }));
      b.onResolve({ filter: /^(node:)?worker_threads$/ }, (a) =>
        a.importer === WORKER_THREADS_LAZY ? undefined : { path: WORKER_THREADS_LAZY },
      );
      const lazy = LAZY[plan.name] ?? [];
      b.onResolve({ filter: /^(node:)?[a-z_]+$/ }, (a) => {
        const name = a.path.replace(/^node:/, '');
        return lazy.includes(name) && a.namespace !== 'arch-cli-lazy'
          ? { path: name, namespace: 'arch-cli-lazy' }
          : undefined;
      });
      b.onLoad({ filter: /.*/, namespace: 'arch-cli-lazy' }, (a) => ({
        contents: lazyModuleSource(a.path),
        loader: 'js',
        resolveDir: DIST,
      }));
      // Node's require at run time, from the bundle's directory: dist/shim/start.cjs is not bundled.
      b.onResolve({ filter: /^\.\.\/shim\/start\.cjs$/ }, (a) =>
        a.namespace === 'arch-cli' ? { path: a.path, external: true } : undefined,
      );
      b.onResolve({ filter: /.*/ }, async (a) => {
        if (a.namespace === 'arch-cli' || a.pluginData === 'inner' || a.kind === 'entry-point') return undefined;
        const r = await b.resolve(a.path, {
          kind: a.kind,
          importer: a.importer,
          resolveDir: a.resolveDir,
          pluginData: 'inner',
        });
        if (r.errors.length || r.external || !path.isAbsolute(r.path)) return undefined;
        const key = keyOf(r.path);
        const holder = plan.above.get(key);
        if (holder) {
          plan.used.add(key);
          // A .cjs path whatever the module's own (an .mjs stub would be taken for an ES module).
          return { path: `${key}.cjs`, namespace: 'arch-cli-above', pluginData: { key, holder: holder.name } };
        }
        if (a.kind !== 'dynamic-import' || !r.path.startsWith(`${DIST}${path.sep}`)) return undefined;
        // Its static closure first: an import() of a module it holds anyway stays inside.
        if (closureOnly) return { path: r.path, external: true };
        if (plan.modules.has(key)) return undefined;
        const child = plan.childOf.get(key) ?? plan.defaultChild;
        if (!child) return undefined;
        plan.routed.set(key, child);
        return { path: `${key}.cjs`, namespace: 'arch-cli-split', pluginData: { child, key } };
      });
      b.onLoad({ filter: /.*/, namespace: 'arch-cli-above' }, (a) => {
        const { key, holder } = a.pluginData as { key: string; holder: string };
        // The front is loaded (it runs this); a bundle used rather than above may not be yet.
        const contents =
          holder === 'front'
            ? `module.exports = ${REGISTRY}[${JSON.stringify(key)}]();`
            : `module.exports = require('arch-cli:load')(${JSON.stringify(bundleFile(holder))}, ${JSON.stringify(key)});`;
        return { contents, loader: 'js' };
      });
      b.onLoad({ filter: /.*/, namespace: 'arch-cli-split' }, (a) => {
        const { child, key } = a.pluginData as { child: string; key: string };
        return {
          contents: `module.exports = require('arch-cli:load')(${JSON.stringify(bundleFile(child))}, ${JSON.stringify(key)});`,
          loader: 'js',
        };
      });
      // Loads a bundle the first time one of its modules is asked for (its entry registers them).
      b.onLoad({ filter: /.*/, namespace: 'arch-cli' }, () => ({
        contents: `module.exports = (file, key) => {
  if (!${REGISTRY}[key]) require('../shim/start.cjs').runBundle(require('node:path').join(__dirname, file));
  return ${REGISTRY}[key]();
};`,
        loader: 'js',
        resolveDir: OUT_DIR,
      }));
    },
  };
}

/** The entry of a bundle: register the thunks asked for below (and a lazy bundle's roots), then run main (front). */
function entrySource(plan: Plan): string {
  const req = (key: string) => `require(${JSON.stringify(FILES.get(key) ?? path.join(DIST, key))})`;
  const lines = [`const r = (${REGISTRY} ??= {});`];
  for (const key of new Set([...plan.exported, ...(plan.parent ? plan.roots : [])]))
    lines.push(`r[${JSON.stringify(key)}] = () => ${req(key)};`);
  if (!plan.parent) lines.push(`${req(plan.roots[0]!)};`);
  return lines.join('\n');
}

const COMMON: BuildOptions = {
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['@temporalio/*'],
  // import() of a package left outside becomes require(): vm.Script (the code cache) has no import().
  supported: { 'dynamic-import': false },
  // Names stay (stack traces, class names in messages); comments and blanks go:
  // every start reads, checks and compiles the whole file.
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
  metafile: true,
};

/** Every module's file, by key. */
const FILES = new Map<string, string>();

/**
 * Build one bundle: its static closure (`closure`: every import() of a file
 * of dist/ left out), then what it takes from above and routes to a child
 * (`plan`), then the file (`write`, with what it registers known).
 */
async function buildOne(plan: Plan, step: 'closure' | 'plan' | 'write'): Promise<void> {
  plan.used.clear();
  plan.routed.clear();
  const r = await build({
    ...COMMON,
    stdin: { contents: entrySource(plan), resolveDir: OUT_DIR, sourcefile: `${plan.name}-entry.js`, loader: 'js' },
    outfile: path.join(OUT_DIR, bundleFile(plan.name)),
    write: step === 'write',
    plugins: [splitter(plan, step === 'closure'), importMetaUrl],
  });
  const modules = new Set<string>();
  for (const f of Object.keys(r.metafile!.inputs)) {
    if (f.includes(':') || f === '<stdin>') continue;
    modules.add(keyOf(f));
    FILES.set(keyOf(f), path.resolve(f));
  }
  if (step === 'closure') plan.modules = modules;
  else if (modules.size !== plan.modules.size || [...modules].some((m) => !plan.modules.has(m)))
    throw new Error(`${plan.name}: the bundle holds other modules than its static closure`);
}

function newPlan(name: string, roots: string[], parent?: Plan, children: Split[] = [], uses: Plan[] = []): Plan {
  const above = new Map<string, Plan>();
  for (const p of [...(parent ? [parent] : []), ...uses]) {
    for (const [k, holder] of p.above) above.set(k, holder);
    for (const k of p.modules) above.set(k, p);
  }
  return {
    name,
    parent,
    above,
    childOf: new Map(children.flatMap((c) => c.modules.map((m) => [m, c.name] as const))),
    roots,
    exported: new Set(),
    modules: new Set(),
    used: new Set(),
    routed: new Map(),
  };
}

async function main(): Promise<void> {
  for (const f of fs.readdirSync(OUT_DIR))
    if (/^arch-cli(-[\w-]+)?\.cjs(\.v8cache)?$/.test(f)) fs.rmSync(path.join(OUT_DIR, f));
  // Plan, parents first: what each bundle holds, takes from above, and sends to its children.
  const front = newPlan('front', [keyOf(ENTRY)], undefined, SPLITS);
  front.defaultChild = DEFAULT_SPLIT;
  await buildOne(front, 'closure');
  await buildOne(front, 'plan');
  const plans: Plan[] = [front];
  const plan = async (split: Split, parent: Plan, roots = split.modules): Promise<void> => {
    const uses = (split.uses ?? []).map((u) => {
      const used = plans.find((q) => q.name === u);
      if (!used) throw new Error(`${split.name} uses ${u}, which is not planned before it`);
      return used;
    });
    const p = newPlan(split.name, roots, parent, split.children, uses);
    await buildOne(p, 'closure');
    await buildOne(p, 'plan');
    plans.push(p);
    for (const c of split.children ?? []) await plan(c, p);
  };
  for (const s of SPLITS) await plan(s, front);
  const rest = [...front.routed].filter(([, child]) => child === DEFAULT_SPLIT).map(([key]) => key);
  await plan({ name: DEFAULT_SPLIT, modules: rest }, front);
  // What a bundle takes from above is registered by the one that holds it.
  for (const p of plans) for (const key of p.used) p.above.get(key)!.exported.add(key);
  for (const p of plans) await buildOne(p, 'write');
  warmUp();
}

/**
 * The caches hold what a run compiled: each written by a run of a local
 * command that finds nothing (every bundle loaded writes its cache at exit
 * when it has none). The front's is written by `ls --local`'s run. The
 * bundles no such run loads (doctor's probes and the Temporal commands take
 * seconds) get the cache of their compilation alone.
 */
function warmUp(): void {
  const env = {
    ...process.env,
    ARCH_CONFIG: '/dev/null',
    ARCH_RUNC_ROOT: '/nonexistent/arch-cli-warm-up',
    ARCH_LOG_FILE: '',
  };
  const run = (...args: string[]) =>
    execFileSync(process.execPath, [path.join(OUT_DIR, 'start.cjs'), ...args], { env, stdio: 'ignore' });
  run('finalize', '--json');
  fs.rmSync(path.join(OUT_DIR, `${FRONT}.v8cache`), { force: true });
  run('ls', '--local', '--json');
  const { cacheBundle } = createRequire(import.meta.url)(path.join(DIST, 'shim/start.cjs')) as {
    cacheBundle(bundle: string): void;
  };
  for (const f of fs.readdirSync(OUT_DIR))
    if (/^arch-cli(-[\w-]+)?\.cjs$/.test(f) && !fs.existsSync(path.join(OUT_DIR, `${f}.v8cache`)))
      cacheBundle(path.join(OUT_DIR, f));
}

main().catch((err: unknown) => {
  process.stderr.write(`bundle-cli: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
