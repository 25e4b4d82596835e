import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { Containerd } from '../../core/containerd.js';
import { PRIVATE_CRIU } from './arch-env.js';

/**
 * A private containerd instance = one ARCH "node" for tests.
 *
 * Everything of node NAME lives under /run/arch-test/NAME-PID/ (PID = the
 * test process, so two test runs on one machine never share a node):
 *   c.sock            gRPC socket (unix socket paths must stay < 108 bytes)
 *   config.toml       `containerd config default` with root/state/address
 *                     changed and the CRI plugin disabled (or, with the
 *                     `cri` option, enabled: see CriNodeOptions)
 *   root/ state/      containerd's own root and state
 *   runc/             runc root base: the shim runs runc --root runc/NAMESPACE
 *   containerd.log    containerd's output
 *   owner             {pid, start} of the test process, to find stale nodes
 *
 * Isolation from other nodes on the same host (see core/containerd.ts):
 * containerd's config cannot give ctr containers a runc root (the runc
 * options in config.toml belong to the CRI plugin only), so the node's
 * Containerd passes `--runc-root runc/` and `--cgroup /arch-test-NAME-PID/NS/ID`
 * on every run(). Shim sockets are shared in /run/containerd/s/ but named by
 * a hash of (containerd address, namespace, id), so they do not collide.
 */

export const NODE_BASE = process.env.ARCH_TEST_RUN_DIR ?? '/run/arch-test';
/** A node's dockerd keeps its data-root, exec-root, socket and pid file here (test/support/docker-node.ts). */
export const DOCKER_SUBDIR = 'docker';
const CRI_PLUGIN = 'io.containerd.grpc.v1.cri';
const SHIM_SOCKET_DIR = '/run/containerd/s';

export interface StartNodeOptions {
  /** Extra environment of containerd, hence of its shims, runc and arch-runc (e.g. ARCH_CONFIG). */
  env?: Record<string, string>;
  /** Prepend the private CRIU 4's directory to PATH so plain runc finds it (default true). */
  criuOnPath?: boolean;
  /**
   * Set CRIU_FAULT=130 for containerd (so for runc and CRIU under it): needed
   * for plain-runc checkpoints (`ctr task checkpoint`) in VMs without
   * hardware breakpoints. Default false: arch-runc must set it itself from
   * its settings (ARCH_CRIU_NO_BREAKPOINTS), and tests should see if it does.
   */
  criuNoBreakpoints?: boolean;
  /** containerd --log-level (default "info"). */
  logLevel?: string;
  startTimeoutMs?: number;
  /**
   * Run containerd (so its shims, arch-runc and containers) in a mount
   * namespace of its own where each `source` is bind-mounted over `target`:
   * a second node with its own disk at the same path (node-local storage).
   * Mounts it makes there are not visible on the host: read its containers'
   * output, not their files. Workers join it (TestNode.mountNsPid).
   */
  privateMounts?: { source: string; target: string }[];
  /** Enable containerd's CRI plugin (off by default: ctr-only nodes do not need it). */
  cri?: CriNodeOptions;
}

/**
 * The CRI plugin's settings a node needs on these machines: its sandbox
 * image (built locally: no registry), its runtime handlers, and what every
 * instance must have of its own or must set to work here (see nodeConfig).
 */
export interface CriNodeOptions {
  /** An image already in (or imported into) the node's k8s.io namespace. */
  sandboxImage: string;
  /** Runtime handler name -> the runc binary containerd's runc shim calls (e.g. arch-runc). */
  runtimes: Record<string, string>;
}

