import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from './arch-node.js';
import { ensureImage, ensureTestImage, PAUSE_IMAGE, SLEEP_SANDBOX_IMAGE } from './images.js';

/**
 * An ARCH node driven the way the kubelet drives it: containerd's CRI plugin
 * (enabled in the node's own config, see core/local-node.ts localContainerdConfig) and
 * the real `crictl`, with a runtime handler `arch` whose runc is arch-runc.
 * Pods use the host network unless runPod asks for one of their own (made by
 * the test CNI plugins below: no traffic beyond the pod), and a cgroup parent
 * below the node's, so the node's clean-up removes them.
 */

/** containerd's namespace for everything the CRI plugin creates. */
export const CRI_NAMESPACE = 'k8s.io';
export const ARCH_HANDLER = 'arch';
/** Where scripts/install-test-clients.sh puts crictl (ARCH_CRICTL overrides). */
export const CRICTL =
  process.env.ARCH_CRICTL ?? path.join(process.env.ARCH_TEST_TOOLS ?? '/opt/arch/test-tools', 'bin/crictl');

/** CRI NamespaceMode (k8s.io/cri-api): POD = shared with the sandbox, CONTAINER = the container's own. */
export type PidMode = 'pod' | 'container';
/** The pod's network: the host's (hostNetwork), or a namespace of its own made by the test CNI plugins. */
export type PodNetwork = 'node' | 'pod';
const NAMESPACE_MODE = { pod: 0, container: 1, node: 2 } as const;

export interface Pod {
  id: string;
  name: string;
  pidMode: PidMode;
  network: PodNetwork;
  /** The pod config crictl create needs again for each container. */
  configFile: string;
}

export interface CounterOptions {
  name: string;
  attempt: number;
  env: Record<string, string>;
  command?: string[];
  /** Another image than the counter's (imported in the CRI namespace by the caller). */
  image?: string;
  /** Host directories bound in (CRI mounts), as the kubelet binds a pod's volumes. */
  mounts?: { containerPath: string; hostPath: string }[];
  /** A terminal (a pod spec's `tty: true`): its output reaches the log through it. */
  tty?: boolean;
  /** More of the container's security context (readonly_rootfs, capabilities, no_new_privs, seccomp...). */
  securityContext?: Record<string, unknown>;
}

/**
 * CNI plugins for pods with a network namespace of their own, in the node's
 * own CNI dirs (core/local-node.ts: conf_dir = bin_dir = <node>/cni). They
 * work inside the pod's namespace only, with no traffic anywhere: `loopback`
 * brings lo up (containerd's CRI plugin runs it for every pod); `arch-test-net`
 * makes the pod's eth0, one end of a veth pair whose other end stays in the
 * pod too, with an address of its own per pod (10.88.7.2, .3, ...: a new pod
 * has another IP, as in a cluster).
 */
