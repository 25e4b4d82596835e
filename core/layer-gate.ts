import { runCommand } from './run-command.js';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { GATE_SCRIPT } from './seal-gate.js';

/**
 * A checkpoint that leaves the job running lets CRIU freeze it (as a raw
 * `runc checkpoint --leave-running` does), so runc's and CRIU's start-up
 * happen while the job still runs. The writable layer must still be captured
 * while the tasks are stopped, so that it matches the memory: CRIU runs
 * bin/arch-criu-gate (an `action-script` in the dump's CRIU configuration)
 * at every action, and the script, finding ARCH_LAYER_GATE in its
 * environment (runc hands its environment on to CRIU, CRIU to its scripts),
 *  - at `network-lock` (tasks seized, memory not yet dumped) and at
 *    `post-dump` (all dumped, tasks still seized) creates a file named after
 *    the action in the gate dir: the capture starts at the first of them,
 *    so it runs beside CRIU's memory dump;
 *  - at `post-dump` waits for the verdict: `wake.ok` when the layer is captured
 *    (CRIU then resumes the tasks), `wake.no` or none (this process died: the
 *    FIFO `wake` reaches EOF) makes the script fail, and CRIU then resumes
 *    the tasks and fails the dump. Either way CRIU, not ARCH, thaws them.
 * `wake` is held open here for reading and writing (O_CLOEXEC: runc and
 * CRIU do not inherit it), so the script's open never waits while this
 * process lives. If it died before the script opened it, the freeze guard's
 * repair opens and closes it (poke()), which ends the script's open and read.
 */
export const LAYER_GATE_ENV = 'ARCH_LAYER_GATE';
const WAKE = 'wake';

export type GateAction = 'network-lock' | 'post-dump';

export class LayerGate {
  private fd: number | undefined;
  private said = false;
  private readonly seen = new Set<string>();
  private readonly waiters: { action: GateAction | 'any'; resolve: () => void }[] = [];
  private readonly watcher: fs.FSWatcher;

  private constructor(
    readonly dir: string,
    fd: number,
  ) {
    this.fd = fd;
    this.watcher = fs.watch(dir, (_event, name) => name && this.saw(String(name)));
    this.watcher.on('error', () => undefined);
  }

  /** The script, when this installation has it (else the caller freezes the container itself). */
  static async script(): Promise<string | undefined> {
    if (/\s/.test(GATE_SCRIPT)) return undefined; // a CRIU configuration line cannot name it
    return fsp.access(GATE_SCRIPT, fs.constants.X_OK).then(
      () => GATE_SCRIPT,
      () => undefined,
    );
  }

  /** A closed gate in a private directory of its own (root-only). */
  static async open(): Promise<LayerGate> {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'arch-layer-gate-'));
    try {
      await runCommand('mkfifo', ['-m', '600', path.join(dir, WAKE)]);
      const fd = fs.openSync(
        path.join(dir, WAKE),
        fs.constants.O_RDWR | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW,
      );
      fs.writeFileSync(path.join(dir, `${WAKE}.pid`), `${process.pid}\n`, { mode: 0o600, flag: 'wx' });
      return new LayerGate(dir, fd);
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** The environment runc (and through it CRIU and the script) gets. */
  env(): Record<string, string> {
    return { [LAYER_GATE_ENV]: this.dir };
  }

  /** Has CRIU reached `action` (any: the first action at which the tasks are stopped)? */
  reached(action: GateAction | 'any'): boolean {
    return action === 'any' ? this.seen.size > 0 : this.seen.has(action);
  }

  /** Resolves when CRIU reaches `action`; never, if it does not (the caller races it with runc's end). */
  when(action: GateAction | 'any'): Promise<void> {
    this.rescan();
    if (this.reached(action)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ action, resolve }));
  }

  /** Let CRIU go on (true) or make it fail the dump (false). Once. */
  release(pass: boolean): void {
    if (this.fd === undefined || this.said) return;
    this.said = true;
    fs.writeFileSync(path.join(this.dir, `${WAKE}.${pass ? 'ok' : 'no'}`), '', { mode: 0o600 });
    fs.writeSync(this.fd, '\n');
  }

  /** After runc is done (either way). */
  async close(): Promise<void> {
    this.watcher.close();
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    await fsp.rm(this.dir, { recursive: true, force: true });
  }

  private saw(name: string): void {
    if (name !== 'network-lock' && name !== 'post-dump') return;
    this.seen.add(name);
    for (const w of [...this.waiters])
      if (this.reached(w.action)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve();
      }
  }

  /** inotify may have missed a file made before the watch began (it cannot here, but costs one readdir). */
  private rescan(): void {
    for (const n of fs.readdirSync(this.dir)) this.saw(n);
  }
}

/**
 * For the freeze guard, once the checkpointer is dead: fail the gate and
 * end a script waiting in open or read (a writer comes and goes: EOF).
 */
export function pokeLayerGate(dir: string): void {
  try {
    fs.writeFileSync(path.join(dir, `${WAKE}.no`), '', { mode: 0o600 });
    const fd = fs.openSync(
      path.join(dir, WAKE),
      fs.constants.O_RDWR | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW,
    );
    fs.closeSync(fd);
  } catch {
    // gone with the dump: nothing waits on it
  }
}

/**
 * How long CRIU kept the tasks stopped, from its own log (dump.log of the
 * work dir; each line starts with the seconds since CRIU started): from the
 * freeze to the last task resumed. What the job felt, without asking it.
 */
export function criuStallMs(log: string): number | undefined {
  let start: number | undefined;
  let end: number | undefined;
  for (const line of log.split('\n')) {
    const m = /^\((\d+\.\d+)\)\s*(.*)$/.exec(line);
    if (!m) continue;
    const t = Number(m[1]) * 1000;
    if (start === undefined && /^freezing (cgroup|processes)|^SEIZE /i.test(m[2]!)) start = t;
    if (start !== undefined && /^Writing stats|^Dumping finished/.test(m[2]!)) {
      end = t;
      break;
    }
  }
  return start !== undefined && end !== undefined ? Math.round(end - start) : undefined;
}
