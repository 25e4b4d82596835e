import type { RestoredCpu } from './cpu-features.js';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './atomic-file.js';
import { isAlive } from './pid.js';
import { readProcStat } from './processes.js';
import { signalCgroupTree } from './cgroup-freezer.js';

/**
 * What the shim remembers about an ARCH container between runc calls.
 * It lives inside runc's own state directory for the container
 * (<runc root>/<id>/): keyed by the node's runc root, so two containerd
 * instances never share it, and removed by `runc delete` with the rest.
 * arch-runc's front (shim/arch-runc.c) tests for ARCH_STATE_FILE there to decide,
 * without starting Node, whether a checkpoint/delete concerns an ARCH
 * container; it creates KILLED_FILE on `runc kill`, and does the `start` of
 * a restored container itself (RESTORED_FILE).
 */
export const ARCH_STATE_FILE = 'arch.json';
export const KILLED_FILE = 'arch.killed';
/**
 * A container that create restored rather than created: its `start` is not
 * runc's (runc would refuse to start processes that exist already) but
 * ARCH's. The file holds the cgroup directory of the restored processes
 * when they are held stopped until that start (as runc's create holds a new
 * container's process until start), else nothing. The start removes it; a
 * kill before the start empties it (the held processes go on to take the
 * signal as the running job they are, and the start stays ARCH's).
 */
export const RESTORED_FILE = 'arch.restored';
/** How the init process exited, from containerd's exit event (written by the node's worker). */
export const EXIT_FILE = 'arch.exit';

/** ARCH's files in a runc state dir, and their temporary names while written (writeFileAtomic). */
const isArchFile = (name: string) =>
  [ARCH_STATE_FILE, KILLED_FILE, RESTORED_FILE, EXIT_FILE, CHECKPOINT_LOCK_FILE].includes(
    name.replace(/\.\d+\.tmp$/, ''),
  );

const ignoreMissing = (err: NodeJS.ErrnoException): void => {
  if (err.code !== 'ENOENT') throw err;
};

/**
 * Remove a container's runc state dir that runc left behind holding only
 * ARCH's files. runc removes the dir when it deletes the container (and when
 * a foreground run ends), but Go's RemoveAll gives up on a dir that a file
 * appeared in meanwhile: an ARCH file written at that moment (the worker's
 * exit record, the shim state of a job that ended right after its restore)
 * left the dir there, and the next create of the same id failed with "container
 * with given ID already exists". Only a dir without runc's state.json and with
 * at least one ARCH file and nothing else goes (an empty one may be a create
 * of runc's that is under way). True when it was removed.
 */
export async function removeLeftStateDir(runcRoot: string, id: string): Promise<boolean> {
  const dir = path.join(runcRoot, id);
  for (let attempt = 0; attempt < 3; attempt++) {
    let names: string[];
    try {
      if (!(await fsp.lstat(dir)).isDirectory()) return false;
      names = await fsp.readdir(dir);
    } catch {
      return false;
    }
    if (!names.length || !names.every(isArchFile)) return false;
    try {
      // unlink: an ARCH name that is a directory is not ARCH's file, and stays (the dir with it).
      for (const n of names) await fsp.unlink(path.join(dir, n)).catch(ignoreMissing);
      await fsp.rmdir(dir);
      return true;
    } catch (err) {
      // One more ARCH file landed in between (ENOTEMPTY): look again.
      if ((err as NodeJS.ErrnoException).code !== 'ENOTEMPTY') return false;
    }
  }
  return false;
}

export interface ShimState {
  namespace: string;
  id: string;
  /** Checkpointed since it started: delete keeps the checkpoint. */
  checkpointed: boolean;
  checkpointDir: string;
  /** The checkpoint this container was restored from (kept after start): proof of a restore. */
  restoredFrom?: string;
  /** What CPU the restored processes started on, and when the restore was done (core/cpu-features.ts cpuOfJob). */
  restoredCpu?: RestoredCpu;
  workDir?: string;
  /** The allowed root both directories lie under (absent in states of ARCH before 0.2: then nothing is removed). */
  allowedRoot?: string;
  /** The setting that named the checkpoint's home (for errors). */
  checkpointField?: string;
  /** Object storage (core/s3-store.ts): the checkpoints are there, checkpointDir is the node's cache of them. */
  checkpointUrl?: string;
  createdAt: string;
  /** The restore that failed before this container started fresh instead (`arch-cli ls` shows it). */
  lastRestoreFailure?: RestoreFailure;
  /** The last checkpoint of it that failed (`arch-cli ls` shows it while no newer checkpoint exists: the job is not protected meanwhile). */
  lastCheckpointFailure?: CheckpointFailure;
}

/**
 * A checkpoint of a running container that failed (a periodic one, a
 * drain's, finalize's): its previous checkpoint, if any, stays current, so
 * a lost node would cost the job everything since then. That must be
 * visible where the job's protection is read (`arch-cli ls`), not only in
 * the log of whatever asked for the checkpoint.
 */
export interface CheckpointFailure {
  message: string;
  at: string;
  /** The setting or input at fault, when it was one (an ArchInputError's field). */
  field?: string;
}