export interface TestNode {
  name: string;
  /** The node's directory under NODE_BASE. */
  dir: string;
  address: string;
  root: string;
  state: string;
  /** Children are the per-namespace runc roots (runcRootBase/NAMESPACE). */
  runcRootBase: string;
  /** cgroup parent of this node's containers (path below each controller). */
  cgroupParent: string;
  configFile: string;
  logFile: string;
  /** containerd's pid (undefined once stopped or killed). */
  readonly pid: number | undefined;
  /** Started with privateMounts: processes that must see this node's files join containerd's mount namespace. */
  privateMountNs: boolean;
  /** For namespace "default"; use containerd.withNamespace(ns) for others. */
  containerd: Containerd;
  runcRoot(namespace?: string): string;
  /** The task's bundle: STATE/io.containerd.runtime.v2.task/NS/ID. */
  bundleDir(id: string, namespace?: string): string;
  /** Read a file of a running container through its rootfs mount on the host. */
  readContainerFile(id: string, pathInContainer: string, namespace?: string): string;
  /** Last lines of containerd's log (for failure messages). */
  logTail(lines?: number): string;
  /**
   * Simulate losing the machine: SIGKILL containerd, the node's shims and
   * its containers' processes. Files and mounts stay until stop().
   */
  kill(): Promise<void>;
  /** Remove all containers, stop containerd, kill leftovers, unmount, delete the node dir. Idempotent. */
  stop(): Promise<void>;
}

// ---- helpers ---------------------------------------------------------------

