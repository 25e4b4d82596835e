import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import * as tar from 'tar';
import { killRuncContainers, unmountUnder } from '../../core/local-node.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from './arch-node.js';
import { DOCKER_SUBDIR } from './containerd-node.js';
import { buildTestImageArchive, TEST_IMAGE_REF } from './images.js';

/**
 * A Docker engine on a test node: Debian's dockerd (docker.io) pointed at
 * the node's own containerd, with its own data-root, exec-root and socket
 * under the node's directory, and arch-runc added as the runtime "arch" in
 * its daemon.json (what the README tells users to do). Its runc roots are
 * <exec-root>/runtime-runc/moby: the node's ARCH settings name the
 * daemon.json (ARCH_DOCKER_CONFIG) so that ARCH finds them by itself.
 *
 * The client is /usr/bin/docker, Debian's, of the daemon's version
 * (/usr/local/bin/docker may be newer than the daemon speaks).
 */
export const DOCKER_CLIENT = '/usr/bin/docker';
export const DOCKERD = '/usr/sbin/dockerd';

export function dockerInstalled(): boolean {
  return fs.existsSync(DOCKER_CLIENT) && fs.existsSync(DOCKERD);
}

export interface DockerNode {
  node: ArchTestNode;
  /** <node>/docker: daemon.json, data/, exec/, d.sock, dockerd.log. */
  dir: string;
  daemonJson: string;
  execRoot: string;
  /** Where Docker gives runc its state: <exec-root>/runtime-runc. */
  runcRootBase: string;
  image: string;
  docker(
    args: string[],
    opts?: { reject?: boolean; timeoutMs?: number },
  ): Promise<{ stdout: string; exitCode: number; stderr: string }>;
  /** Stop dockerd as a shutdown does (it stops its containers: live-restore is off), then start it again. */
  restartDaemon(): Promise<void>;
  logTail(lines?: number): string;
  stop(): Promise<void>;
}

/** The counter image as a `docker load` archive: the OCI archive plus the manifest.json Docker 20.10 reads. */
async function dockerArchive(work: string): Promise<string> {
  const { archive, digest } = await buildTestImageArchive();
  const out = path.join(work, `counter-docker-${digest.slice(7, 19)}.tar`);
  if (fs.existsSync(out)) return out;
  const dir = `${out}.dir`;
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  await tar.x({ file: archive, cwd: dir });
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'blobs/sha256', digest.slice(7)), 'utf8')) as {
    config: { digest: string };
    layers: { digest: string }[];
  };
  const blob = (d: string) => `blobs/sha256/${d.slice(7)}`;
  fs.writeFileSync(
    path.join(dir, 'manifest.json'),
    JSON.stringify([
      {
        Config: blob(manifest.config.digest),
        RepoTags: [TEST_IMAGE_REF],
        Layers: manifest.layers.map((l) => blob(l.digest)),
      },
    ]),
  );
  await tar.c({ cwd: dir, file: `${out}.tmp`, mtime: new Date(0) }, fs.readdirSync(dir));
  fs.renameSync(`${out}.tmp`, out);
  fs.rmSync(dir, { recursive: true, force: true });
  return out;
}

/** The node settings Docker's runc root discovery needs (ARCH_DOCKER_CONFIG is added once the daemon.json exists). */
export const DOCKER_NODE_SETTINGS = { ARCH_DISCOVER_RUNC_ROOTS: '1' } as const;

export async function startDockerNode(
  name: string,
  overrides: Record<string, string | undefined> = {},
): Promise<DockerNode> {
  return addDocker(await startArchNode(name, { ...DOCKER_NODE_SETTINGS, ...overrides }));
}

/**
 * Starts a dockerd on a running node (started with DOCKER_NODE_SETTINGS), e.g. a
 * CRI node, so that one node carries Kubernetes, Docker and plain ctr containers.
 * Its stop() stops the node too. Workers must start after this: it adds to the
 * node's settings.
 */
