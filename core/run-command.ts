import { spawn } from 'node:child_process';
import { currentSpawner, type LaunchEvents, type Launched } from './spawner.js';

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
  /** Stopped because timeoutMs ran out. */
  timedOut: boolean;
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
    const env = opts.env ? { ...process.env, ...opts.env } : process.env;
    let forceKill: NodeJS.Timeout | undefined;
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    // Set once launched (the abort and timeout that call stop() are set up after).
    const launched: { child?: Launched } = {};
    const stop = (signal: NodeJS.Signals) => {
      launched.child?.kill(signal);
      if (opts.forceKillAfterMs !== undefined && !forceKill) {
        forceKill = setTimeout(() => launched.child?.kill('SIGKILL'), opts.forceKillAfterMs);
        forceKill.unref();
      }
    };
    const onAbort = () => stop(opts.killSignal ?? 'SIGTERM');
    const done = () => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (timer) clearTimeout(timer);
      if (forceKill) clearTimeout(forceKill);
    };
    const command = [file, ...args].join(' ');
    const events: LaunchEvents = {
      spawn: () => opts.onSpawn?.(),
      error: (message) => {
        done();
        const r: RunResult = { stdout: '', stderr: message, all: message, exitCode: null, signal: null, timedOut };
        if (opts.reject === false) resolve(r);
        else reject(new CommandError(`Command failed: ${command}: ${message}`, r));
      },
      close: (exitCode, signal, out, err) => {
        done();
        const stdout = out.toString().replace(/\n$/, '');
        const stderr = err.toString().replace(/\n$/, '');
        const r: RunResult = {
          stdout,
          stderr,
          all: [stdout, stderr].filter(Boolean).join('\n'),
          exitCode,
          signal,
          timedOut,
        };
        if (exitCode === 0 || opts.reject === false) return resolve(r);
        const how = signal ? `was killed with ${signal}` : `failed with exit code ${exitCode}`;
        const said = [stderr, stdout].filter(Boolean).join('\n');
        reject(new CommandError(`Command ${how}: ${command}${said ? `\n\n${said}` : ''}`, r));
      },
    };
    // The worker's calls leave its thread through the spawn helper (core/spawner.ts says why).
    const spawner = opts.stdio === 'inherit' ? undefined : currentSpawner();
    launched.child = spawner
      ? spawner.launch(file, args, env, events)
      : launchHere(file, args, env, opts.stdio, events);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.timeoutMs !== undefined)
      timer = setTimeout(() => {
        timedOut = true;
        stop('SIGTERM');
      }, opts.timeoutMs);
  });
}

/** Spawned by this process itself (the spawn helper starts its programs with it too). */
export function launchHere(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  stdio: RunOptions['stdio'],
  ev: LaunchEvents,
): Launched {
  const child = spawn(file, args, { env, stdio: stdio === 'inherit' ? 'inherit' : ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let settled = false;
  child.stdout?.on('data', (b: Buffer) => out.push(b));
  child.stderr?.on('data', (b: Buffer) => err.push(b));
  child.on('spawn', () => ev.spawn(child.pid ?? 0));
  child.on('error', (e) => {
    if (settled) return;
    settled = true;
    ev.error(e.message);
  });
  child.on('close', (code, signal) => {
    if (settled) return;
    settled = true;
    ev.close(code, signal, Buffer.concat(out), Buffer.concat(err));
  });
  return { kill: (signal) => child.kill(signal) };
}
