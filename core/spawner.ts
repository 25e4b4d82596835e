import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * Starts programs for a long-lived process with a large heap (the node's
 * worker) from a small helper process (core/spawner-main.ts).
 *
 * Why: node:child_process forks the calling process before it execs the
 * program (libuv on Linux), and the fork copies the caller's page tables
 * while its thread waits. Measured on these VMs: a fresh Node's spawn of
 * /bin/true blocks its thread ~4 ms, one of 180 MB ~11 ms, 380 MB ~26 ms;
 * the worker holds ~230 MB. A migration made ~14 calls (ctr, runc) on each
 * node's worker, ~200 ms of its only JavaScript thread, during which its
 * workflow tasks, heartbeats and other activities waited (bench
 * `orchestration`, --cpu-prof of the workers). The helper loads nothing but
 * node:child_process; its forks cost its own thread, not the worker's.
 *
 * Only what collects output goes through it (core/run-command.ts, and so
 * ctr and runc calls); programs that take the caller's stdio, stream, or
 * must be the caller's own children are still spawned directly. If the
 * helper dies, calls in flight fail (saying so) and later ones are spawned
 * directly again.
 */
export type SpawnerRequest =
  | { type: 'run'; id: number; file: string; args: string[]; env: NodeJS.ProcessEnv }
  | { type: 'kill'; id: number; signal: NodeJS.Signals };

export type SpawnerReply =
  | { type: 'spawn'; id: number; pid: number }
  | {
      type: 'exit';
      id: number;
      code: number | null;
      signal: NodeJS.Signals | null;
      stdout: Uint8Array;
      stderr: Uint8Array;
    }
  | { type: 'error'; id: number; message: string };

/** What a launched program reports, once each (spawn before the other two; error or close, never both). */
export interface LaunchEvents {
  spawn(pid: number): void;
  error(message: string): void;
  close(code: number | null, signal: NodeJS.Signals | null, stdout: Buffer, stderr: Buffer): void;
}

export interface Launched {
  kill(signal: NodeJS.Signals): void;
}

const HELPER = (): string => fileURLToPath(new URL('../core/spawner-main.js', import.meta.url));

const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

export class Spawner {
  private nextId = 1;
  private readonly pending = new Map<number, LaunchEvents>();
  private exited: string | undefined;

  private constructor(private readonly helper: ChildProcess) {
    helper.on('message', (m: SpawnerReply) => this.onReply(m));
    helper.on('exit', (code, signal) => this.onExit(`the spawn helper exited (${signal ?? `code ${code}`})`));
    helper.on('error', (e) => this.onExit(`the spawn helper failed: ${e.message}`));
    helper.unref();
    this.refChannel();
  }

  /** A helper process of this Node (no flags of this one's: e.g. a profiler). */
  static start(): Spawner {
    return new Spawner(
      fork(HELPER(), [], {
        serialization: 'advanced',
        stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
        execArgv: [],
        env: process.env,
      }),
    );
  }

  /** The helper's pid (for tests). */
  get pid(): number | undefined {
    return this.helper.pid;
  }

  /** False once the helper is gone: callers spawn for themselves again. */
  get usable(): boolean {
    return this.exited === undefined;
  }

  /** Start `file` with `args` and exactly `env`; stdin empty, stdout and stderr collected. */
  launch(file: string, args: string[], env: NodeJS.ProcessEnv, events: LaunchEvents): Launched {
    const id = this.nextId++;
    if (this.exited !== undefined) {
      const why = this.exited;
      queueMicrotask(() => events.error(why));
      return { kill: () => undefined };
    }
    this.pending.set(id, events);
    this.refChannel();
    // A plain copy: process.env itself is not cloneable.
    this.send({ type: 'run', id, file, args, env: { ...env } });
    return {
      kill: (signal) => {
        if (this.pending.has(id)) this.send({ type: 'kill', id, signal });
      },
    };
  }

  /** Let the helper go (it exits when the channel closes); calls in flight fail. */
  stop(): void {
    if (this.helper.connected) this.helper.disconnect();
    this.onExit('the spawn helper was stopped');
  }

  private send(m: SpawnerRequest): void {
    try {
      this.helper.send(m);
    } catch (e) {
      this.onExit(`the spawn helper cannot be reached: ${(e as Error).message}`);
    }
  }

  private onReply(m: SpawnerReply): void {
    const ev = this.pending.get(m.id);
    if (!ev) return;
    if (m.type === 'spawn') return ev.spawn(m.pid);
    this.pending.delete(m.id);
    this.refChannel();
    if (m.type === 'error') ev.error(m.message);
    else ev.close(m.code, m.signal, asBuffer(m.stdout), asBuffer(m.stderr));
  }

  private onExit(why: string): void {
    if (this.exited !== undefined) return;
    this.exited = why;
    const lost = [...this.pending.values()];
    this.pending.clear();
    // Never from inside launch(): its caller has not finished setting up.
    queueMicrotask(() => {
      for (const ev of lost) ev.error(why);
    });
  }

  /** The channel keeps this process alive only while a call waits for its answer. */
  private refChannel(): void {
    const ch = this.helper.channel;
    if (!ch) return;
    if (this.pending.size > 0) ch.ref();
    else ch.unref();
  }
}

let installed: Spawner | undefined;

/** From now on this process's runCommand calls go through a helper (the worker does this at start). */
export function installSpawner(): Spawner {
  installed ??= Spawner.start();
  return installed;
}

/** The installed helper while it lives. */
export function currentSpawner(): Spawner | undefined {
  return installed?.usable ? installed : undefined;
}

/** Stop the installed helper (worker shutdown; tests). */
export function uninstallSpawner(): void {
  installed?.stop();
  installed = undefined;
}
