import { runForeground, type Foreground } from './foreground.js';
import { runCommand, type RunOptions } from './run-command.js';
import { readRuncState, readRuncStates, type RuncState } from './runc-state-files.js';
import { criuEnv, type Settings } from './settings.js';

/**
 * The real runc, always called with the node's --root and ARCH's CRIU (runc
 * passes its environment on to CRIU, which is how CRIU_FAULT and
 * CRIU_CONFIG_FILE reach it: see criu-network-lock.ts).
 */
export class Runc {
  readonly binary: string;
  constructor(
    private readonly settings: Pick<Settings, 'runc' | 'criu' | 'criuNoBreakpoints'>,
    readonly root: string,
    private readonly extraGlobals: string[] = [],
  ) {
    this.binary = settings.runc;
  }

  globals(): string[] {
    return ['--root', this.root, '--criu', this.settings.criu, ...this.extraGlobals];
  }

  private run(args: string[], opts: RunOptions = {}) {
    return runCommand(this.binary, [...this.globals(), ...args], {
      ...opts,
      env: { ...criuEnv(this.settings), ...opts.env },
    });
  }

  /** What `runc state` reports, from runc's own files when they are plain (as list() does), else from runc. */
  async state(id: string): Promise<RuncState> {
    const read = await readRuncState(this.root, id);
    if (read) return read;
    const r = await this.run(['state', id]);
    return JSON.parse(String(r.stdout)) as RuncState;
  }

  /**
   * What `runc list --format json` reports, read from runc's own files when
   * they are plain (core/runc-state-files.ts: no fork of this process, no
   * runc start), from runc itself otherwise. `onStarted`: the listing runs
   * (or needs no process), so that a caller can turn to other work.
   */
  async list(o: { onStarted?: () => void } = {}): Promise<RuncState[]> {
    const read = await readRuncStates(this.root);
    if (read) {
      o.onStarted?.();
      return read;
    }
    const r = await this.run(['list', '--format', 'json'], { onSpawn: o.onStarted });
    return (JSON.parse(String(r.stdout) || 'null') as RuncState[] | null) ?? [];
  }

  /** Dump the container's processes into imagePath (CRIU images + descriptors.json). */
  async checkpoint(
    id: string,
    o: {
      imagePath: string;
      workPath: string;
      leaveRunning?: boolean;
      extra?: string[];
      signal?: AbortSignal;
      env?: Record<string, string>;
    },
  ): Promise<void> {
    const args = ['checkpoint', '--image-path', o.imagePath, '--work-path', o.workPath];
    if (o.leaveRunning) args.push('--leave-running');
    args.push(...(o.extra ?? []), id);
    // SIGTERM on cancel: runc aborts the dump and CRIU resumes the tasks.
    await this.run(args, { signal: o.signal, killSignal: 'SIGTERM', forceKillAfterMs: 30_000, env: o.env });
  }

  /**
   * Restore detached, with the bundle, pid file and console socket of the
   * create call it replaces, and the caller's stdio: containerd's pipes/FIFOs
   * are fds 0-2 of that call, and runc hands them to CRIU for the restored
   * process (it matches them with descriptors.json).
   */
  async restore(
    id: string,
    o: RestoreOptions & {
      /** Called once runc runs, before it is waited for. */
      onSpawn?: () => void;
    },
  ): Promise<void> {
    await this.run(['restore', '--detach', ...restoreArgs(id, o)], {
      stdio: 'inherit',
      env: o.env,
      onSpawn: o.onSpawn,
    });
  }

  /**
   * Restore in the foreground, as `runc run` runs: runc stays the restored
   * process's parent, relays its stdio (or terminal), forwards the signals
   * this process gets, deletes the container when it exits and exits with
   * its status. The pid file appears once the processes are restored.
   */
  restoreForeground(id: string, o: RestoreOptions): Foreground {
    return runForeground(this.binary, [...this.globals(), 'restore', ...restoreArgs(id, o)], {
      env: { ...criuEnv(this.settings), ...o.env },
    });
  }

  async pause(id: string): Promise<void> {
    await this.run(['pause', id]);
  }

  async resume(id: string): Promise<void> {
    await this.run(['resume', id]);
  }

  async kill(id: string, signal: string, all = false): Promise<void> {
    await this.run(['kill', ...(all ? ['--all'] : []), id, signal]);
  }

  async delete(id: string, force = false): Promise<void> {
    await this.run(['delete', ...(force ? ['--force'] : []), id]);
  }

  async version(): Promise<string> {
    const r = await runCommand(this.binary, ['--version']);
    return /runc version (\S+)/.exec(String(r.stdout))?.[1] ?? 'unknown';
  }
}

export interface RestoreOptions {
  bundle: string;
  imagePath: string;
  workPath: string;
  pidFile?: string;
  consoleSocket?: string;
  extra?: string[];
  env?: Record<string, string>;
}

function restoreArgs(id: string, o: RestoreOptions): string[] {
  const args = ['--bundle', o.bundle, '--image-path', o.imagePath, '--work-path', o.workPath];
  if (o.pidFile) args.push('--pid-file', o.pidFile);
  if (o.consoleSocket) args.push('--console-socket', o.consoleSocket);
  return [...args, ...(o.extra ?? []), id];
}

export async function criuVersion(criu: string): Promise<string> {
  const r = await runCommand(criu, ['--version']);
  return /Version: (\S+)/.exec(String(r.stdout))?.[1] ?? 'unknown';
}
