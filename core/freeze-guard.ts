import { spawn, type ChildProcess } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { CgroupFreezer } from './cgroup-freezer.js';
import { errorMessage } from '../contract/errors.js';
import type { Logger } from './log.js';
import { isAlive } from './pid.js';
import { pokeLayerGate } from './layer-gate.js';
import { Runc } from './runc.js';
import type { Settings } from './settings.js';
import { CHECKPOINT_LOCK_FILE, readShimState } from './shim-state.js';

/**
 * A container frozen for a checkpoint must not stay frozen because the
 * process that froze it died (kill -9, OOM killer, Ctrl-C of arch-cli).
 *
 * Before freezing, the checkpointer starts a watcher: a detached `sh` whose
 * stdin is a socket only the checkpointer holds (libuv opens it close-on-exec,
 * so runc and CRIU do not inherit it). It blocks in `read`. Disarming writes
 * "disarm" and the shell exits; any other end of the socket is the kernel
 * closing it for a dead checkpointer, and only then does the shell exec Node
 * with freeze-guard-main.js to repair the container. Arming costs one
 * fork/exec of sh before the freeze, nothing while frozen, and no polling
 * on the normal path; there is no window where the checkpointer can die
 * unseen, since the socket exists before the freeze starts.
 *
 * The repair (recoverAfterDeath) undoes the freeze, or finishes the stop the
 * checkpointer had committed to, and watches until CRIU is done: an orphaned
 * `runc checkpoint` goes on dumping and CRIU puts the freezer back to FROZEN
 * at its end (it restores the state it found).
 */
export interface FreezeGuardPlan {
  /** The checkpointer, whose death the guard waits for. */
  pid: number;
  id: string;
  /** runc's state root of the container: the checkpoint lock and the shim state live there. */
  runcRoot: string;
  /** Frozen through its cgroup; without it, through `runc pause` (layout unknown). */
  cgroup?: { version: 1 | 2; dir: string };
  runc: Pick<Settings, 'runc' | 'criu' | 'criuNoBreakpoints'>;
  /** CRIU's image dir of this checkpoint: a process naming it is a dump still running. */
  imageDir?: string;
  /**
   * The layer gate of a dump CRIU freezes itself (core/layer-gate.ts): the
   * script holding the stopped tasks at post-dump is released (failed), so
   * CRIU resumes them.
   */
  layerGate?: string;
  log: Pick<Settings, 'logFile' | 'logLevel' | 'nodeName'>;
}

/** Exits at once on "disarm"; on EOF (the checkpointer is gone) becomes the repair. */
const WATCH_SCRIPT = 'IFS= read -r m; [ "$m" = disarm ] && exit 0; exec "$0" "$@"';

export class FreezeGuard {
  private constructor(private readonly watcher: ChildProcess | undefined) {}

  /** True when a watcher runs (a guard that could not start only logs why). */
  get armed(): boolean {
    return !!this.watcher?.stdin && !this.watcher.stdin.destroyed;
  }

  /** Start the watcher. Synchronous: when it returns, the checkpointer's death is seen. */
  static arm(plan: FreezeGuardPlan, log: Logger): FreezeGuard {
    let watcher: ChildProcess;
    try {
      // '../core/': dist/core from this module and from the shim's bundle in dist/shim alike (core/digest.ts's worker too).
      const main = fileURLToPath(new URL('../core/freeze-guard-main.js', import.meta.url));
      watcher = spawn('/bin/sh', ['-c', WATCH_SCRIPT, process.execPath, main, JSON.stringify(plan)], {
        // Its own session: a Ctrl-C or hangup that kills the checkpointer's process group spares it.
        detached: true,
        stdio: ['pipe', 'ignore', plan.log.logFile ? 'ignore' : 'inherit'],
      });
    } catch (err) {
      log.warn(
        { phase: 'freeze-guard', err: errorMessage(err) },
        'could not start the freeze guard: a killed checkpoint would leave the container frozen',
      );
      return new FreezeGuard(undefined);
    }
    watcher.on('error', (err) => log.warn({ phase: 'freeze-guard', err: errorMessage(err) }, 'freeze guard failed'));
    watcher.stdin!.on('error', () => undefined); // EPIPE if it died: nothing left to tell it
    watcher.unref(); // never keeps the checkpointer alive
    return new FreezeGuard(watcher);
  }

  /** The container is thawed, stopped or left as the user had it: the watcher exits, doing nothing. */
  disarm(): void {
    if (this.armed) this.watcher!.stdin!.end('disarm\n');
  }

  /**
   * Leave the container to the watcher now, as if this process had died: for
   * when thawing it here failed (the watcher retries and watches CRIU).
   */
  handOver(): void {
    if (this.armed) this.watcher!.stdin!.destroy();
  }
}

/** How a frozen container is looked at, thawed and stopped. */
interface Target {
  freezeRequested(): Promise<boolean>;
  thaw(): Promise<void>;
  killAndThaw(): Promise<void>;
}