function installTestCni(dir: string): void {
  const cni = path.join(dir, 'cni');
  /** A CNI plugin that answers ADD with `add` (its result on stdout), VERSION, and nothing else (DEL: the pod's namespace goes, and all in it). */
  const plugin = (name: string, add: string[]) =>
    fs.writeFileSync(
      path.join(cni, name),
      [
        '#!/bin/sh',
        'case "$CNI_COMMAND" in',
        'ADD)',
        '  in_pod() { nsenter --net="$CNI_NETNS" "$@" >&2 || exit 1; }',
        ...add.map((l) => `  ${l}`),
        '  ;;',
        'VERSION) printf \'{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}\' ;;',
        'esac',
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
  plugin('loopback', ['in_pod ip link set lo up', 'printf \'{"cniVersion":"0.4.0"}\'']);
  plugin('arch-test-net', [
    `n=$(cat ${cni}/next-address 2>/dev/null || echo 2); [ "$n" -gt 250 ] && n=2; echo $((n + 1)) > ${cni}/next-address`,
    'in_pod ip link add "$CNI_IFNAME" type veth peer name peer0',
    'in_pod ip addr add "10.88.7.$n/24" dev "$CNI_IFNAME"',
    'in_pod ip link set "$CNI_IFNAME" up',
    'in_pod ip link set peer0 up',
    'printf \'{"cniVersion":"0.4.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"version":"4","address":"10.88.7.%s/24","interface":0}]}\' "$CNI_IFNAME" "$CNI_NETNS" "$n"',
  ]);
  fs.writeFileSync(
    path.join(cni, '10-arch-test.conflist'),
    JSON.stringify({ cniVersion: '0.4.0', name: 'arch-test', plugins: [{ type: 'arch-test-net' }] }),
  );
}

export interface CriTestNode extends ArchTestNode {
  crictl(args: string[], timeoutMs?: number): Promise<string>;
  runPod(name: string, pidMode: PidMode, network?: PodNetwork): Promise<Pod>;
  /** crictl create + start of the counter (or `command` in its image) in `pod`; returns the container id. */
  startCounter(pod: Pod, opts: CounterOptions): Promise<string>;
  /** `crictl inspect`'s status.state (CONTAINER_RUNNING, CONTAINER_EXITED...). */
  containerState(containerId: string): Promise<string>;
  removePod(pod: Pod): Promise<void>;
  /** Force-remove every pod this node started and has not removed (after a failed test). */
  removeAllPods(): Promise<void>;
}

export function requireCrictl(): string {
  if (!fs.existsSync(CRICTL)) {
    throw new Error(
      `crictl not found at ${CRICTL}: run scripts/install-test-clients.sh crictl (or set ARCH_CRICTL to a crictl binary)`,
    );
  }
  return CRICTL;
}

/**
 * `sandbox`: the pod's PID 1 when containers share its PID namespace. `pause`
 * (default) reaps zombies as Kubernetes' pause does; `sleep` does not, as a
 * home-made sandbox image might not: orphans of a stopped container stay
 * zombies and keep their PIDs.
 */
export async function startCriNode(
  name: string,
  overrides: Record<string, string | undefined> = {},
  opts: { sandbox?: 'pause' | 'sleep' } = {},
): Promise<CriTestNode> {
  const crictl = requireCrictl();
  const sandbox = opts.sandbox === 'sleep' ? SLEEP_SANDBOX_IMAGE : PAUSE_IMAGE;
  const base = await startArchNode(name, overrides, {
    cri: { sandboxImage: sandbox.ref, runtimes: { [ARCH_HANDLER]: ARCH_RUNC_BIN } },
  });
  const n = base as CriTestNode;
  installTestCni(n.dir);
  // Its own crictl config: flags alone would still read /etc/crictl.yaml if present.
  const crictlConfig = path.join(n.dir, 'crictl.yaml');
  fs.writeFileSync(
    crictlConfig,
    `runtime-endpoint: unix://${n.address}\nimage-endpoint: unix://${n.address}\ntimeout: 60\n`,
  );
  const cri = n.containerd.withNamespace(CRI_NAMESPACE);
  const pods = new Set<string>();
  const run = async (args: string[], timeoutMs = 90_000): Promise<string> => {
    const r = await execa(crictl, ['--config', crictlConfig, ...args], { reject: false, timeout: timeoutMs });
    if (r.exitCode !== 0) {
      const archLog = fs.existsSync(n.archLog)
        ? fs.readFileSync(n.archLog, 'utf8').trimEnd().split('\n').slice(-8)
        : [];
      throw new Error(
        `crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}\n` +
          `containerd log:\n${n.logTail(8)}\narch-runc log:\n${archLog.join('\n')}`,
      );
    }
    return String(r.stdout).trim();
  };
  const removeAllPods = async (): Promise<void> => {
    for (const id of pods) {
      await run(['rmp', '-f', id], 60_000).catch(() => undefined);
      pods.delete(id);
    }
  };
  const stopBase = n.stop.bind(n);
  n.stop = async () => {
    // The CRI plugin's own records go first (pods, their containers, shm mounts); the node's clean-up does the rest.
    await removeAllPods();
    await stopBase();
  };
  try {
    await ensureImage(cri, sandbox);
    await ensureTestImage(cri);
    // The CRI plugin learns of imported images from containerd's events: wait until it knows both.
    for (const ref of [sandbox.ref, n.image]) {
      await waitFor(`CRI image ${ref}`, () => run(['inspecti', ref], 10_000).then(() => true), 30_000);
    }
    // And of the test CNI config (it watches its conf dir): pods of their own network need it.
    await waitFor(
      'CRI NetworkReady',
      async () => {
        const info = JSON.parse(await run(['info'], 10_000)) as {
          status: { conditions: { type: string; status: boolean }[] };
        };
        return info.status.conditions.some((c) => c.type === 'NetworkReady' && c.status) ? true : undefined;
      },
      30_000,
    );
  } catch (err) {
    await n.stop();
    throw err;
  }
  const podsDir = path.join(n.dir, 'pods');
  Object.assign(n, {
    crictl: run,
    removeAllPods,
    async runPod(podName: string, pidMode: PidMode, network: PodNetwork = 'node'): Promise<Pod> {
      const logDir = path.join(podsDir, podName);
      fs.mkdirSync(logDir, { recursive: true });
      const configFile = path.join(logDir, 'pod.json');
      fs.writeFileSync(
        configFile,
        JSON.stringify({
          metadata: { name: podName, namespace: 'arch-test', uid: crypto.randomUUID(), attempt: 0 },
          log_directory: logDir,
          linux: {
            cgroup_parent: `${n.cgroupParent}/${podName}`,
            security_context: {
              namespace_options: { network: NAMESPACE_MODE[network], pid: NAMESPACE_MODE[pidMode] },
            },
          },
        }),
      );
      const id = await run(['runp', '--runtime', ARCH_HANDLER, configFile]);
      pods.add(id);
      return { id, name: podName, pidMode, network, configFile };
    },
    async startCounter(pod: Pod, opts: CounterOptions) {
      const file = path.join(path.dirname(pod.configFile), `${opts.name}-${opts.attempt}.json`);
      fs.writeFileSync(
        file,
        JSON.stringify({
          metadata: { name: opts.name, attempt: opts.attempt },
          image: { image: opts.image ?? n.image },
          ...(opts.command ? { command: opts.command } : {}),
          ...(opts.mounts
            ? { mounts: opts.mounts.map((m) => ({ container_path: m.containerPath, host_path: m.hostPath })) }
            : {}),
          envs: Object.entries(opts.env).map(([key, value]) => ({ key, value })),
          ...(opts.tty ? { tty: true } : {}),
          log_path: `${opts.name}-${opts.attempt}.log`,
          linux: {
            security_context: {
              ...opts.securityContext,
              namespace_options: { network: NAMESPACE_MODE[pod.network], pid: NAMESPACE_MODE[pod.pidMode] },
            },
          },
        }),
      );
      const id = await run(['create', pod.id, file, pod.configFile]);
      await run(['start', id]);
      return id;
    },
    async containerState(containerId: string) {
      return (JSON.parse(await run(['inspect', containerId])) as { status: { state: string } }).status.state;
    },
    async removePod(pod: Pod) {
      await run(['stopp', pod.id]);
      await run(['rmp', pod.id]);
      pods.delete(pod.id);
    },
  });
  return n;
}
