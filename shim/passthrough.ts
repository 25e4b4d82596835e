import { spawn } from 'node:child_process';

/**
 * Hand a call to the real runc unchanged: same argv, same stdio (inherited
 * fds, so containerd's pipes reach runc), signals forwarded, exit code or
 * signal mirrored. Node cannot exec(2); this is the closest equivalent.
 */
export function runRealRunc(runc: string, argv: string[], env?: Record<string, string>): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(runc, argv, { stdio: 'inherit', env: env ? { ...process.env, ...env } : process.env });
    const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
    const sigs: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];
    const handlers = sigs.map((s) => [s, forward(s)] as const);
    for (const [s, h] of handlers) process.on(s, h);
    child.on('error', (err) => {
      process.stderr.write(`arch-runc: cannot run ${runc}: ${err.message}\n`);
      resolve(127);
    });
    child.on('exit', (code, signal) => {
      for (const [s, h] of handlers) process.off(s, h);
      resolve(code ?? 128 + (signal ? signalNumber(signal) : 0));
    });
  });
}

function signalNumber(sig: NodeJS.Signals): number {
  const table: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15, SIGSEGV: 11, SIGABRT: 6 };
  return table[sig] ?? 1;
}