export async function addDocker(node: ArchTestNode): Promise<DockerNode> {
  const name = node.name;
  const dir = path.join(node.dir, DOCKER_SUBDIR);
  const daemonJson = path.join(dir, 'daemon.json');
  const execRoot = path.join(dir, 'exec');
  const sock = path.join(dir, 'd.sock');
  const logFile = path.join(dir, 'dockerd.log');
  let proc: ResultPromise | undefined;
  const logTail = (lines = 40): string => {
    try {
      return fs.readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  };
  const docker: DockerNode['docker'] = async (args, opts = {}) => {
    const r = await execa(DOCKER_CLIENT, ['-H', `unix://${sock}`, ...args], {
      reject: false,
      timeout: opts.timeoutMs ?? 60_000,
      env: { DOCKER_CONFIG: path.join(dir, 'client') },
    });
    if (r.exitCode !== 0 && opts.reject !== false)
      throw new Error(`docker ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}\ndockerd log:\n${logTail(15)}`);
    return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 };
  };
  const startDaemon = async () => {
    // cleanup: true kills dockerd if the test process exits without stop(); the node's cleanup finds the rest.
    proc = execa(DOCKERD, ['--config-file', daemonJson], {
      stdin: 'ignore',
      stdout: { file: logFile, append: true },
      stderr: { file: logFile, append: true },
      reject: false,
      cleanup: true,
    });
    const p = proc;
    let exited = false;
    void p.then(() => (exited = true));
    await waitFor(
      'dockerd to answer',
      async () => {
        if (exited) throw new Error(`dockerd exited:\n${logTail()}`);
        return (await docker(['version', '--format', '{{.Server.Version}}'], { reject: false, timeoutMs: 5_000 }))
          .exitCode === 0
          ? true
          : undefined;
      },
      60_000,
    );
  };
  const stopDaemon = async () => {
    const p = proc;
    proc = undefined;
    if (!p?.pid) return;
    p.kill('SIGTERM');
    // dockerd stops its containers first (10 s each at most), then exits.
    const done = await Promise.race([p.then(() => true), sleep(60_000, false, { ref: false })]);
    if (!done) {
      p.kill('SIGKILL');
      await p;
    }
  };
  const stop = async () => {
    const errors: string[] = [];
    if (proc) {
      const ids = (await docker(['ps', '-aq'], { reject: false })).stdout.split('\n').filter(Boolean);
      if (ids.length) await docker(['rm', '-f', ...ids], { reject: false });
      await stopDaemon().catch((e: unknown) => errors.push(String(e)));
    }
    await killRuncContainers(path.join(execRoot, 'runtime-runc'), true);
    const left = await unmountUnder(dir);
    if (left.length) errors.push(`still mounted: ${left.join(', ')}`);
    await node.stop();
    if (errors.length) process.emitWarning(`docker node ${name}: ${errors.join('; ')}`);
  };
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(
      daemonJson,
      JSON.stringify(
        {
          'data-root': path.join(dir, 'data'),
          'exec-root': execRoot,
          pidfile: path.join(dir, 'dockerd.pid'),
          hosts: [`unix://${sock}`],
          containerd: node.address,
          runtimes: { arch: { path: ARCH_RUNC_BIN } },
          // No networking of the host is touched: containers get a loopback-only network namespace.
          iptables: false,
          'ip-forward': false,
          'ip-masq': false,
          bridge: 'none',
          // `docker checkpoint` is experimental in Docker 20.10.
          experimental: true,
          'live-restore': false,
        },
        null,
        2,
      ),
    );
    // The node's ARCH settings: Docker's runc root is found through this daemon.json.
    fs.appendFileSync(node.archConfig, `ARCH_DOCKER_CONFIG=${daemonJson}\nARCH_CONTAINERD_CONFIG=${node.configFile}\n`);
    await startDaemon();
    await docker(['load', '-i', await dockerArchive(node.dir)], { timeoutMs: 120_000 });
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return {
    node,
    dir,
    daemonJson,
    execRoot,
    runcRootBase: path.join(execRoot, 'runtime-runc'),
    image: TEST_IMAGE_REF,
    docker,
    restartDaemon: async () => {
      await stopDaemon();
      await startDaemon();
    },
    logTail,
    stop,
  };
}