/**
 * A checkpoint that was there but did not restore. The container started
 * fresh, so the job's progress since the start is lost: that must be visible
 * (ls, the error log), not only a container that runs.
 */
export interface RestoreFailure {
  /** A short cause: CheckpointUnusableError's reason, `pid-in-use`, `memory-limit`, `pids-limit`, or `restore-failed`. */
  reason: string;
  message: string;
  at: string;
  checkpointDir: string;
}

export function stateFile(runcRoot: string, id: string): string {
  return path.join(runcRoot, id, ARCH_STATE_FILE);
}

export async function readShimState(runcRoot: string, id: string): Promise<ShimState | undefined> {
  try {
    return JSON.parse(await fsp.readFile(stateFile(runcRoot, id), 'utf8')) as ShimState;
  } catch {
    return undefined;
  }
}

export async function writeShimState(runcRoot: string, s: ShimState): Promise<void> {
  await writeFileAtomic(stateFile(runcRoot, s.id), JSON.stringify(s));
}

/** Create restored the container (RESTORED_FILE): its processes held stopped in cgroup `heldIn` until start, or running. */
export async function markRestored(runcRoot: string, id: string, heldIn: string | undefined): Promise<void> {
  await writeFileAtomic(path.join(runcRoot, id, RESTORED_FILE), heldIn ? `${heldIn}\n` : '');
}

/**
 * The `start` of a container create restored (the front's go_on_restored in
 * shim/arch-runc.c does the same for containerd's calls): its held processes
 * go on, and the mark goes. False when create did not restore it (runc
 * starts it then).
 */
export async function startRestored(runcRoot: string, id: string): Promise<boolean> {
  const file = path.join(runcRoot, id, RESTORED_FILE);
  let heldIn: string;
  try {
    heldIn = (await fsp.readFile(file, 'utf8')).trim();
  } catch {
    return false;
  }
  if (heldIn) await signalCgroupTree(heldIn, 'SIGCONT');
  await fsp.rm(file, { force: true });
  return true;
}

export async function updateShimState(runcRoot: string, id: string, patch: Partial<ShimState>): Promise<void> {
  const cur = await readShimState(runcRoot, id);
  if (cur) await writeShimState(runcRoot, { ...cur, ...patch });
}

/**
 * Another container in this runc root, still running, that keeps its
 * checkpoint in `checkpointDir` (two containers given the same
 * ARCH_CHECKPOINT_ID). Running = runc's init process of it is alive, checked
 * with its start time (a reused pid is not it). Exited ones do not count:
 * Kubernetes keeps a crashed container until it is collected, and its
 * successor must continue from the crashed one's checkpoint.
 */
export async function runningHolderOf(
  runcRoot: string,
  checkpointDir: string,
  exceptId: string,
): Promise<string | undefined> {
  const entries = await fsp.readdir(runcRoot, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    if (!e.isDirectory() || e.name === exceptId) continue;
    const s = await readShimState(runcRoot, e.name);
    if (s?.checkpointDir !== checkpointDir) continue;
    if (await initRunning(runcRoot, e.name)) return e.name;
  }
  return undefined;
}

/** runc's init process of the container is alive (checked with its start time: a reused pid is not it). */
export async function initRunning(runcRoot: string, id: string): Promise<boolean> {
  const st = await readRuncStateFile(runcRoot, id);
  const pid = st?.init_process_pid;
  if (!st || !Number.isInteger(pid) || !pid || pid <= 0) return false;
  const stat = await readProcStat(pid);
  if (!stat) return false;
  return st.init_process_start === undefined || Number(stat.start) === Number(st.init_process_start);
}

/** The fields ARCH reads of runc's own state file (<runc root>/<id>/state.json). */
interface RuncStateFile {
  init_process_pid?: number;
  init_process_start?: number;
  cgroup_paths?: Record<string, string>;
}

/** runc's state file of a container; undefined when absent or unreadable. */
async function readRuncStateFile(runcRoot: string, id: string): Promise<RuncStateFile | undefined> {
  try {
    return JSON.parse(await fsp.readFile(path.join(runcRoot, id, 'state.json'), 'utf8')) as RuncStateFile;
  } catch {
    return undefined;
  }
}

export async function wasKilled(runcRoot: string, id: string): Promise<boolean> {
  return fsp.access(path.join(runcRoot, id, KILLED_FILE)).then(
    () => true,
    () => false,
  );
}

/**
 * Did the kernel's OOM killer end the container? A crash is not a finished
 * job: its checkpoint must stay. runc keeps the cgroup until `runc delete`,
 * so its memory controller still has the count when delete is handled.
 */
export async function wasOomKilled(runcRoot: string, id: string): Promise<boolean> {
  const paths = (await readRuncStateFile(runcRoot, id))?.cgroup_paths ?? {}; // no state: nothing known
  const candidates = [
    paths.memory && path.join(paths.memory, 'memory.oom_control'), // cgroup v1: "oom_kill N"
    paths[''] && path.join(paths[''], 'memory.events'), // cgroup v2: "oom_kill N"
  ].filter((p): p is string => !!p);
  for (const f of candidates) {
    const text = await fsp.readFile(f, 'utf8').catch(() => '');
    const n = /^oom_kill (\d+)$/m.exec(text)?.[1];
    if (n && Number(n) > 0) return true;
  }
  return false;
}

