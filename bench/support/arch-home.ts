import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { REPO_ROOT } from '../../test/support/images.js';

/**
 * A private copy of the built ARCH (dist/, bin/, package.json; node_modules
 * linked) that arch-runc runs from during the benchmarks: the Node side of
 * the shim is loaded anew by every runc call containerd makes, and a rebuild
 * of dist/ in the checkout while the benchmarks run (others work in the same
 * tree) would otherwise hand some calls half-written modules. The snapshot is
 * taken right after `npm run build`, so it is the code being measured.
 */
export interface ArchHome {
  home: string;
  /** <home>/bin/arch-runc */
  runcBin: string;
}

let current: ArchHome | undefined;

export function archHome(): ArchHome {
  if (!current) throw new Error('archHome(): no snapshot taken (bench/run.ts takes it before the benchmarks)');
  return current;
}

export async function snapshotArchHome(dir: string): Promise<ArchHome> {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  await execa('cp', [
    '-a',
    path.join(REPO_ROOT, 'dist'),
    path.join(REPO_ROOT, 'bin'),
    path.join(REPO_ROOT, 'package.json'),
    dir,
  ]);
  fs.symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  // Refuse a snapshot taken mid-build: the shim's entry must load.
  const r = await execa(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `await import(${JSON.stringify(path.join(dir, 'dist/core/checkpoint.js'))}); await import(${JSON.stringify(path.join(dir, 'dist/core/restore.js'))});`,
    ],
    { reject: false },
  );
  if (r.exitCode !== 0)
    throw new Error(
      `the dist/ snapshot does not load (a build in progress?): ${r.stderr.split('\n').slice(0, 4).join(' ')}`,
    );
  current = { home: dir, runcBin: path.join(dir, 'bin/arch-runc') };
  return current;
}

/** Commit and uncommitted changes of the checkout (what the numbers describe). */
export async function provenance(): Promise<Record<string, string>> {
  const git = async (args: string[]) => {
    const r = await execa('git', args, { cwd: REPO_ROOT, reject: false, stripFinalNewline: true });
    return r.exitCode === 0 ? r.stdout : '';
  };
  // An export (git archive) is not a checkout: say which commit it is with ARCH_BENCH_COMMIT.
  if (!(await git(['rev-parse', '--git-dir']))) {
    return {
      commit: process.env.ARCH_BENCH_COMMIT ?? 'unknown (not a git checkout)',
      uncommittedInCoreShimBin: 'n/a (export)',
    };
  }
  // Porcelain lines are "XY path": no trim before slicing, X may be a space.
  const dirty = (await git(['status', '--porcelain', '--', 'core', 'shim', 'bin']))
    .split('\n')
    .filter(Boolean)
    .map((l) => l.slice(3));
  return {
    commit: (await git(['rev-parse', '--short', 'HEAD'])).trim() || 'unknown',
    uncommittedInCoreShimBin: dirty.length ? dirty.join(' ') : 'none',
  };
}
