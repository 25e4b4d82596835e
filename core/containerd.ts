import path from 'node:path';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { runCommand } from './run-command.js';
import { wireFields } from './protobuf-wire.js';
import type { MountSpec } from '../contract/types.js';
import type { OciSpec } from './oci-spec.js';

/**
 * A thin containerd adapter over the `ctr` CLI (containerd 1.6).
 *
 * Why ctr and not gRPC: ctr is installed with containerd, speaks exactly the
 * containerd version on the node, and keeps this module free of protobuf
 * code. Every call is one `ctr -a ADDRESS -n NAMESPACE ...` process.
 *
 * Facts about ctr 1.6 this adapter relies on (checked on Debian 12):
 * - `ctr run -d` returns once the task has started. Without `--log-uri` the
 *   task's stdout/stderr are copied by the shim into FIFOs under
 *   /run/containerd/fifo that only the (now exited) ctr read. The shim holds
 *   both ends open, so nothing fails: output is lost, and once the pipe and
 *   FIFO buffers are full (~128 KiB) the task blocks in write() for good
 *   (seen: a task writing 1 MB never finished). `--log-uri file:///abs/path`
 *   makes the shim copy both streams into that file instead; the task still
 *   gets pipes as stdio (CRIU needs pipes, not files).
 * - `--runc-binary` and `--runc-root` are stored in the container record as
 *   runc runtime options (BinaryName, Root); the runc shim then calls
 *   `BINARY --root ROOT/NAMESPACE ...`. Without Root the shim uses
 *   /run/containerd/runc/NAMESPACE whatever containerd instance it belongs
 *   to, so two containerd instances on one host must pass distinct roots.
 *   containerd's config cannot set a default Root for non-CRI clients (the
 *   runc options in config.toml belong to the CRI plugin; verified).
 *   `ctr containers info` prints these options as a protobuf Any (base64):
 *   decodeRuncOptions() reads them.
 * - A missing container/task makes ctr exit 1 with "...: not found" on
 *   stderr (isNotFound).
 * - ctr's default cgroup path is /NAMESPACE/ID, also shared by all
 *   containerd instances on a host: `cgroupParent` gives each its own.
 */

export type TaskStatus = 'RUNNING' | 'STOPPED' | 'CREATED' | 'PAUSED' | 'PAUSING' | 'UNKNOWN';

export interface TaskInfo {
  id: string;
  pid: number;
  status: TaskStatus;
}

export interface RunOptions {
  image: string;
  id: string;
  /** KEY=VALUE pairs added to the image's environment. */
  env?: string[];
  /** Command and arguments; the image's Cmd when omitted. */
  args?: string[];
  /** runc-compatible binary the shim calls (e.g. arch-runc). */
  runcBinary?: string;
  /** Base of runc state roots; the shim appends /NAMESPACE. Defaults to the adapter's runcRoot. */
  runcRoot?: string;
  mounts?: MountSpec[];
  cwd?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  /** Absolute host file receiving the task's stdout+stderr (ctr --log-uri file://). */
  logFile?: string;
  /** Full cgroup path; defaults to CGROUP_PARENT/NAMESPACE/ID when the adapter has a cgroupParent. */
  cgroup?: string;
  /** Share the host network namespace (default: a private one with only loopback). */
  netHost?: boolean;
  /** Extra `ctr run` flags, placed before IMAGE. */
  extraFlags?: string[];
  timeoutMs?: number;
  /** Only detached runs are supported: the adapter never holds a task's stdio. */
  detach: true;
}

/** Selected fields of `ctr containers info` (containerd's Container record). */
export interface ContainerInfo {
  id: string;
  image: string;
  labels: Record<string, string>;
  /** Options decoded from the runc shim's protobuf; undefined when none were set. */
  runtime: { name: string; options: RuncRuntimeOptions | undefined };
  snapshotter: string;
  snapshotKey: string;
  /** The OCI runtime spec (config.json) of the container. */
  spec: OciSpec;
  /** The raw JSON, for fields not typed here. */
  raw: Record<string, unknown>;
}

