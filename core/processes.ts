import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Processes by pid, read from /proc. A pid alone can be reused once its
 * process is gone: whoever stops a process it started later (another run of
 * the same command) records its start time too and signals it only while
 * both still match (ProcessRef).
 */

/** A process as recorded by whoever started it: pid plus its start time (clock ticks after boot). */
export interface ProcessRef {
  pid: number;
  start: string;
}

/** What ARCH reads of /proc/PID/stat: the state letter (field 3) and the start time (field 22). */
export interface ProcStat {
  state: string;
  start: string;
}

/** Fields counted after the ")" that ends the command name (which may hold spaces and parentheses). */
export function parseProcStat(stat: string): ProcStat {
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0] ?? '', start: (fields[19] ?? '').trim() };
}

/** /proc/PID/stat, read without blocking the thread; undefined once the process is gone. */
export async function readProcStat(pid: number): Promise<ProcStat | undefined> {
  try {
    return parseProcStat(await fs.promises.readFile(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Field 22 of /proc/PID/stat (start time), or undefined once the process is gone. */
export function processStartTime(pid: number): string | undefined {
  try {
    return parseProcStat(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')).start;
  } catch {
    return undefined;
  }
}

export function processArgv(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

/**
 * The pid in pidFile, only while that pid still runs a process whose argv
 * names `arg` (its config file, say): a pid file outlives its process and
 * the pid may belong to another process by now.
 */
export function pidFileProcess(pidFile: string, arg: string): number | undefined {
  let pid = NaN;
  try {
    pid = Number(fs.readFileSync(pidFile, 'utf8'));
  } catch {
    return undefined;
  }
  return pid > 0 && isRunning(pid) && processArgv(pid).includes(arg) ? pid : undefined;
}

export function allPids(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number);
}

/** Alive and not a zombie (a zombie still answers kill(0) but does nothing). */
export function isRunning(pid: number): boolean {
  try {
    return parseProcStat(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')).state !== 'Z';
  } catch {
    return false;
  }
}

/** The ref of a process this process just started (undefined if it is already gone). */
export function refOf(pid: number | undefined): ProcessRef | undefined {
  if (!pid) return undefined;
  const start = processStartTime(pid);
  return start === undefined ? undefined : { pid, start };
}

/** Still the very process that was recorded (not a later one with the same pid). */
export function isSameProcess(ref: ProcessRef): boolean {
  return isRunning(ref.pid) && processStartTime(ref.pid) === ref.start;
}

export function signalPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

export async function waitGone(pids: number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (pids.some(isRunning)) {
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}

/**
 * Stop a recorded process: SIGTERM, then SIGKILL after graceMs. Returns
 * false when it was no longer running (or was another process by now):
 * nothing was signalled then.
 */
export async function stopProcess(ref: ProcessRef, graceMs: number): Promise<boolean> {
  if (!isSameProcess(ref)) return false;
  signalPid(ref.pid, 'SIGTERM');
  if (!(await waitGone([ref.pid], graceMs)) && isSameProcess(ref)) {
    signalPid(ref.pid, 'SIGKILL');
    await waitGone([ref.pid], 5_000);
  }
  return true;
}
