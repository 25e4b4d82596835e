import fs from 'node:fs';
import path from 'node:path';
import {
  cleanupLocalContainerd,
  killRuncContainers,
  startLocalContainerd,
  type LocalContainerd,
  type LocalCriOptions,
} from '../../core/local-node.js';
import { isRunning, pidFileProcess, processStartTime, signalPid, waitGone } from '../../core/processes.js';
import { PRIVATE_CRIU } from './arch-env.js';

export { mountsUnder, removeCgroups, unmountUnder } from '../../core/local-node.js';

/**
 * A private containerd instance = one ARCH "node" for tests: a local
 * containerd of core/local-node.ts (its layout, isolation and CRI config are
 * described there) in /run/arch-test/NAME-PID/ (PID = the test process, so
 * two test runs on one machine never share a node), cgroup parent
 * /arch-test-NAME-PID, plus a file `owner` ({pid, start} of the test
 * process) that finds the nodes of crashed runs (cleanupStaleNodes), and
 * the clean-up of a dockerd the node may run (test/support/docker-node.ts).
 */

export const NODE_BASE = process.env.ARCH_TEST_RUN_DIR ?? '/run/arch-test';
/** A node's dockerd keeps its data-root, exec-root, socket and pid file here (test/support/docker-node.ts). */
export const DOCKER_SUBDIR = 'docker';

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
  cri?: LocalCriOptions;
}

export interface TestNode extends LocalContainerd {
  runcRoot(namespace?: string): string;
  /** The task's bundle: STATE/io.containerd.runtime.v2.task/NS/ID. */
  bundleDir(id: string, namespace?: string): string;
  /** Read a file of a running container through its rootfs mount on the host. */
  readContainerFile(id: string, pathInContainer: string, namespace?: string): string;
}

const cgroupParentOf = (dir: string): string => `/arch-test-${path.basename(dir)}`;

const keepDirs = (): boolean => process.env.ARCH_TEST_KEEP === '1';

/**
 * A dockerd of the node in DIR (only while its pid file still names it) and
 * the containers it ran: they go before the node's containerd, or dockerd
 * would restart them.
 */
async function cleanupDockerd(dir: string): Promise<void> {
  const docker = path.join(dir, DOCKER_SUBDIR);
  const pid = pidFileProcess(path.join(docker, 'dockerd.pid'), path.join(docker, 'daemon.json'));
  if (pid) {
    signalPid(pid, 'SIGKILL');
    await waitGone([pid], 5_000);
  }
  await killRuncContainers(path.join(docker, 'exec', 'runtime-runc'), true);
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
    if (owner.pid && owner.start && isRunning(owner.pid) && processStartTime(owner.pid) === owner.start) continue;
    await cleanupDockerd(dir);
    await cleanupLocalContainerd(dir, cgroupParentOf(dir), keepDirs());
    cleaned.push(dir);
  }
  return cleaned;
}

const liveNodes = new Set<TestNode>();

/** Start a private containerd named `name` (letters, digits, "-"; at most 40). */
export async function startNode(name: string, opts: StartNodeOptions = {}): Promise<TestNode> {
  if (!/^[a-z0-9][a-z0-9-]{0,39}$/.test(name))
    throw new Error(`startNode: bad node name "${name}" (use [a-z0-9-], at most 40)`);
  const dir = path.join(NODE_BASE, `${name}-${process.pid}`);
  for (const n of liveNodes)
    if (n.dir === dir) throw new Error(`startNode: node "${name}" is already running in this process`);
  // Left by an earlier test file of this process: startLocalContainerd cleans up the rest.
  if (fs.existsSync(dir)) await cleanupDockerd(dir);
  const env: Record<string, string> = {};
  if (opts.criuOnPath !== false && fs.existsSync(PRIVATE_CRIU)) {
    env.PATH = `${path.dirname(PRIVATE_CRIU)}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`;
  }
  if (opts.criuNoBreakpoints) env.CRIU_FAULT = '130';
  // containerd 1.6 unpacks a checkpoint image it creates a task from (`docker start --checkpoint`) into a
  // temporary dir there and never removes it: in the node's dir, it goes with the node.
  env.XDG_RUNTIME_DIR = dir;
  Object.assign(env, opts.env);
  // Not detached: if the test process exits without stop(), containerd goes
  // with it; shims and containers are then left to cleanupStaleNodes().
  const local = await startLocalContainerd({
    name,
    dir,
    cgroupParent: cgroupParentOf(dir),
    env,
    privateMounts: opts.privateMounts,
    logLevel: opts.logLevel,
    startTimeoutMs: opts.startTimeoutMs,
    keepDir: keepDirs(),
    cri: opts.cri,
    // Before containerd starts: a parallel run's cleanupStaleNodes must never take it for a stale node.
    files: { owner: JSON.stringify({ pid: process.pid, start: processStartTime(process.pid) }) },
  });
  const stopLocal = local.stop.bind(local);
  const node: TestNode = Object.assign(local, {
    runcRoot: (ns = 'default') => path.join(local.runcRootBase, ns),
    bundleDir: (id: string, ns = 'default') => path.join(local.state, 'io.containerd.runtime.v2.task', ns, id),
    readContainerFile: (id: string, p: string, ns = 'default') =>
      fs.readFileSync(path.join(node.bundleDir(id, ns), 'rootfs', p), 'utf8'),
    async stop() {
      liveNodes.delete(node);
      await cleanupDockerd(dir);
      await stopLocal();
    },
  });
  liveNodes.add(node);
  return node;
}

/** Stop every node this module started and has not stopped yet (for afterAll). */
export async function stopAllNodes(): Promise<void> {
  for (const n of [...liveNodes]) await n.stop();
}
