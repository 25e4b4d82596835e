import { spawn, type StdioOptions } from 'node:child_process';

/**
 * Run a program and collect its output: what the node's hot paths need
 * (runc, CRIU, getfattr), on node:child_process alone. execa did this
 * before, and loading it and its stream machinery cost every `arch-cli ls
 * --local` and `finalize` tens of milliseconds before the first runc call,
 * and each call more beside the fork (measured with --cpu-prof on these VMs).
 *
 * A failure reads as execa's did: "Command failed with exit code N: <command>"
 * then what the program said on stderr (and stdout), so messages that quote
 * its first line stay the same.
 */
export interface RunOptions {
  /** Added to this process's environment. */
  env?: Record<string, string>;
  /** Aborting sends killSignal; a program still there forceKillAfterMs later gets SIGKILL. */
  signal?: AbortSignal;
  killSignal?: NodeJS.Signals;
  forceKillAfterMs?: number;
  /** Killed (SIGTERM) after this long. */
  timeoutMs?: number;
  /** 'inherit': the program gets this process's stdin, stdout and stderr (nothing is collected). */
  stdio?: 'pipe' | 'inherit';
  /** false: a failed run resolves (see exitCode) instead of rejecting. */
  reject?: boolean;
  /** Called once the program runs, before it is waited for. */
  onSpawn?: () => void;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  /** stdout then stderr (not interleaved): for messages. */
  all: string;
  /** null when a signal ended it. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

export class CommandError extends Error {
  constructor(
    message: string,
    readonly result: RunResult,
  ) {
    super(message);
    this.name = 'CommandError';
  }
}

export function runCommand(file: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    opts.signal?.throwIfAborted();
    const stdio: StdioOptions = opts.stdio === 'inherit' ? 'inherit' : ['ignore', 'pipe', 'pipe'];
    const child = spawn(file, args, { env: opts.env ? { ...process.env, ...opts.env } : process.env, stdio });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    let forceKill: NodeJS.Timeout | undefined;
    const stop = (signal: NodeJS.Signals) => {
      child.kill(signal);
      if (opts.forceKillAfterMs !== undefined && !forceKill) {
        forceKill = setTimeout(() => child.kill('SIGKILL'), opts.forceKillAfterMs);
        forceKill.unref();
      }
    };
    const onAbort = () => stop(opts.killSignal ?? 'SIGTERM');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => stop('SIGTERM'), opts.timeoutMs);
    const done = () => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (timer) clearTimeout(timer);
      if (forceKill) clearTimeout(forceKill);
    };
    const command = [file, ...args].join(' ');
    child.on('error', (e) => {
      done();
      const r: RunResult = { stdout: '', stderr: e.message, all: e.message, exitCode: null, signal: null };
      if (opts.reject === false) resolve(r);
      else reject(new CommandError(`Command failed: ${command}: ${e.message}`, r));
    });
    child.on('spawn', () => opts.onSpawn?.());
    child.on('close', (exitCode, signal) => {
      done();
      const stdout = Buffer.concat(out).toString().replace(/\n$/, '');
      const stderr = Buffer.concat(err).toString().replace(/\n$/, '');
      const r: RunResult = { stdout, stderr, all: [stdout, stderr].filter(Boolean).join('\n'), exitCode, signal };
      if (exitCode === 0 || opts.reject === false) return resolve(r);
      const how = signal ? `was killed with ${signal}` : `failed with exit code ${exitCode}`;
      const said = [stderr, stdout].filter(Boolean).join('\n');
      reject(new CommandError(`Command ${how}: ${command}${said ? `\n\n${said}` : ''}`, r));
    });
  });
}
