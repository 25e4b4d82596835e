import { spawn, type StdioOptions } from 'node:child_process';
import os from 'node:os';

/**
 * A program run in this process's place, as an exec would have left it:
 * the same stdio, the signals this process gets forwarded to it, its exit
 * code (or 128 + its signal) as the result. Node cannot exec(2); this is the
 * closest equivalent. `stops` lists the stopping signals that were forwarded
 * (someone asked the program to end: not an exit of its own accord).
 */
export interface Foreground {
  exited: Promise<number>;
  stops: NodeJS.Signals[];
}

const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];
const STOPPING = new Set<NodeJS.Signals>(['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT']);

export function runForeground(
  bin: string,
  argv: string[],
  o: { env?: Record<string, string>; stdio?: StdioOptions } = {},
): Foreground {
  const stops: NodeJS.Signals[] = [];
  const exited = new Promise<number>((resolve) => {
    const child = spawn(bin, argv, {
      stdio: o.stdio ?? 'inherit',
      env: o.env ? { ...process.env, ...o.env } : process.env,
    });
    const handlers = FORWARDED.map((s) => {
      const h = () => {
        if (STOPPING.has(s)) stops.push(s);
        child.kill(s);
      };
      process.on(s, h);
      return [s, h] as const;
    });
    const done = (code: number) => {
      for (const [s, h] of handlers) process.off(s, h);
      resolve(code);
    };
    child.on('error', (err) => {
      process.stderr.write(`arch-runc: cannot run ${bin}: ${err.message}\n`);
      done(127);
    });
    child.on('exit', (code, signal) => done(code ?? 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0)));
  });
  return { exited, stops };
}
