import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execaSync } from 'execa';
import { REPO_ROOT, testWorkDir } from './images.js';

/**
 * The settings file (ARCH_CONFIG) a test hands to arch-runc and the other
 * ARCH programs: same KEY=VALUE syntax as /etc/arch/arch.env, but private to
 * the test, so tests never depend on (or change) the machine's config.
 */

export const PRIVATE_CRIU = '/opt/arch/criu/bin/criu';

/** The real runc on PATH (never the wrapper). */
export function realRunc(): string {
  const r = execaSync('sh', ['-c', 'command -v runc'], { reject: false });
  const p = r.stdout?.trim();
  if (!p) throw new Error('runc not found on PATH: apt-get install runc');
  return p;
}

/** CRIU >= 4.2 as installed by install.sh (Debian's newest, privately), else the system's (by absolute path, as the installer sets it). */
export function criuBinary(): string {
  if (fs.existsSync(PRIVATE_CRIU)) return PRIVATE_CRIU;
  return execaSync('sh', ['-c', 'command -v criu'], { reject: false }).stdout?.trim() || 'criu';
}

/**
 * This test run's node key (Ed25519, made on first use, removed when the
 * process exits): every node of the run signs with it and so trusts the
 * others (the "shared key" cluster setup). This process gets it too
 * (ARCH_SIGNING_KEY in its environment), so what the test itself publishes
 * or verifies uses the same key as the nodes.
 */
export function testSigningKey(): string {
  const dir = path.join(os.tmpdir(), `arch-test-keys-${process.pid}`);
  const file = path.join(dir, 'node.key');
  if (!fs.existsSync(file)) {
    removeKeysOfEndedProcesses();
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(
      `${file}.tmp`,
      crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }),
      { mode: 0o600 },
    );
    fs.renameSync(`${file}.tmp`, file);
    process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  process.env.ARCH_SIGNING_KEY = file;
  return file;
}

/**
 * The key dirs of test processes that ended without their 'exit' handler (a
 * helper killed by a signal, a run stopped with Ctrl-C): one whose process is
 * gone is removed.
 */
function removeKeysOfEndedProcesses(): void {
  for (const name of fs.readdirSync(os.tmpdir())) {
    const pid = Number(/^arch-test-keys-(\d+)$/.exec(name)?.[1]);
    if (!pid || pid === process.pid) continue;
    try {
      process.kill(pid, 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH')
        fs.rmSync(path.join(os.tmpdir(), name), { recursive: true, force: true });
    }
  }
}

testSigningKey();

/**
 * Write DIR/arch.env and return its path. Defaults: the real runc, CRIU 4,
 * no hardware breakpoints (these VMs need it), log to DIR/arch.log, ARCH_HOME
 * = this checkout. `overrides` win; a value of undefined drops the key.
 */
export function writeArchConfig(dir: string, overrides: Record<string, string | undefined> = {}): string {
  fs.mkdirSync(dir, { recursive: true });
  const vars: Record<string, string | undefined> = {
    ARCH_HOME: REPO_ROOT,
    ARCH_RUNC: realRunc(),
    ARCH_CRIU: criuBinary(),
    ARCH_CRIU_NO_BREAKPOINTS: '1',
    ARCH_LOG_FILE: path.join(dir, 'arch.log'),
    ARCH_LOG_LEVEL: 'debug',
    ARCH_SIGNING_KEY: testSigningKey(),
    // A test node is one of several "nodes" on this machine: it looks only in its own runc roots
    // (the machine's /run/containerd/runc belongs to other tests, or to nobody).
    ARCH_DISCOVER_RUNC_ROOTS: '0',
    // Tests and benchmarks keep checkpoints and shared dirs in their own temporary directories.
    ARCH_ALLOWED_ROOTS: [
      '/tmp',
      '/run/arch-test',
      '/run/arch-bench',
      '/var/lib/arch',
      testWorkDir(),
      path.join(REPO_ROOT, '.bench'),
    ].join(':'),
    ...overrides,
  };
  const lines = ['# Written by test/support/arch-env.ts for one test.'];
  for (const [k, v] of Object.entries(vars)) {
    if (v === undefined) continue;
    if (/[\n'"]/.test(v)) throw new Error(`writeArchConfig: ${k} has a quote or newline: ${JSON.stringify(v)}`);
    // Plain values stay bare; others are single-quoted so a shell can source the file too.
    lines.push(/^[A-Za-z0-9_./:=,@+%-]*$/.test(v) ? `${k}=${v}` : `${k}='${v}'`);
  }
  const file = path.join(dir, 'arch.env');
  fs.writeFileSync(file, `${lines.join('\n')}\n`);
  return file;
}

/** JSON log lines of `file` (pino output); non-JSON lines are skipped; [] if missing. */
export function readLogLines(file: string): Record<string, unknown>[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const v: unknown = JSON.parse(line);
      if (v && typeof v === 'object' && !Array.isArray(v)) out.push(v as Record<string, unknown>);
    } catch {
      // A partial last line while the writer is still going: skip it.
    }
  }
  return out;
}
