/**
 * A container's identity as containerd holds it, reduced to what `ctr run`
 * needs to create it again elsewhere. Pure functions: unit-tested.
 */
import path from 'node:path';
import type { ContainerInfo, RunOptions } from '../core/containerd.js';
import { envListToMap, parseContract, type ContractOptions } from '../core/env-contract.js';
import type { ContainerSpec, MountSpec } from '../contract/types.js';

/** Mounts containerd (ctr) puts in every spec by itself; replaying them would duplicate them. */
const RUNTIME_MOUNTS = new Set([
  '/proc',
  '/dev',
  '/dev/pts',
  '/dev/shm',
  '/dev/mqueue',
  '/sys',
  '/sys/fs/cgroup',
  '/run',
]);
/** Added by ctr --net-host from the host; the target adds its own. */
const HOST_NET_FILES = new Set(['/etc/hosts', '/etc/resolv.conf', '/etc/hostname']);

export function userMounts(mounts: NonNullable<ContainerInfo['spec']['mounts']>): MountSpec[] {
  const out: MountSpec[] = [];
  for (const m of mounts) {
    if (RUNTIME_MOUNTS.has(m.destination) || HOST_NET_FILES.has(m.destination)) continue;
    const opts = m.options ?? [];
    const isBind = m.type === 'bind' || opts.includes('bind') || opts.includes('rbind');
    if (!isBind || !m.source) continue;
    out.push({ type: 'bind', src: m.source, dst: m.destination, options: opts.length ? opts : ['rbind'] });
  }
  return out;
}

/** Throws ArchInputError when the container's ARCH_* variables are invalid; returns undefined when ARCH is off. */
export function specFromInfo(info: ContainerInfo, namespace: string, opts: ContractOptions): ContainerSpec | undefined {
  const env = info.spec.process?.env ?? [];
  const contract = parseContract(envListToMap(env), opts);
  if (!contract.enabled) return undefined;
  const namespaces = info.spec.linux?.namespaces ?? [];
  return {
    namespace,
    id: info.id,
    image: info.image,
    env,
    args: info.spec.process?.args ?? [],
    cwd: info.spec.process?.cwd,
    labels: { ...info.labels },
    annotations: { ...(info.spec.annotations ?? {}) },
    mounts: userMounts(info.spec.mounts ?? []),
    netHost: namespaces.length > 0 && !namespaces.some((n) => n.type === 'network'),
    mode: contract.mode,
    priority: contract.priority,
  };
}

export interface RunPlacement {
  archRunc: string;
  runcRoot: string;
  logDir?: string;
}

/** `ctr run` options that create the container on this node through arch-runc. */
export function runOptionsFor(spec: ContainerSpec, p: RunPlacement): RunOptions {
  return {
    image: spec.image,
    id: spec.id,
    env: spec.env,
    args: spec.args,
    cwd: spec.cwd && spec.cwd !== '/' ? spec.cwd : undefined,
    labels: spec.labels,
    annotations: spec.annotations,
    mounts: spec.mounts,
    netHost: spec.netHost,
    runcBinary: p.archRunc,
    runcRoot: p.runcRoot,
    logFile: p.logDir ? path.join(p.logDir, spec.namespace, `${spec.id}.log`) : undefined,
    detach: true,
  };
}