/** containerd.runc.v1.Options (runtime/v2/runc/options/oci.proto), the fields ctr can set. */
export interface RuncRuntimeOptions {
  BinaryName?: string;
  Root?: string;
  CriuPath?: string;
  SystemdCgroup?: boolean;
  NoPivotRoot?: boolean;
}

export interface CheckpointOptions {
  /** Stop the task after the checkpoint (ctr --exit). */
  exit?: boolean;
  /** Write CRIU images to this host directory instead of the content store. */
  imagePath?: string;
  workPath?: string;
  timeoutMs?: number;
}

export interface ContainerdOptions {
  /** containerd's gRPC socket. */
  address: string;
  namespace?: string;
  /** The ctr executable (default "ctr" on PATH). */
  ctr?: string;
  /** Default runc root base for run(); see the module comment. */
  runcRoot?: string;
  /** Default cgroup parent for run(): cgroup = PARENT/NAMESPACE/ID. */
  cgroupParent?: string;
  /** Timeout of one ctr call unless the method says otherwise (default 120 s). */
  timeoutMs?: number;
}

/** A failed ctr call; the message carries ctr's stderr. */
export class CtrError extends Error {
  readonly args: string[];
  readonly stderr: string;
  readonly exitCode: number | undefined;
  constructor(args: string[], stderr: string, exitCode: number | undefined, cause?: string) {
    super(
      `ctr ${args.join(' ')} failed${exitCode === undefined ? '' : ` (exit ${exitCode})`}: ${stderr.trim() || cause || 'no output'}`,
    );
    this.name = 'CtrError';
    this.args = args;
    this.stderr = stderr;
    this.exitCode = exitCode;
  }
}

/** True for ctr's "does not exist" answers (container, task or image). */
export function isNotFound(err: unknown): boolean {
  return err instanceof CtrError && /not found|no such/i.test(err.stderr);
}

const TASK_STATUSES: readonly TaskStatus[] = ['RUNNING', 'STOPPED', 'CREATED', 'PAUSED', 'PAUSING', 'UNKNOWN'];

/** Parse `ctr task ls`: a header line, then "ID PID STATUS" columns. */
export function parseTaskList(stdout: string): TaskInfo[] {
  const out: TaskInfo[] = [];
  for (const line of stdout.split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 3 || !cols[0]) continue;
    const status = (TASK_STATUSES as readonly string[]).includes(cols[2]!) ? (cols[2] as TaskStatus) : 'UNKNOWN';
    out.push({ id: cols[0], pid: Number(cols[1]), status });
  }
  return out;
}

/**
 * ctr prints the runtime options as a protobuf Any ({type_url, value:
 * base64}). Decode the runc Options message by hand (a few scalar fields)
 * rather than pull in a protobuf library. Unknown fields are skipped.
 */
export function decodeRuncOptions(any: unknown): RuncRuntimeOptions | undefined {
  if (!any || typeof any !== 'object') return undefined;
  const { type_url: typeUrl, value } = any as { type_url?: string; value?: string };
  if (typeof typeUrl !== 'string' || !typeUrl.endsWith('runc.v1.Options') || typeof value !== 'string')
    return undefined;
  const buf = Buffer.from(value, 'base64');
  const out: RuncRuntimeOptions = {};
  try {
    for (const f of wireFields(buf)) {
      if (f.wire === 0 && f.no === 1) out.NoPivotRoot = f.value !== 0;
      if (f.wire === 0 && f.no === 9) out.SystemdCgroup = f.value !== 0;
      if (f.wire === 2 && f.no === 6) out.BinaryName = f.bytes.toString('utf8');
      if (f.wire === 2 && f.no === 7) out.Root = f.bytes.toString('utf8');
      if (f.wire === 2 && f.no === 8) out.CriuPath = f.bytes.toString('utf8');
    }
  } catch {
    // a truncated message: keep what was read (groups are not used by this message)
  }
  return out;
}

