import { execa } from 'execa';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from './images.js';

/**
 * What ARCH's launchers exec, replaced by scripts: `dir/node` and
 * `dir/runc`, each given the body `script(name)`. Returns the environment
 * that points the launchers at them (no settings file, no snapshot under
 * ARCH_HOME: the arch-runc front execs ARCH_NODE_BIN), for tests that run
 * the real bin/arch-runc, bin/arch-worker or bin/arch-cli and read what
 * the scripts print.
 */
export function fakeFrontTargets(dir: string, script: (name: 'node' | 'runc') => string): Record<string, string> {
  for (const name of ['node', 'runc'] as const)
    fs.writeFileSync(path.join(dir, name), `#!/bin/sh\n${script(name)}\n`, { mode: 0o755 });
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    ARCH_CONFIG: '/dev/null',
    ARCH_RUNC: path.join(dir, 'runc'),
    ARCH_NODE_BIN: path.join(dir, 'node'),
    ARCH_HOME: path.join(dir, 'home'),
  };
}

/** ARCH's launchers that start its Node, each with arguments that take it there (a checkpoint without --criu goes to Node). */
export const NODE_LAUNCHERS: [string, string[]][] = [
  ['bin/arch-runc', ['--root', '/run/x', 'checkpoint', 'c1']],
  ['bin/arch-worker', ['--help']],
  ['bin/arch-cli', ['--help']],
];

/**
 * For a test file of what the launchers give Node: fake targets made in a
 * temporary directory before all its tests (`script` as for
 * fakeFrontTargets), removed after, and `run(file, args, extra)`: a
 * launcher of the repository run with only that environment, its output trimmed.
 */
export function launcherRuns(
  prefix: string,
  script: (name: 'node' | 'runc') => string,
): (file: string, args: string[], extra?: Record<string, string>) => Promise<string> {
  let dir: string;
  let env: Record<string, string>;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    env = fakeFrontTargets(dir, script);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  return async (file, args, extra = {}) =>
    (await execa(path.join(REPO_ROOT, file), args, { env: { ...env, ...extra }, extendEnv: false })).stdout.trim();
}
