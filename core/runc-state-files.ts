import fsp from 'node:fs/promises';
import path from 'node:path';
import { readProcStat } from './processes.js';

/** What `runc state` / `runc list --format json` report. */
export interface RuncState {
  id: string;
  pid: number;
  status: 'created' | 'running' | 'pausing' | 'paused' | 'stopped' | string;
  bundle: string;
  rootfs: string;
  created: string;
  annotations?: Record<string, string>;
}

/**
 * What `runc list --format json` says of a runc root, read from the files
 * runc itself reads: `<root>/<id>/state.json` per container, the init
 * process's /proc entry, the container's freezer and runc's exec FIFO.
 *
 * Why not ask runc: a listing is the first thing `arch-cli ls --local` and
 * `finalize` (on a reclaim notice) do, and a `runc list` costs a fork of
 * Node (~12 ms of its thread here) and runc's own ~20 ms. The front
 * (bin/arch-runc, shim/arch-runc.c) reads state.json already.
 *
 * The status follows runc 1.1's libcontainer (refreshState / runType):
 * paused when its freezer says frozen, else stopped when the init process is
 * gone, a zombie, or another process with its pid (start time differs), else
 * created while runc's exec.fifo exists, else running; a stopped
 * container's pid is 0. Anything this does not recognise (an unknown
 * state.json shape, a freezer in transition, a cgroup layout it does not
 * know) returns undefined and the caller asks runc: a wrong status here
 * would make finalize skip a job, so doubt goes to runc.
 */
export async function readRuncStates(root: string): Promise<RuncState[] | undefined> {
  let entries;
  try {
    entries = await fsp.readdir(root, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    return undefined;
  }
  const states = await Promise.all(
    entries.filter((e) => e.isDirectory()).map((e) => stateOf(path.join(root, e.name), e.name)),
  );
  if (states.some((s) => s === UNSURE)) return undefined;
  return states.filter((s): s is RuncState => s !== GONE);
}

/**
 * What `runc state <id>` says, read the same way; undefined when runc should
 * be asked: anything unsure, and a container that is not there (runc words
 * that error). `runc state` answers a checkpoint, a restore and the shim
 * before they begin, ~20 ms of runc each time.
 */
export async function readRuncState(root: string, id: string): Promise<RuncState | undefined> {
  // runc's own rule for ids (libcontainer's idRegex): anything else is runc's to refuse.
  if (!/^[\w+-][\w+.-]*$/.test(id)) return undefined;
  const s = await stateOf(path.join(root, id), id);
  return s === UNSURE || s === GONE ? undefined : s;
}

const UNSURE = Symbol('ask runc');
/** No container here (runc list skips such a directory too, with a message). */
const GONE = Symbol('no state');

interface StateFile {
  id: string;
  init_process_pid: number;
  init_process_start: number | string;
  created: string;
  config: { rootfs: string; labels?: string[] };
  cgroup_paths?: Record<string, string>;
}

function isStateFile(s: unknown): s is StateFile {
  const o = s as Partial<StateFile> | null;
  return (
    !!o &&
    typeof o.id === 'string' &&
    Number.isInteger(o.init_process_pid) &&
    (typeof o.init_process_start === 'number' || typeof o.init_process_start === 'string') &&
    typeof o.created === 'string' &&
    !!o.config &&
    typeof o.config.rootfs === 'string' &&
    (o.config.labels === undefined || o.config.labels === null || Array.isArray(o.config.labels))
  );
}

async function stateOf(dir: string, name: string): Promise<RuncState | typeof UNSURE | typeof GONE> {
  let s: unknown;
  try {
    s = JSON.parse(await fsp.readFile(path.join(dir, 'state.json'), 'utf8'));
  } catch (err) {
    // Being created or deleted right now: runc would not list it either.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return GONE;
    return UNSURE;
  }
  if (!isStateFile(s) || s.id !== name) return UNSURE;
  // All three looked at once (a listing is on a reclaim's critical path), then decided in runc's order.
  const [frozen, alive, fifo] = await Promise.all([
    freezerState(s.cgroup_paths ?? {}),
    initAlive(s.init_process_pid, String(s.init_process_start)),
    exists(path.join(dir, 'exec.fifo')),
  ]);
  if (frozen === UNSURE) return UNSURE;
  const status: RuncState['status'] = frozen ? 'paused' : !alive ? 'stopped' : fifo ? 'created' : 'running';
  let bundle = '';
  const annotations: Record<string, string> = {};
  for (const label of s.config.labels ?? []) {
    const eq = label.indexOf('=');
    if (eq < 0) continue;
    const [k, v] = [label.slice(0, eq), label.slice(eq + 1)];
    if (k === 'bundle') bundle = v;
    else annotations[k] = v;
  }
  return {
    id: s.id,
    pid: status === 'stopped' ? 0 : s.init_process_pid,
    status,
    bundle,
    rootfs: s.config.rootfs,
    created: s.created,
    ...(Object.keys(annotations).length ? { annotations } : {}),
  };
}

/** Frozen or not, as runc's cgroup manager tells it; UNSURE for what runc would wait on or refuse. */
async function freezerState(paths: Record<string, string>): Promise<boolean | typeof UNSURE> {
  if (paths.freezer) {
    // cgroup v1 (also on a hybrid host, where "" is the unified hierarchy beside it)
    const state = await readTrimmed(path.join(paths.freezer, 'freezer.state'));
    if (state === undefined || state === 'THAWED') return false; // no freezer: runc's "undefined", not paused
    if (state !== 'FROZEN') return UNSURE;
    // Frozen through a parent only is not paused, for runc.
    const self = await readTrimmed(path.join(paths.freezer, 'freezer.self_freezing'));
    return self === undefined ? true : self === '1' ? true : self === '0' ? false : UNSURE;
  }
  const unified = paths[''];
  if (unified === undefined) return Object.keys(paths).length ? UNSURE : false;
  const freeze = await readTrimmed(path.join(unified, 'cgroup.freeze'));
  if (freeze === undefined || freeze === '0') return false;
  if (freeze !== '1') return UNSURE;
  const events = await readTrimmed(path.join(unified, 'cgroup.events'));
  return events !== undefined && /^frozen 1$/m.test(events) ? true : UNSURE;
}

/** The init process runc started is still there: same pid, same start time, neither zombie nor dead. */
async function initAlive(pid: number, start: string): Promise<boolean> {
  if (pid <= 0) return false;
  const stat = await readProcStat(pid);
  return !!stat && stat.start === start && !['Z', 'X', 'x'].includes(stat.state);
}

async function readTrimmed(file: string): Promise<string | undefined> {
  try {
    return (await fsp.readFile(file, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

const exists = (p: string) =>
  fsp.lstat(p).then(
    () => true,
    () => false,
  );
