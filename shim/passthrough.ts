import type { StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import { criuRunEnv } from '../core/criu-network-lock.js';
import { runForeground, type Foreground } from '../core/foreground.js';
import type { OciSpec } from '../core/oci-spec.js';
import { inheritedFds, parseRuncArgs, type RuncCall } from '../core/runc-args.js';
import type { Settings } from '../core/settings.js';

/**
 * Hand a call to the real runc unchanged: same argv, same stdio (inherited
 * fds, so containerd's pipes reach runc), signals forwarded, exit code or
 * signal mirrored.
 */
export function runRealRunc(runc: string, argv: string[], env?: Record<string, string>): Promise<number> {
  return startRealRunc(runc, argv, env).exited;
}

/** runRealRunc, for a caller that watches the call while it runs (the signals it forwarded). */
export function startRealRunc(runc: string, argv: string[], env?: Record<string, string>): Foreground {
  return runForeground(runc, argv, { env, stdio: stdioFor(argv) });
}

/** The runc subcommands that run CRIU. */
const CRIU_SUBCOMMANDS = new Set(['checkpoint', 'restore']);

/**
 * A pass-through call as runc should get it on this node: checkpoint and
 * restore (of any container) run the node's CRIU (ARCH_CRIU: CRIU 4 lives off
 * PATH) with its environment (criuRunEnv: without CRIU_FAULT the dump hangs on
 * these VMs), unless the caller named a CRIU itself with --criu: then the call
 * is the caller's exactly. Everything else is unchanged.
 */
export async function withNodeCriu(
  settings: Pick<Settings, 'criu' | 'criuNetworkLock' | 'criuNoBreakpoints'>,
  call: RuncCall,
  spec: () => Promise<OciSpec | undefined>,
): Promise<{ argv: string[]; env?: Record<string, string> }> {
  if (!CRIU_SUBCOMMANDS.has(call.subcommand ?? '') || call.globals.has('--criu')) return { argv: call.argv };
  return { argv: ['--criu', settings.criu, ...call.argv], env: (await criuRunEnv(settings, await spec())).env };
}

/**
 * stdin, stdout, stderr, and every descriptor the call names (--preserve-fds,
 * --status-fd) at its own number, as an exec would have left them. Gaps are
 * left closed ('ignore' would put /dev/null there, which runc would then hand
 * to the container as if it had been given). A named descriptor this process
 * does not have is left out: runc then says so, as it would have.
 */
export function stdioFor(argv: string[]): StdioOptions {
  const fds = inheritedFds(parseRuncArgs(argv)).filter((fd) => isOpen(fd));
  if (fds.length === 0) return 'inherit';
  const stdio: (number | 'inherit' | 'ignore' | null)[] = [0, 1, 2];
  for (const fd of fds) {
    while (stdio.length < fd) stdio.push(null);
    stdio[fd] = fd;
  }
  return stdio as StdioOptions;
}

function isOpen(fd: number): boolean {
  try {
    fs.fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}
