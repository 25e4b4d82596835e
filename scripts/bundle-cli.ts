/**
 * Bundle arch-cli into one CommonJS file, dist/cli/arch-cli.cjs, which
 * bin/arch-cli runs through cli/start.cts with V8's code cache (part of
 * `npm run build`). Then write that cache with one run of a local command.
 *
 * Why: loaded module by module from dist/, `arch-cli --help` took ~0.9 s on
 * these VMs and `finalize` spent more time starting than checkpointing.
 * The Temporal SDK stays outside the bundle (and is loaded only by the
 * commands that talk to Temporal): it is most of that load time, it carries
 * native code (the worker of `arch-cli dev`), and bundling it would make
 * every start read it.
 *
 * A module that finds files beside itself (import.meta.url: the freeze
 * guard's child, the workflow bundle of `dev`) gets its own file's URL,
 * computed from where the bundle is at run time, so a moved checkout works.
 */
import { build, type Plugin } from 'esbuild';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ENTRY = path.join(DIST, 'cli/main.js');
const BUNDLE = path.join(DIST, 'cli/arch-cli.cjs');

const importMetaUrl: Plugin = {
  name: 'import-meta-url',
  setup(b) {
    b.onLoad({ filter: /\.js$/ }, (args) => {
      if (!args.path.startsWith(`${DIST}${path.sep}`)) return undefined;
      const source = fs.readFileSync(args.path, 'utf8');
      if (!source.includes('import.meta.url')) return undefined;
      const rel = JSON.stringify(path.relative(path.dirname(BUNDLE), args.path));
      const url = `require('node:url').pathToFileURL(require('node:path').join(__dirname, ${rel})).href`;
      return { contents: source.replaceAll('import.meta.url', url), loader: 'js' };
    });
  },
};

async function main(): Promise<void> {
  fs.rmSync(`${BUNDLE}.v8cache`, { force: true });
  await build({
    entryPoints: [ENTRY],
    outfile: BUNDLE,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    external: ['@temporalio/*'],
    // import() of a package left outside becomes require(): vm.Script (the code cache) has no import().
    supported: { 'dynamic-import': false },
    plugins: [importMetaUrl],
    // Names stay (stack traces, class names in messages); comments and blanks go:
    // every start reads, checks and compiles the whole file (1.3 MB as written, 0.9 MB so).
    minifyWhitespace: true,
    minifySyntax: true,
    logLevel: 'warning',
  });
  // The cache holds what this run compiled: a local command that loads what `finalize` loads and finds nothing.
  execFileSync(process.execPath, [path.join(DIST, 'cli/start.cjs'), 'finalize', '--json'], {
    env: {
      ...process.env,
      ARCH_CONFIG: '/dev/null',
      ARCH_RUNC_ROOT: '/nonexistent/arch-cli-warm-up',
      ARCH_LOG_FILE: '',
    },
    stdio: 'ignore',
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`bundle-cli: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
