import fs from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './atomic-file.js';
import { SPEC_FILE } from './checkpoint-layout.js';
import { withIoUringRefused } from './seccomp-io-uring.js';

/** The parts of an OCI runtime spec (config.json) ARCH reads or changes: the one type of it, for bundles, checkpoints and containerd's record. */
export interface OciMount {
  destination: string;
  source?: string;
  type?: string;
  options?: string[];
}
export interface OciSpec {
  ociVersion?: string;
  process?: {
    env?: string[];
    cwd?: string;
    args?: string[];
    terminal?: boolean;
    user?: { uid?: number; gid?: number };
  };
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

/** One range of a user namespace's id map (OCI linux.uidMappings / gidMappings). */
export interface IdMapping {
  containerID: number;
  hostID: number;
  size: number;
}

/**
 * The host uid and gid that the container's processes run as: the spec's
 * process.user (0 when unset), through the user namespace's id maps when
 * there is one (Docker's userns-remap, Kubernetes' hostUsers: false). An id
 * outside every range is the kernel's overflow id (65534) there, which owns
 * nothing the container may write: undefined then.
 */
export function hostUserOf(spec: OciSpec): { uid: number; gid: number } | undefined {
  const linux = spec.linux as { uidMappings?: IdMapping[]; gidMappings?: IdMapping[] } | undefined;
  const uid = mapId(spec.process?.user?.uid ?? 0, linux?.uidMappings);
  const gid = mapId(spec.process?.user?.gid ?? 0, linux?.gidMappings);
  return uid === undefined || gid === undefined ? undefined : { uid, gid };
}

function mapId(id: number, maps: IdMapping[] | undefined): number | undefined {
  if (!Number.isInteger(id) || id < 0) return undefined;
  if (!maps || maps.length === 0) return id;
  const m = maps.find((r) => id >= r.containerID && id < r.containerID + r.size);
  return m ? m.hostID + (id - m.containerID) : undefined;
}

/**
 * Runtime defaults that no checkpoint could take, turned off for an ARCH
 * container whose owner did not set them:
 *
 * - io_uring, refused by the container's seccomp filter (ENOSYS, see
 *   core/seccomp-io-uring.ts): no checkpoint can take an io_uring, and libuv
 *   from 1.49 opens one per event loop whatever its settings say. Always:
 *   an owner cannot have a checkpointable job that holds one.
 * - libuv's SQPOLL ring for files (UV_USE_IO_URING=0), for libuv 1.45 to
 *   1.48, whose only switch it is: libuv then uses its thread pool, as
 *   upstream Node.js does by default.
 * - Go's multipath TCP (GODEBUG multipathtcp=0): from Go 1.24 every TCP
 *   listener of a Go program is an MPTCP socket where the kernel has MPTCP,
 *   and CRIU cannot dump one ("Unsupported proto 262"), so a Go job serving
 *   anything (an HTTP metrics endpoint, gRPC) could never be checkpointed.
 *   Added to the owner's GODEBUG settings, which keep every other key.
 *
 * An owner who sets UV_USE_IO_URING or GODEBUG's multipathtcp keeps their
 * value (and a checkpoint refused with the reason when it is on). Returns
 * `spec` itself when there is nothing to add, so a restore can apply it to
 * the same bundle again.
 */
export function withCheckpointableRuntimes(spec: OciSpec): OciSpec {
  const env = spec.process?.env ?? [];
  let out = env;
  if (!env.some((e) => e.startsWith('UV_USE_IO_URING='))) out = [...out, 'UV_USE_IO_URING=0'];
  // The first GODEBUG is the one a Go program reads.
  const at = out.findIndex((e) => e.startsWith('GODEBUG='));
  const godebug = at < 0 ? undefined : out[at]!.slice('GODEBUG='.length);
  if (godebug === undefined) out = [...out, 'GODEBUG=multipathtcp=0'];
  else if (!godebug.split(',').some((kv) => kv.trim().startsWith('multipathtcp=')))
    out = out.map((e, i) => (i === at ? `GODEBUG=${godebug ? `${godebug},` : ''}multipathtcp=0` : e));
  const withEnv = out === env ? spec : { ...spec, process: { ...spec.process, env: out } };
  return withIoUringRefused(withEnv);
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

/**
 * The spec with each bind mount whose host source is itself a symlink
 * given that symlink's target. runc's mount follows such a symlink, and
 * CRIU's restore must bind the same file: runc names the source to CRIU
 * (its external mount map), and CRIU 4's mount engine opens it without
 * following a last symlink (open_tree with AT_SYMLINK_NOFOLLOW), so the
 * restore failed ("Can't remount … with MS_PRIVATE: No such file or
 * directory"). Docker's `--init` binds /usr/bin/docker-init, a symlink to
 * tini on Debian: every such container started over. The sources are the
 * orchestrator's, not the container's; ARCH's own work dir, bound from a
 * descriptor it holds (/proc/self/fd/N), is left as it is. Returns `spec`
 * itself when nothing changes.
 */
export async function withResolvedBindSources(spec: OciSpec): Promise<OciSpec> {
  let changed = false;
  const mounts = await Promise.all(
    (spec.mounts ?? []).map(async (m) => {
      if (!isBindMount(m) || !m.source || !path.isAbsolute(m.source) || m.source.startsWith('/proc/')) return m;
      const st = await fs.lstat(m.source).catch(() => undefined);
      if (!st?.isSymbolicLink()) return m;
      const real = await fs.realpath(m.source).catch(() => undefined);
      if (!real) return m;
      changed = true;
      return { ...m, source: real };
    }),
  );
  return changed ? { ...spec, mounts } : spec;
}
