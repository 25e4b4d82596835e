import fs from 'node:fs';
import path from 'node:path';

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