/** Parse `ctr containers info` JSON into the typed subset. */
export function parseContainerInfo(json: string): ContainerInfo {
  const raw = JSON.parse(json) as Record<string, unknown>;
  const rt = (raw.Runtime ?? {}) as { Name?: string; Options?: unknown };
  return {
    id: String(raw.ID ?? ''),
    image: String(raw.Image ?? ''),
    labels: (raw.Labels ?? {}) as Record<string, string>,
    runtime: { name: rt.Name ?? '', options: decodeRuncOptions(rt.Options) },
    snapshotter: String(raw.Snapshotter ?? ''),
    snapshotKey: String(raw.SnapshotKey ?? ''),
    spec: (raw.Spec ?? {}) as OciSpec,
    raw,
  };
}

export class Containerd {
  readonly address: string;
  readonly namespace: string;
  readonly ctrBinary: string;
  readonly runcRoot: string | undefined;
  readonly cgroupParent: string | undefined;
  private readonly timeoutMs: number;

  constructor(opts: ContainerdOptions) {
    this.address = opts.address;
    this.namespace = opts.namespace ?? 'default';
    this.ctrBinary = opts.ctr ?? 'ctr';
    this.runcRoot = opts.runcRoot;
    this.cgroupParent = opts.cgroupParent;
    this.timeoutMs = opts.timeoutMs ?? 120_000;
  }

  /** The same containerd, another namespace. */
  withNamespace(namespace: string): Containerd {
    return new Containerd({
      address: this.address,
      namespace,
      ctr: this.ctrBinary,
      runcRoot: this.runcRoot,
      cgroupParent: this.cgroupParent,
      timeoutMs: this.timeoutMs,
    });
  }

  /** Run `ctr -a ADDRESS -n NAMESPACE ...args`; resolves stdout, throws CtrError. */
  async ctr(args: string[], timeoutMs = this.timeoutMs): Promise<string> {
    const full = ['-a', this.address, '-n', this.namespace, ...args];
    // runCommand: in the worker, through the spawn helper (core/spawner.ts).
    const r = await runCommand(this.ctrBinary, full, { reject: false, timeoutMs });
    if (r.exitCode !== 0) {
      // A program that could not start has its error in stderr (runCommand); timeouts and signals say nothing there.
      const cause = r.timedOut ? `timed out after ${timeoutMs} ms` : r.signal ? `killed with ${r.signal}` : undefined;
      throw new CtrError(full, r.stderr, r.exitCode ?? undefined, cause);
    }
    return r.stdout;
  }

  /** `ctr version` succeeds: the daemon answers. */
  async ping(timeoutMs = 5_000): Promise<boolean> {
    try {
      await this.ctr(['version'], timeoutMs);
      return true;
    } catch {
      return false;
    }
  }

