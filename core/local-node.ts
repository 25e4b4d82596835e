import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { Containerd } from './containerd.js';
import { allPids, pidFileProcess, processArgv, signalPid, waitGone } from './processes.js';

/**
 * A containerd instance of its own on this host: a second (third...) ARCH
 * "node" beside the host's containerd. Used by `arch-cli demo` and by the
 * tests' nodes (test/support/containerd-node.ts).
 *
 * Everything of the instance lives under its directory DIR:
 *   c.sock            gRPC socket (unix socket paths must stay < 108 bytes)
 *   config.toml       `containerd config default` with root/state/address
 *                     changed and the CRI plugin disabled (or, with the
 *                     `cri` option, enabled: see LocalCriOptions)
 *   root/ state/      containerd's own root and state
 *   runc/             runc root base: the shim runs runc --root runc/NAMESPACE
 *   cni/              with `cri`: an empty CNI config dir of the instance's own
 *   containerd.log    containerd's output
 *   containerd.pid    its pid (a later process stops it by this pid, only
 *                     while that pid still runs containerd with this config)
 *
 * Isolation from other instances on the same host (see core/containerd.ts):
 * containerd's config cannot give ctr containers a runc root (the runc
 * options in config.toml belong to the CRI plugin only), so the instance's
 * Containerd passes `--runc-root DIR/runc` and `--cgroup CGROUP_PARENT/NS/ID`
 * on every run(); workers of the node get the same as --runc-root and
 * --cgroup-parent. Shim sockets are shared in /run/containerd/s/ but named
 * by a hash of (containerd address, namespace, id), so they do not collide.
 */

const CRI_PLUGIN = 'io.containerd.grpc.v1.cri';
const SHIM_SOCKET_DIR = '/run/containerd/s';

export interface LocalContainerdOptions {
  /** For messages and the config's header. */
  name: string;
  dir: string;
  /** cgroup parent of this node's containers (path below each controller), e.g. /arch-node-b. */
  cgroupParent: string;
  /** Extra environment of containerd, hence of its shims, runc and arch-runc. */
  env?: Record<string, string>;
  /**
   * Run containerd (so its shims, arch-runc and containers) in a mount
   * namespace of its own where each `source` is bind-mounted over `target`:
   * a node with its own disk at the same path as another's.
   */
  privateMounts?: { source: string; target: string }[];
  /** containerd --log-level (default "info"). */
  logLevel?: string;
  startTimeoutMs?: number;
  /**
   * A process group of its own, left running when this process exits
   * (`arch-cli demo` leaves its nodes up); stopped later by its pid file.
   * Otherwise containerd is killed if this process exits without stop().
   */
  detached?: boolean;
  /** Leave DIR (logs, state) in place after stop(), for debugging. */
  keepDir?: boolean;
  /** Files (name → content) written into DIR before containerd starts, e.g. a record of who owns the node. */
  files?: Record<string, string>;
  /** Enable containerd's CRI plugin (off by default: ctr and the ARCH worker do not need it). */
  cri?: LocalCriOptions;
}

/**
 * The CRI plugin's settings an instance needs beside others on one host:
 * its sandbox image and runtime handlers; what every instance must have of
 * its own or must set to work is set by localContainerdConfig.
 */
export interface LocalCriOptions {
  /** The pod sandbox image, already in (or imported into) the instance's k8s.io namespace: no registry is asked. */
  sandboxImage: string;
  /** Runtime handler name -> the runc binary containerd's runc shim calls (e.g. arch-runc). */
  runtimes?: Record<string, string>;
}

export interface LocalContainerd {
  name: string;
  dir: string;
  address: string;
  root: string;
  state: string;
  /** Children are the per-namespace runc roots (runcRootBase/NAMESPACE). */
  runcRootBase: string;
  cgroupParent: string;
  configFile: string;
  logFile: string;
  /** containerd's pid (undefined once stopped or killed). */
  readonly pid: number | undefined;
  /** Started with privateMounts: processes that must see this node's files join containerd's mount namespace. */
  privateMountNs: boolean;
  /** For namespace "default"; use containerd.withNamespace(ns) for others. */
  containerd: Containerd;
  /** Last lines of containerd's log (for failure messages). */
  logTail(lines?: number): string;
  /**
   * Simulate losing the machine: SIGKILL containerd, the node's shims and
   * its containers' processes. Files and mounts stay until stop().
   */
  kill(): Promise<void>;
  /** Remove all containers, stop containerd, kill leftovers, unmount, delete the dir. Idempotent. */
  stop(): Promise<void>;
}