export const CHECKPOINT_LOCK_FILE = 'arch.checkpointing';

/** Lock files this process holds (a worker runs many activities at once). */
const heldHere = new Set<string>();

/**
 * One checkpoint of a container at a time on a node (a drain and a migration
 * can both ask for one): the lock file, created exclusively in runc's state
 * dir, holds the pid of the process checkpointing. A lock whose process is
 * gone is stale and taken over. Returns the release function, or the pid
 * that holds the lock.
 */
export async function lockCheckpoint(
  runcRoot: string,
  id: string,
): Promise<{ release: () => Promise<void> } | { heldBy: number }> {
  const file = path.join(runcRoot, id, CHECKPOINT_LOCK_FILE);
  if (heldHere.has(file)) return { heldBy: process.pid };
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await fsp.writeFile(file, String(process.pid), { flag: 'wx' });
      heldHere.add(file);
      return {
        release: async () => {
          heldHere.delete(file);
          await fsp.rm(file, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = Number((await fsp.readFile(file, 'utf8').catch(() => '')).trim());
    if (heldHere.has(file)) return { heldBy: process.pid };
    if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && isAlive(holder)) return { heldBy: holder };
    await fsp.rm(file, { force: true }); // stale: its process died mid-checkpoint
  }
  return { heldBy: -1 };
}

export interface RecordedExit {
  exitStatus: number;
  exitedAt?: string;
}

/**
 * Record how an ARCH container's init process exited. runc never learns an
 * exit code (containerd's shim reaps the process); containerd publishes it
 * as a /tasks/exit event, which the node's worker follows and hands here, so
 * that delete can tell a finished job (0) from a crash. Only for containers
 * arch-runc created (their state file is there); false otherwise.
 */
export async function recordExit(runcRoot: string, id: string, exit: RecordedExit): Promise<boolean> {
  if (
    !(await fsp.access(stateFile(runcRoot, id)).then(
      () => true,
      () => false,
    ))
  )
    return false;
  await writeFileAtomic(path.join(runcRoot, id, EXIT_FILE), JSON.stringify(exit));
  return true;
}

/**
 * A live exit recorder (the node's worker) announces itself beside the runc
 * roots: <runc root base>/.arch-exit-recorder holds its pid. No containerd
 * namespace can be named like that (a leading dot), so it never meets a runc
 * root. Delete reads it to know whether an exit record is still to come.
 */
export const EXIT_RECORDER_FILE = '.arch-exit-recorder';

/** Say that this process records exits for the runc roots below `runcRootBase`; returns the undo. */
export async function announceExitRecorder(runcRootBase: string): Promise<() => Promise<void>> {
  // containerd makes this dir on its first container; the worker may come first after a boot.
  await fsp.mkdir(runcRootBase, { recursive: true, mode: 0o711 });
  const file = path.join(runcRootBase, EXIT_RECORDER_FILE);
  await writeFileAtomic(file, String(process.pid));
  return async () => {
    // Only our own announcement: a worker started since then has written its pid.
    if ((await fsp.readFile(file, 'utf8').catch(() => '')).trim() === String(process.pid))
      await fsp.rm(file, { force: true });
  };
}

async function exitRecorderAlive(runcRoot: string): Promise<boolean> {
  const pid = Number(
    (await fsp.readFile(path.join(path.dirname(runcRoot), EXIT_RECORDER_FILE), 'utf8').catch(() => '')).trim(),
  );
  return Number.isInteger(pid) && pid > 0 && isAlive(pid);
}

/**
 * The recorded exit, waiting for it when a recorder runs but has not written
 * it yet: a delete that follows the exit at once (`ctr run --rm`, `docker run
 * --rm`) races containerd's exit event to the worker. Without a recorder
 * there is nothing to wait for. `waitedMs` says how long it took.
 */
export async function awaitRecordedExit(
  runcRoot: string,
  id: string,
  timeoutMs: number,
  onWait?: () => void,
): Promise<{ exit?: RecordedExit; waitedMs: number }> {
  const t0 = Date.now();
  let exit = await recordedExit(runcRoot, id);
  if (exit || !(await exitRecorderAlive(runcRoot))) return { exit, waitedMs: 0 };
  onWait?.();
  while (!exit && Date.now() - t0 < timeoutMs) {
    await new Promise((r) => setTimeout(r, 10));
    exit = await recordedExit(runcRoot, id);
  }
  return { exit, waitedMs: Date.now() - t0 };
}

/** The recorded exit, if the worker saw it (undefined without a worker, or if delete came first). */
export async function recordedExit(runcRoot: string, id: string): Promise<RecordedExit | undefined> {
  try {
    const e = JSON.parse(await fsp.readFile(path.join(runcRoot, id, EXIT_FILE), 'utf8')) as RecordedExit;
    return Number.isInteger(e.exitStatus) ? e : undefined;
  } catch {
    return undefined;
  }
}