  /** Import an OCI/Docker archive; returns the image refs it created or updated. */
  async importImage(archivePath: string): Promise<string[]> {
    // ctr prints "unpacking REF (sha256:...)...done" per image.
    const out = await this.ctr(['images', 'import', path.resolve(archivePath)], 600_000);
    return [...out.matchAll(/^unpacking (\S+) \(/gm)].map((m) => m[1]!);
  }

  async listImages(): Promise<string[]> {
    return (await this.ctr(['images', 'ls', '-q'])).split('\n').filter(Boolean);
  }

  async hasImage(ref: string): Promise<boolean> {
    return (await this.listImages()).includes(ref);
  }

  /** Create and start a container detached (`ctr run -d`). */
  async run(opts: RunOptions): Promise<void> {
    const flags: string[] = ['run', '-d'];
    if (opts.runcBinary) flags.push('--runc-binary', opts.runcBinary);
    const runcRoot = opts.runcRoot ?? this.runcRoot;
    if (runcRoot) flags.push('--runc-root', runcRoot);
    const cgroup = opts.cgroup ?? (this.cgroupParent ? `${this.cgroupParent}/${this.namespace}/${opts.id}` : undefined);
    if (cgroup) flags.push('--cgroup', cgroup);
    if (opts.logFile) {
      if (!path.isAbsolute(opts.logFile)) throw new Error(`run ${opts.id}: logFile must be absolute: ${opts.logFile}`);
      flags.push('--log-uri', `file://${opts.logFile}`);
    }
    for (const e of opts.env ?? []) flags.push('--env', e);
    for (const m of opts.mounts ?? []) {
      flags.push('--mount', `type=${m.type},src=${m.src},dst=${m.dst},options=${m.options.join(':')}`);
    }
    for (const [k, v] of Object.entries(opts.labels ?? {})) flags.push('--label', `${k}=${v}`);
    for (const [k, v] of Object.entries(opts.annotations ?? {})) flags.push('--annotation', `${k}=${v}`);
    if (opts.cwd) flags.push('--cwd', opts.cwd);
    if (opts.netHost) flags.push('--net-host');
    flags.push(...(opts.extraFlags ?? []));
    await this.ctr([...flags, opts.image, opts.id, ...(opts.args ?? [])], opts.timeoutMs ?? 600_000);
  }

  async info(id: string): Promise<ContainerInfo> {
    return parseContainerInfo(await this.ctr(['containers', 'info', id]));
  }

  async listContainers(): Promise<string[]> {
    return (await this.ctr(['containers', 'ls', '-q'])).split('\n').filter(Boolean);
  }

  async listTasks(): Promise<TaskInfo[]> {
    return parseTaskList(await this.ctr(['tasks', 'ls']));
  }

  /** The container's task, or undefined when it has none. */
  async task(id: string): Promise<TaskInfo | undefined> {
    return (await this.listTasks()).find((t) => t.id === id);
  }

  async taskKill(id: string, signal: string | number = 'SIGTERM', opts: { all?: boolean } = {}): Promise<void> {
    await this.ctr(['tasks', 'kill', '--signal', String(signal), ...(opts.all ? ['--all'] : []), id]);
  }

  async taskDelete(id: string, opts: { force?: boolean } = {}): Promise<void> {
    await this.ctr(['tasks', 'delete', ...(opts.force ? ['--force'] : []), id]);
  }

  async containerDelete(id: string): Promise<void> {
    await this.ctr(['containers', 'delete', id]);
  }

  /**
   * Checkpoint the task through the shim (runc checkpoint). Returns ctr's
   * output: the checkpoint image name when no imagePath is given.
   */
  async taskCheckpoint(id: string, opts: CheckpointOptions = {}): Promise<string> {
    const flags = ['tasks', 'checkpoint'];
    if (opts.exit) flags.push('--exit');
    if (opts.imagePath) flags.push('--image-path', opts.imagePath);
    if (opts.workPath) flags.push('--work-path', opts.workPath);
    return (await this.ctr([...flags, id], opts.timeoutMs ?? 600_000)).trim();
  }

  /**
   * Poll until the task has `status` ('ABSENT': no task at all). Resolves the
   * task (undefined for ABSENT); throws with the last seen state on timeout.
   */
  async waitStatus(id: string, status: TaskStatus | 'ABSENT', timeoutMs = 30_000): Promise<TaskInfo | undefined> {
    const deadline = Date.now() + timeoutMs;
    let last: TaskInfo | undefined;
    for (;;) {
      last = await this.task(id);
      if (status === 'ABSENT' ? last === undefined : last?.status === status) return last;
      if (Date.now() >= deadline) {
        throw new Error(
          `task ${id} in ${this.namespace}: still ${last?.status ?? 'ABSENT'} after ${timeoutMs} ms (waiting for ${status})`,
        );
      }
      await sleep(100);
    }
  }

  /**
   * Remove a container whatever its state: SIGKILL a live task, wait for it
   * to stop, delete the task, delete the container (and its snapshot).
   * "Not found" at any step counts as done.
   */
  async removeContainer(id: string, timeoutMs = 30_000): Promise<void> {
    const t = await this.task(id);
    if (t) {
      if (t.status === 'PAUSED' || t.status === 'PAUSING') await this.ignoreNotFound(this.ctr(['tasks', 'resume', id]));
      if (t.status !== 'STOPPED') {
        await this.ignoreNotFound(this.taskKill(id, 'SIGKILL', { all: true }));
        try {
          await this.waitStatus(id, 'STOPPED', timeoutMs);
        } catch {
          // A task stuck in CREATED (or a dead shim) only goes with --force.
        }
      }
      await this.ignoreNotFound(this.taskDelete(id, { force: true }));
    }
    await this.ignoreNotFound(this.containerDelete(id));
  }

  /**
   * Follow containerd's task exits (all namespaces) until stop(): `ctr
   * events` runs as a child and is started again when it ends (containerd
   * restarting). Exec'd processes are left out: only a task's init. If this
   * process dies without stop(), the orphaned ctr ends at the next event it
   * prints (its stdout is a pipe nobody reads: SIGPIPE).
   */
  followTaskExits(
    onExit: (e: TaskExit) => void,
    onError: (err: Error) => void = () => undefined,
  ): { stop: () => Promise<void> } {
    let stopped = false;
    let child: ResultPromise | undefined;
    const loop = (async () => {
      while (!stopped) {
        child = execa(this.ctrBinary, ['-a', this.address, 'events'], {
          reject: false,
          stdin: 'ignore',
          buffer: false,
        });
        const lines = readline.createInterface({ input: child.stdout! });
        lines.on('line', (line) => {
          const e = parseTaskExit(line);
          if (e && e.execId === e.containerId) onExit(e);
        });
        const r = await child;
        if (stopped) break;
        onError(new CtrError(['events'], String(r.stderr ?? ''), r.exitCode, 'ctr events ended'));
        await sleep(1000);
      }
    })();
    return {
      stop: async () => {
        stopped = true;
        child?.kill('SIGTERM');
        await loop;
      },
    };
  }

  private async ignoreNotFound(p: Promise<unknown>): Promise<void> {
    try {
      await p;
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}

/** A task's process ended (containerd's /tasks/exit event). */
export interface TaskExit {
  namespace: string;
  containerId: string;
  /** The process: the container id for the task's init, else the exec id. */
  execId: string;
  pid: number;
  exitStatus: number;
  exitedAt?: string;
}

/**
 * One line of `ctr events` (containerd 1.6):
 *   TIME (4 fields) NAMESPACE TOPIC JSON
 * e.g. `2026-11-28 20:00:00.1 +0000 UTC default /tasks/exit {"container_id":"x","id":"x","pid":9,"exit_status":3,...}`.
 * exit_status is left out of the JSON when it is 0.
 */
export function parseTaskExit(line: string): TaskExit | undefined {
  const m = /^\S+ \S+ \S+ \S+ (\S+) \/tasks\/exit (\{.*\})\s*$/.exec(line);
  if (!m) return undefined;
  try {
    const j = JSON.parse(m[2]!) as {
      container_id?: unknown;
      id?: unknown;
      pid?: unknown;
      exit_status?: unknown;
      exited_at?: unknown;
    };
    if (typeof j.container_id !== 'string' || typeof j.id !== 'string') return undefined;
    return {
      namespace: m[1]!,
      containerId: j.container_id,
      execId: j.id,
      pid: typeof j.pid === 'number' ? j.pid : 0,
      exitStatus: typeof j.exit_status === 'number' ? j.exit_status : 0,
      exitedAt: typeof j.exited_at === 'string' ? j.exited_at : undefined,
    };
  } catch {
    return undefined;
  }
}