function targetOf(plan: FreezeGuardPlan): Target {
  if (plan.cgroup) {
    const f = CgroupFreezer.at(plan.cgroup.version, plan.cgroup.dir);
    return {
      // A cgroup gone with its container is not frozen.
      freezeRequested: () =>
        f
          .freezeRequested()
          .catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? false : Promise.reject(err))),
      thaw: () => f.thaw(),
      killAndThaw: () => f.killAndThaw(),
    };
  }
  const runc = new Runc(plan.runc, plan.runcRoot);
  return {
    freezeRequested: async () => {
      const status = await runc.state(plan.id).then(
        (s) => s.status,
        () => 'gone',
      );
      return status === 'paused' || status === 'pausing';
    },
    thaw: () => runc.resume(plan.id),
    killAndThaw: async () => {
      await runc.kill(plan.id, 'KILL', true);
      await runc.resume(plan.id).catch(() => undefined);
    },
  };
}

export type Recovery = 'thawed' | 'killed' | 'untouched' | 'deferred';

/** How often the repair looks again while an orphaned dump runs. */
const POLL_MS = 100;
/** A dump never takes this long; the watcher must not outlive its purpose either. */
const MAX_WATCH_MS = 15 * 60_000;

/**
 * The checkpointer `plan.pid` is gone and never disarmed its guard. Leave
 * the container as the checkpoint would have if it had ended there:
 * - the stop was committed (the checkpoint is published and the shim state
 *   says "checkpointed", so delete keeps it): finish it, kill then thaw;
 * - otherwise thaw: nothing was published, or the checkpoint was but the
 *   container was never marked as stopped by it, so it runs on as after a
 *   --leave-running checkpoint and its delete stays consistent.
 * Then, while CRIU of this checkpoint still runs, do it again whenever it
 * re-freezes. Another live checkpointer holding the lock owns the freeze now
 * and has its own guard: the repair steps aside.
 */
export async function recoverAfterDeath(plan: FreezeGuardPlan, log: Logger): Promise<Recovery> {
  const target = targetOf(plan);
  const deadline = Date.now() + MAX_WATCH_MS;
  let result: Recovery = 'untouched';
  let failed = false;
  for (;;) {
    // The dump is looked for before the freezer: if it was gone then, the state CRIU left is what we read.
    const dumping = plan.imageDir ? await processNaming(plan.imageDir) : undefined;
    if (plan.layerGate) pokeLayerGate(plan.layerGate); // again at every look: the script may open it later
    const other = await otherCheckpointer(plan);
    if (other) {
      log.warn(
        { phase: 'freeze-guard', checkpointer: plan.pid, other },
        'another checkpoint holds the container now: leaving the freeze to it',
      );
      return 'deferred';
    }
    let frozen = true;
    try {
      frozen = await target.freezeRequested();
      if (frozen) {
        if ((await readShimState(plan.runcRoot, plan.id))?.checkpointed) {
          await target.killAndThaw();
          result = 'killed';
        } else {
          await target.thaw();
          if (result !== 'killed') result = 'thawed';
        }
        log.warn(
          { phase: 'freeze-guard', checkpointer: plan.pid, action: result, dumpStillRunning: dumping },
          result === 'killed'
            ? 'checkpointer died after publishing and marking the container stopped: killed it as the checkpoint would have'
            : 'checkpointer died with the container frozen: thawed it',
        );
      }
    } catch (err) {
      // Tried again at the next look: the container must not stay frozen for a passing error.
      if (!failed)
        log.error(
          { phase: 'freeze-guard', checkpointer: plan.pid, err: errorMessage(err) },
          'could not thaw the container yet; retrying',
        );
      failed = true;
    }
    if (!frozen && dumping === undefined) {
      if (plan.layerGate) await fsp.rm(plan.layerGate, { recursive: true, force: true }).catch(() => undefined);
      return result;
    }
    if (Date.now() > deadline) {
      log.error(
        { phase: 'freeze-guard', checkpointer: plan.pid, dumpStillRunning: dumping },
        'gave up watching an orphaned dump',
      );
      return result;
    }
    await sleep(POLL_MS);
  }
}

/** A live process other than this one whose arguments include `arg` (the orphaned `runc checkpoint --image-path`). */
async function processNaming(arg: string): Promise<number | undefined> {
  const needle = `\0${arg}\0`;
  for (const name of await fsp.readdir('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    const cmdline = await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(needle)) return pid;
  }
  return undefined;
}

/** The live process holding the container's checkpoint lock, if it is not the dead checkpointer. */
async function otherCheckpointer(plan: FreezeGuardPlan): Promise<number | undefined> {
  const text = await fsp.readFile(path.join(plan.runcRoot, plan.id, CHECKPOINT_LOCK_FILE), 'utf8').catch(() => '');
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 && pid !== plan.pid && isAlive(pid) ? pid : undefined;
}