export function localContainerdAddress(dir: string): string {
  return path.join(dir, 'c.sock');
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

/** The pid in DIR/containerd.pid, only while that pid still runs containerd with DIR's config. */
export function localContainerdPid(dir: string): number | undefined {
  return pidFileProcess(path.join(dir, 'containerd.pid'), path.join(dir, 'config.toml'));
}

/**
 * Kill whatever a local containerd left behind and delete its directory:
 * containerd itself (only if its pid file still names it), container
 * processes, shims and their sockets, mounts, cgroups.
 */
export async function cleanupLocalContainerd(dir: string, cgroupParent: string, keepDir = false): Promise<void> {
  const address = localContainerdAddress(dir);
  const cdPid = localContainerdPid(dir);
  if (cdPid) {
    signalPid(cdPid, 'SIGKILL');
    await waitGone([cdPid], 5_000);
  }
  await killRuncContainers(path.join(dir, 'runc'), true);
  const shims = shimsOf(address);
  for (const s of shims) signalPid(s.pid, 'SIGKILL');
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
  if (!keepDir) fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * Stop the local containerd of DIR, whoever started it: remove its
 * containers through containerd (so its records and shims go away cleanly),
 * SIGTERM it (SIGKILL after 10 s), then cleanupLocalContainerd. Returns the
 * errors of the graceful part (the forced clean-up then did the job).
 */
export async function stopLocalContainerd(dir: string, cgroupParent: string, keepDir = false): Promise<string[]> {
  const errors: string[] = [];
  const pid = localContainerdPid(dir);
  if (pid) {
    const containerd = new Containerd({
      address: localContainerdAddress(dir),
      runcRoot: path.join(dir, 'runc'),
      cgroupParent,
    });
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
    signalPid(pid, 'SIGTERM');
    if (!(await waitGone([pid], 10_000))) signalPid(pid, 'SIGKILL');
    await waitGone([pid], 5_000);
  }
  await cleanupLocalContainerd(dir, cgroupParent, keepDir);
  return errors;
}

let defaultConfig: string | undefined;

/**
 * `containerd config default`, with this instance's paths and the CRI plugin
 * off, or on with `cri`. Then every runtime gets Root = DIR/runc: the runc
 * shim uses Root/NAMESPACE as runc's root, and without it two containerd
 * instances on one host share /run/containerd/runc/k8s.io. With `cri` it
 * also sets restrict_oom_score_adj (runc cannot raise oom_score_adj where
 * containerd lacks CAP_SYS_RESOURCE, as on the VMs ARCH is tested on:
 * every pod fails to start) and a CNI config dir of the instance's own,
 * empty: pods use the host network, and no CNI config of the host is
 * picked up.
 */
export async function localContainerdConfig(dir: string, header: string, cri?: LocalCriOptions): Promise<string> {
  defaultConfig ??= (await execa('containerd', ['config', 'default'])).stdout;
  const address = localContainerdAddress(dir);
  const runcRoot = JSON.stringify(path.join(dir, 'runc'));
  const criTable = `plugins.${JSON.stringify(CRI_PLUGIN)}`;
  let section = '';
  const done = new Set<string>();
  const lines = defaultConfig.split('\n').map((line) => {
    const h = /^\s*\[(.+)\]\s*$/.exec(line);
    if (h) section = h[1]!;
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
    if (cri && section === criTable) {
      if (/^\s*sandbox_image\s*=/.test(line)) return set('sandbox_image', JSON.stringify(cri.sandboxImage));
      if (/^\s*restrict_oom_score_adj\s*=/.test(line)) return set('restrict_oom_score_adj', 'true');
    }
    if (cri && section === `${criTable}.cni`) {
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
    const t = `${criTable}.containerd.runtimes.${handler}`;
    lines.push('', `[${t}]`, '  runtime_type = "io.containerd.runc.v2"', `[${t}.options]`);
    lines.push(`  BinaryName = ${JSON.stringify(binary)}`, `  Root = ${runcRoot}`);
  }
  return `# ${header}\n${lines.join('\n')}`;
}

/** Start a containerd instance in opts.dir (cleaning up what a previous one left there) and wait until it answers. */
export async function startLocalContainerd(opts: LocalContainerdOptions): Promise<LocalContainerd> {
  const { name, dir, cgroupParent } = opts;
  const address = localContainerdAddress(dir);
  if (Buffer.byteLength(`${address}.ttrpc`) >= 108)
    throw new Error(`node ${name}: socket path too long (${address}); use a shorter directory`);
  if (fs.existsSync(dir)) await cleanupLocalContainerd(dir, cgroupParent);
  const root = path.join(dir, 'root');
  const state = path.join(dir, 'state');
  const runcRootBase = path.join(dir, 'runc');
  for (const d of [root, state, runcRootBase]) fs.mkdirSync(d, { recursive: true });
  for (const [f, content] of Object.entries(opts.files ?? {})) fs.writeFileSync(path.join(dir, f), content);
  const configFile = path.join(dir, 'config.toml');
  if (opts.cri) fs.mkdirSync(path.join(dir, 'cni'));
  fs.writeFileSync(
    configFile,
    await localContainerdConfig(dir, `ARCH local node ${name} (core/local-node.ts)`, opts.cri),
  );
  const logFile = path.join(dir, 'containerd.log');

  // Both streams append to the log (O_APPEND: no clobbering).
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
    env: opts.env ?? {},
    extendEnv: true,
    stdin: 'ignore',
    stdout: { file: logFile, append: true },
    stderr: { file: logFile, append: true },
    reject: false,
    detached: !!opts.detached,
    cleanup: !opts.detached,
  });
  if (opts.detached) proc.unref();
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
  let stopped = false;
  const node: LocalContainerd = {
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
    logTail,
    async kill() {
      const p = pid;
      pid = undefined;
      if (p !== undefined && !exited) {
        signalPid(p, 'SIGKILL');
        await proc;
      }
      const shims = shimsOf(address);
      for (const s of shims) signalPid(s.pid, 'SIGKILL');
      await killRuncContainers(runcRootBase, false);
      await waitGone(
        shims.map((s) => s.pid),
        5_000,
      );
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      pid = undefined;
      const errors = await stopLocalContainerd(dir, cgroupParent, opts.keepDir);
      if (!opts.detached) await proc;
      if (errors.length)
        process.emitWarning(`node ${name}: graceful cleanup had errors (forced instead): ${errors.join('; ')}`);
    },
  };

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