function processStartTime(pid: number): string | undefined {
  try {
    // Field 22 of /proc/PID/stat, counted after the ")" that ends the command name.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function processArgv(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

function allPids(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number);
}

function isAlive(pid: number): boolean {
  // A zombie still answers kill(0); a reaped or exited process does not have state R/S/D.
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function killPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

async function waitGone(pids: number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (pids.some(isAlive)) {
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}

/** Mount points at or below `dir`, deepest first (from /proc/self/mountinfo). */
export function mountsUnder(dir: string): string[] {
  const unescape = (s: string): string =>
    s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out = new Set<string>();
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const p = unescape(mp);
    if (p === dir || p.startsWith(`${dir}/`)) out.add(p);
  }
  return [...out].sort((a, b) => b.split('/').length - a.split('/').length || b.length - a.length);
}

/** Lazily unmount everything under dir (repeated: a mount can be stacked). */
export async function unmountUnder(dir: string): Promise<string[]> {
  for (let pass = 0; pass < 5; pass++) {
    const mounts = mountsUnder(dir);
    if (mounts.length === 0) return [];
    for (const m of mounts) await execa('umount', ['-l', m], { reject: false });
  }
  return mountsUnder(dir);
}

/** The shim's socket name: sha256(ADDRESS/NAMESPACE/ID) (containerd 1.6 runtime/v2/shim). */
function shimSocket(address: string, namespace: string, id: string): string {
  return path.join(
    SHIM_SOCKET_DIR,
    crypto
      .createHash('sha256')
      .update(path.join(address, namespace, id))
      .digest('hex'),
  );
}

/** Shim sockets named in STATE/io.containerd.runtime.v2.task/NS/ID/address (only under SHIM_SOCKET_DIR). */
function shimSocketsOfBundles(state: string): string[] {
  const out: string[] = [];
  const tasks = path.join(state, 'io.containerd.runtime.v2.task');
  const list = (d: string): string[] => {
    try {
      return fs.readdirSync(d);
    } catch {
      return [];
    }
  };
  for (const ns of list(tasks)) {
    for (const id of list(path.join(tasks, ns))) {
      try {
        const sock = fs
          .readFileSync(path.join(tasks, ns, id, 'address'), 'utf8')
          .trim()
          .replace(/^unix:\/\//, '');
        if (path.dirname(sock) === SHIM_SOCKET_DIR) out.push(sock);
      } catch {
        // no address file
      }
    }
  }
  return out;
}

/** Running shims of the containerd at `address`: {pid, namespace, id}. */
function shimsOf(address: string): { pid: number; namespace: string; id: string }[] {
  const out: { pid: number; namespace: string; id: string }[] = [];
  for (const pid of allPids()) {
    const argv = processArgv(pid);
    if (!argv[0]?.includes('containerd-shim')) continue;
    const arg = (flag: string): string | undefined => argv[argv.indexOf(flag) + 1];
    if (argv.includes('-address') && arg('-address') === address) {
      out.push({ pid, namespace: arg('-namespace') ?? '', id: arg('-id') ?? '' });
    }
  }
  return out;
}

/** SIGKILL every container in the runc roots under base, then runc delete --force them. */
export async function killRuncContainers(runcRootBase: string, deleteState: boolean): Promise<void> {
  let namespaces: string[] = [];
  try {
    namespaces = fs.readdirSync(runcRootBase);
  } catch {
    return;
  }
  for (const ns of namespaces) {
    const root = path.join(runcRootBase, ns);
    const list = await execa('runc', ['--root', root, 'list', '-q'], { reject: false });
    for (const id of (list.stdout ?? '').split('\n').filter(Boolean)) {
      await execa('runc', ['--root', root, 'kill', '--all', id, 'KILL'], { reject: false });
      if (deleteState) await execa('runc', ['--root', root, 'delete', '--force', id], { reject: false });
    }
  }
}

/** Remove the node's (now empty) cgroup directories in every controller, deepest first. */
export function removeCgroups(cgroupParent: string): void {
  let controllers: string[] = [];
  try {
    controllers = fs.readdirSync('/sys/fs/cgroup');
  } catch {
    return;
  }
  for (const c of controllers) {
    const top = path.join('/sys/fs/cgroup', c, cgroupParent);
    const dirs: string[] = [];
    const walk = (d: string): void => {
      let entries: fs.Dirent[];
      try {
        entries = fs.readdirSync(d, { withFileTypes: true });
      } catch {
        return;
      }
      dirs.push(d);
      for (const e of entries) if (e.isDirectory()) walk(path.join(d, e.name));
    };
    walk(top);
    for (const d of dirs.reverse()) {
      try {
        fs.rmdirSync(d); // cgroupfs: rmdir of a cgroup without processes
      } catch {
        // busy or already gone
      }
    }
  }
}

/**
 * Kill whatever a node left behind and delete its directory: its containerd
 * (by pid file, only if that pid is still this node's containerd), container
 * processes, shims and their sockets, mounts, cgroups.
 */
async function cleanupNodeDir(dir: string, address: string, cgroupParent: string): Promise<void> {
  // A dockerd of this node (test/support/docker-node.ts) goes first: it would restart its containers.
  for (const [pidFile, config] of [
    [path.join(dir, 'containerd.pid'), path.join(dir, 'config.toml')],
    [path.join(dir, DOCKER_SUBDIR, 'dockerd.pid'), path.join(dir, DOCKER_SUBDIR, 'daemon.json')],
  ] as const) {
    const pid = Number(fs.existsSync(pidFile) ? fs.readFileSync(pidFile, 'utf8') : NaN);
    if (pid > 0 && processArgv(pid).includes(config)) {
      killPid(pid, 'SIGKILL');
      await waitGone([pid], 5_000);
    }
  }
  await killRuncContainers(path.join(dir, 'runc'), true);
  await killRuncContainers(path.join(dir, DOCKER_SUBDIR, 'exec', 'runtime-runc'), true);
  const shims = shimsOf(address);
  for (const s of shims) killPid(s.pid, 'SIGKILL');
  await waitGone(
    shims.map((s) => s.pid),
    5_000,
  );
  for (const s of shims) fs.rmSync(shimSocket(address, s.namespace, s.id), { force: true });
  // Shims that died earlier (kill(), a crash) left their sockets too; each
  // bundle records its shim's address in an "address" file.
  for (const sock of shimSocketsOfBundles(path.join(dir, 'state'))) fs.rmSync(sock, { force: true });
  const left = await unmountUnder(dir);
  removeCgroups(cgroupParent);
  if (left.length > 0) throw new Error(`node dir ${dir}: could not unmount ${left.join(', ')}; left in place`);
  if (process.env.ARCH_TEST_KEEP !== '1') fs.rmSync(dir, { recursive: true, force: true });
}

function nodeLayout(dir: string): { address: string; cgroupParent: string } {
  return { address: path.join(dir, 'c.sock'), cgroupParent: `/arch-test-${path.basename(dir)}` };
}

/**
 * Clean up nodes whose test process is gone (a crashed or killed run):
 * containers, shims, mounts, cgroups, directories under NODE_BASE. Nodes of
 * live test processes (this one included) are left alone.
 */
export async function cleanupStaleNodes(): Promise<string[]> {
  let names: string[] = [];
  try {
    names = fs.readdirSync(NODE_BASE);
  } catch {
    return [];
  }
  const cleaned: string[] = [];
  for (const n of names) {
    const dir = path.join(NODE_BASE, n);
    let owner: { pid?: number; start?: string } = {};
    try {
      owner = JSON.parse(fs.readFileSync(path.join(dir, 'owner'), 'utf8')) as typeof owner;
    } catch {
      // no owner file: a node that died while starting
    }
    if (owner.pid && owner.start && isAlive(owner.pid) && processStartTime(owner.pid) === owner.start) continue;
    const { address, cgroupParent } = nodeLayout(dir);
    await cleanupNodeDir(dir, address, cgroupParent);
    cleaned.push(dir);
  }
  return cleaned;
}

// ---- config ----------------------------------------------------------------

let defaultConfig: string | undefined;

/**
 * `containerd config default`, with this node's paths and the CRI plugin off,
 * or on with `cri`. Then every runtime gets Root = DIR/runc: the runc shim
 * uses Root/NAMESPACE as runc's root, and without it two containerd
 * instances on one host share /run/containerd/runc/k8s.io. It also sets
 * restrict_oom_score_adj (runc cannot raise oom_score_adj where containerd
 * lacks CAP_SYS_RESOURCE, as in these VMs: every pod fails to start) and a
 * CNI config dir of the node's own, empty: pods use the host network, and
 * no CNI config of the host is picked up.
 */
export async function nodeConfig(dir: string, cri?: CriNodeOptions): Promise<string> {
  defaultConfig ??= (await execa('containerd', ['config', 'default'])).stdout;
  const { address } = nodeLayout(dir);
  const runcRoot = JSON.stringify(path.join(dir, 'runc'));
  let section = '';
  const done = new Set<string>();
  const lines = defaultConfig.split('\n').map((line) => {
    const header = /^\s*\[(.+)\]\s*$/.exec(line);
    if (header) section = header[1]!;
    const set = (key: string, value: string): string => {
      done.add(key);
      return `${line.slice(0, line.indexOf(line.trimStart()))}${line.trimStart().split('=')[0]!.trim()} = ${value}`;
    };
    if (section === '' && /^disabled_plugins\s*=/.test(line))
      return set('disabled_plugins', JSON.stringify(cri ? [] : [CRI_PLUGIN]));
    if (section === '' && /^root\s*=/.test(line)) return set('root', JSON.stringify(path.join(dir, 'root')));
    if (section === '' && /^state\s*=/.test(line)) return set('state', JSON.stringify(path.join(dir, 'state')));
    if (section === 'grpc' && /^\s*address\s*=/.test(line)) return set('grpc.address', JSON.stringify(address));
    // Only read by the CRI plugin (off unless `cri`); kept right for anyone enabling it.
    if (section.endsWith('.runtimes.runc.options') && /^\s*Root\s*=/.test(line)) return set('runc.Root', runcRoot);
    if (cri && section === `plugins.${JSON.stringify(CRI_PLUGIN)}`) {
      if (/^\s*sandbox_image\s*=/.test(line)) return set('sandbox_image', JSON.stringify(cri.sandboxImage));
      if (/^\s*restrict_oom_score_adj\s*=/.test(line)) return set('restrict_oom_score_adj', 'true');
    }
    if (cri && section === `plugins.${JSON.stringify(CRI_PLUGIN)}.cni`) {
      if (/^\s*conf_dir\s*=/.test(line)) return set('cni.conf_dir', JSON.stringify(path.join(dir, 'cni')));
      if (/^\s*bin_dir\s*=/.test(line)) return set('cni.bin_dir', JSON.stringify(path.join(dir, 'cni')));
    }
    return line;
  });
  const required = ['disabled_plugins', 'root', 'state', 'grpc.address'];
  if (cri) required.push('runc.Root', 'sandbox_image', 'restrict_oom_score_adj', 'cni.conf_dir', 'cni.bin_dir');
  for (const k of required) {
    if (!done.has(k)) throw new Error(`containerd config default has no ${k} line: cannot make a node config`);
  }
  // TOML tables may come in any order: each handler is a table of its own at the end.
  for (const [handler, binary] of Object.entries(cri?.runtimes ?? {})) {
    const t = `plugins.${JSON.stringify(CRI_PLUGIN)}.containerd.runtimes.${handler}`;
    lines.push('', `[${t}]`, '  runtime_type = "io.containerd.runc.v2"', `[${t}.options]`);
    lines.push(`  BinaryName = ${JSON.stringify(binary)}`, `  Root = ${runcRoot}`);
  }
  return `# ARCH test node ${path.basename(dir)} (test/support/containerd-node.ts)\n${lines.join('\n')}`;
}

// ---- nodes -----------------------------------------------------------------

const liveNodes = new Set<TestNode>();

/** Start a private containerd named `name` (letters, digits, "-"; at most 40). */
export async function startNode(name: string, opts: StartNodeOptions = {}): Promise<TestNode> {
  if (!/^[a-z0-9][a-z0-9-]{0,39}$/.test(name))
    throw new Error(`startNode: bad node name "${name}" (use [a-z0-9-], at most 40)`);
  const dir = path.join(NODE_BASE, `${name}-${process.pid}`);
  const { address, cgroupParent } = nodeLayout(dir);
  if (Buffer.byteLength(`${address}.ttrpc`) >= 108) throw new Error(`startNode: socket path too long: ${address}`);
  for (const n of liveNodes)
    if (n.dir === dir) throw new Error(`startNode: node "${name}" is already running in this process`);
  if (fs.existsSync(dir)) await cleanupNodeDir(dir, address, cgroupParent); // left by an earlier test file of this process
  const root = path.join(dir, 'root');
  const state = path.join(dir, 'state');
  const runcRootBase = path.join(dir, 'runc');
  for (const d of [root, state, runcRootBase]) fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(dir, 'owner'), JSON.stringify({ pid: process.pid, start: processStartTime(process.pid) }));
  const configFile = path.join(dir, 'config.toml');
  if (opts.cri) fs.mkdirSync(path.join(dir, 'cni'));
  fs.writeFileSync(configFile, await nodeConfig(dir, opts.cri));
  const logFile = path.join(dir, 'containerd.log');

  const env: Record<string, string> = {};
  if (opts.criuOnPath !== false && fs.existsSync(PRIVATE_CRIU)) {
    env.PATH = `${path.dirname(PRIVATE_CRIU)}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`;
  }
  if (opts.criuNoBreakpoints) env.CRIU_FAULT = '130';
  Object.assign(env, opts.env);
  // cleanup: true (execa's default) kills containerd if the test process
  // exits without stop(); shims and containers are then left to
  // cleanupStaleNodes(). Both streams append to the log (O_APPEND: no clobbering).
  const containerdArgs = ['--config', configFile, '--log-level', opts.logLevel ?? 'info'];
  const mounts = opts.privateMounts ?? [];
  // unshare and sh exec into containerd: the pid stays containerd's.
  const [file, args] =
    mounts.length === 0
      ? ['containerd', containerdArgs]
      : [
          'unshare',
          [
            '-m',
            '--propagation',
            'private',
            '--',
            'sh',
            '-c',
            `set -e; ${mounts.map((_, i) => `mount --bind "$${2 * i + 1}" "$${2 * i + 2}"`).join('; ')}; shift ${2 * mounts.length}; exec containerd "$@"`,
            'sh',
            ...mounts.flatMap((m) => [m.source, m.target]),
            ...containerdArgs,
          ],
        ];
  const proc = execa(file, args, {
    env,
    extendEnv: true,
    stdin: 'ignore',
    stdout: { file: logFile, append: true },
    stderr: { file: logFile, append: true },
    reject: false,
    cleanup: true,
  });
  let exited = false;
  void proc.then(() => {
    exited = true;
  });
  fs.writeFileSync(path.join(dir, 'containerd.pid'), String(proc.pid));

  const containerd = new Containerd({ address, runcRoot: runcRootBase, cgroupParent });
  const logTail = (lines = 40): string => {
    try {
      return fs.readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  };

  let pid: number | undefined = proc.pid;
  const stopContainerd = async (signal: NodeJS.Signals): Promise<void> => {
    if (pid === undefined) return;
    const p = pid;
    pid = undefined;
    if (!exited) {
      killPid(p, signal);
      const gone = await Promise.race([
        proc.then(() => true),
        sleep(10_000, undefined, { ref: false }).then(() => false),
      ]);
      if (!gone) {
        killPid(p, 'SIGKILL');
        await proc;
      }
    }
  };

  let stopped = false;
  const node: TestNode = {
    name,
    dir,
    address,
    root,
    state,
    runcRootBase,
    cgroupParent,
    configFile,
    logFile,
    containerd,
    get pid() {
      return pid;
    },
    privateMountNs: mounts.length > 0,
    runcRoot: (ns = 'default') => path.join(runcRootBase, ns),
    bundleDir: (id, ns = 'default') => path.join(state, 'io.containerd.runtime.v2.task', ns, id),
    readContainerFile: (id, p, ns = 'default') =>
      fs.readFileSync(path.join(node.bundleDir(id, ns), 'rootfs', p), 'utf8'),
    logTail,
    async kill() {
      await stopContainerd('SIGKILL');
      const shims = shimsOf(address);
      for (const s of shims) killPid(s.pid, 'SIGKILL');
      await killRuncContainers(runcRootBase, false);
      await waitGone(
        shims.map((s) => s.pid),
        5_000,
      );
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      liveNodes.delete(node);
      const errors: string[] = [];
      if (pid !== undefined && !exited) {
        // Graceful first, so containerd's records and the shims go away cleanly.
        try {
          const namespaces = (await containerd.ctr(['namespaces', 'ls', '-q'], 10_000)).split('\n').filter(Boolean);
          for (const ns of namespaces) {
            const c = containerd.withNamespace(ns);
            for (const id of await c.listContainers()) {
              await c.removeContainer(id, 10_000).catch((err: unknown) => errors.push(String(err)));
            }
          }
        } catch (err) {
          errors.push(String(err));
        }
      }
      await stopContainerd('SIGTERM');
      await cleanupNodeDir(dir, address, cgroupParent);
      if (errors.length)
        process.emitWarning(`node ${name}: graceful cleanup had errors (forced instead): ${errors.join('; ')}`);
    },
  };
  liveNodes.add(node);

  const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
  while (!(await containerd.ping(2_000))) {
    if (exited || Date.now() > deadline) {
      const tail = logTail();
      await node.stop().catch(() => undefined);
      throw new Error(`containerd of node ${name} ${exited ? 'exited' : 'did not answer'} (log ${logFile}):\n${tail}`);
    }
    await sleep(100);
  }
  return node;
}

/** Stop every node this module started and has not stopped yet (for afterAll). */
export async function stopAllNodes(): Promise<void> {
  for (const n of [...liveNodes]) await n.stop();
}
