import fs from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './atomic-file.js';
import { SPEC_FILE } from './checkpoint-layout.js';

/** The parts of an OCI runtime spec (config.json) ARCH reads or changes: the one type of it, for bundles, checkpoints and containerd's record. */
export interface OciMount {
  destination: string;
  source?: string;
  type?: string;
  options?: string[];
}
export interface OciSpec {
  ociVersion?: string;
  process?: { env?: string[]; cwd?: string; args?: string[]; terminal?: boolean };
  root?: { path: string; readonly?: boolean };
  mounts?: OciMount[];
  annotations?: Record<string, string>;
  linux?: { cgroupsPath?: string; namespaces?: { type: string; path?: string }[]; [k: string]: unknown };
  [k: string]: unknown;
}

/** A mount's destination as ARCH compares them: normalized, no trailing slash. */
export function mountDestination(destination: string | undefined): string {
  return path.posix.normalize(`${destination ?? ''}/`).replace(/(.)\/+$/, '$1');
}

/** A bind mount (a host directory or file bound in), by its type or its options. */
export function isBindMount(m: OciMount): boolean {
  return m.type === 'bind' || (m.options ?? []).some((o) => o === 'bind' || o === 'rbind');
}

/** The mount the container sees at `destination`: the last one there (it hides those before). */
export function mountAt(spec: OciSpec | undefined, destination: string): OciMount | undefined {
  const want = mountDestination(destination);
  return [...(spec?.mounts ?? [])].reverse().find((m) => mountDestination(m.destination) === want);
}

export async function readSpec(bundle: string): Promise<OciSpec> {
  return JSON.parse(await fs.readFile(path.join(bundle, SPEC_FILE), 'utf8')) as OciSpec;
}

/** Rewrite config.json atomically (a half-written spec would break the create). */
export async function writeSpec(bundle: string, spec: OciSpec): Promise<void> {
  await writeFileAtomic(path.join(bundle, SPEC_FILE), JSON.stringify(spec));
}

/**
 * The PID namespace the container joins instead of getting its own: a pod's
 * (CRI namespace_options.pid = POD, Kubernetes' shareProcessNamespace), or
 * another container's. Undefined when it has its own (or the host's).
 */
export function joinedPidNamespace(spec: OciSpec): string | undefined {
  const linux = spec.linux as { namespaces?: { type?: string; path?: string }[] } | undefined;
  return linux?.namespaces?.find((n) => n.type === 'pid')?.path || undefined;
}

export function rootfsOf(bundle: string, spec: OciSpec): string {
  const p = spec.root?.path ?? 'rootfs';
  return path.isAbsolute(p) ? p : path.join(bundle, p);
}

/**
 * Shared-filesystem mode: bind the shared work dir at the container path and
 * make it the working directory. Idempotent (a restore re-applies it to the
 * same bundle): an existing mount at that destination is replaced.
 */
export function withWorkdirMount(spec: OciSpec, hostDir: string, containerPath: string): OciSpec {
  const mounts = (spec.mounts ?? []).filter((m) => m.destination !== containerPath);
  mounts.push({ destination: containerPath, type: 'bind', source: hostDir, options: ['rbind', 'rw'] });
  return { ...spec, mounts, process: { ...spec.process, cwd: containerPath } };
}
