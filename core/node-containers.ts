import fsp from 'node:fs/promises';
import path from 'node:path';
import type { NodeContext } from './context.js';
import {
  checkpointStoreOf,
  contractOptions,
  effectiveIntervalMs,
  envListToMap,
  parseContract,
  type EnabledContract,
} from './env-contract.js';
import { errorMessage } from '../contract/errors.js';
import type { ManagerName } from '../contract/managers.js';
import { managerOf } from './container-manager.js';
import { readSpec, rootfsOf } from './oci-spec.js';
import { findUpperDir } from './overlay-mount.js';
import type { Runc } from './runc.js';
import type { RuncState } from './runc-state-files.js';
import type { RuncRootsFound } from './runc-roots.js';
import { startRuncListing, type ListingOptions, type NamespaceListing, type RuncListing } from './runc-listing.js';
import { readShimState, type CheckpointFailure, type RestoreFailure } from './shim-state.js';

/**
 * The ARCH containers on this node, found the way the shim sees them: runc's
 * state roots (<base>/<namespace>, for every base core/runc-roots.ts finds:
 * containerd's, CRI runtimes', Docker's) and each bundle's config.json.
 * Needs no containerd connection, so `finalize` works even when containerd
 * itself is struggling on a node that is about to die.
 */
export interface ArchContainer {
  namespace: string;
  id: string;
  runcRoot: string;
  bundle: string;
  pid: number;
  status: string;
  contract: EnabledContract;
  /** Who creates it (core/container-manager.ts), from its namespace and spec annotations. */
  manager: ManagerName;
  rssBytes: number;
  upperDirBytes: number;
  checkpoint?: { dir: string; createdAt: string; sizeBytes: number; node: string; freezeMs?: number };
  /** The checkpoint that failed to restore when this container was created (it started fresh). */
  lastRestoreFailure?: RestoreFailure;
  /** Its last checkpoint that failed, when no newer checkpoint exists. */
  lastCheckpointFailure?: CheckpointFailure;
  /** Its periodic checkpoint interval from its environment or the node's default (core/env-contract.ts). */
  checkpointIntervalMs?: number;
}

/** What `arch-cli ls` and the list activity report of a container (contract/types.ts ContainerSummary). */
export function containerSummary(c: ArchContainer) {
  return {
    namespace: c.namespace,
    id: c.id,
    status: c.status,
    pid: c.pid,
    mode: c.contract.mode,
    manager: c.manager,
    priority: c.contract.priority,
    rssBytes: c.rssBytes,
    upperDirBytes: c.upperDirBytes,
    checkpoint: c.checkpoint
      ? {
          dir: c.checkpoint.dir,
          createdAt: c.checkpoint.createdAt,
          sizeBytes: c.checkpoint.sizeBytes,
          ...(c.checkpoint.freezeMs !== undefined ? { freezeMs: c.checkpoint.freezeMs } : {}),
        }
      : undefined,
    lastRestoreFailure: c.lastRestoreFailure,
    lastCheckpointFailure: c.lastCheckpointFailure,
    ...(c.checkpointIntervalMs ? { checkpointIntervalMs: c.checkpointIntervalMs } : {}),
  };
}

export interface ListOptions extends ListingOptions {
  withSizes?: boolean;
  /** The listing, started by the caller already (core/runc-listing.ts says why). */
  listing?: Promise<RuncListing>;
}

/** The ARCH containers under every runc root of the node, and the roots that were searched. */
export async function findArchContainers(
  ctx: NodeContext,
  opts: ListOptions = {},
): Promise<{ containers: ArchContainer[]; roots: RuncRootsFound }> {
  const { roots, namespaces } = await (opts.listing ?? startRuncListing(ctx.settings, opts));
  for (const w of roots.warnings) ctx.log.warn({ field: w.field }, `runc roots: ${w.field}: ${w.message}`);
  const containers = (await Promise.all(namespaces.map((n) => listNamespace(ctx, n, opts)))).flat();
  return { containers, roots };
}

export async function listArchContainers(ctx: NodeContext, opts: ListOptions = {}): Promise<ArchContainer[]> {
  return (await findArchContainers(ctx, opts)).containers;
}

async function listNamespace(ctx: NodeContext, n: NamespaceListing, opts: ListOptions): Promise<ArchContainer[]> {
  let states;
  try {
    states = await n.states;
  } catch (err) {
    ctx.log.warn(
      { namespace: n.namespace, runcRoot: n.runc.root, err: errorMessage(err) },
      'cannot list runc containers',
    );
    return [];
  }
  const found = await Promise.all(states.map((st) => archContainerOf(ctx, n.runc, n.namespace, st, opts)));
  return found.filter((c): c is ArchContainer => c !== undefined);
}

/** One container runc listed, if it is ARCH's (undefined otherwise, or when its settings are unreadable). */
async function archContainerOf(
  ctx: NodeContext,
  runc: Runc,
  namespace: string,
  st: RuncState,
  opts: ListOptions,
): Promise<ArchContainer | undefined> {
  let spec;
  let contract;
  try {
    spec = await readSpec(st.bundle);
    contract = parseContract(envListToMap(spec.process?.env), contractOptions(ctx.settings));
  } catch (err) {
    ctx.log.warn(
      { namespace, container: st.id, err: errorMessage(err) },
      'skipping container with unreadable or invalid ARCH settings',
    );
    return undefined;
  }
  if (!contract.enabled) return undefined;
  const c: ArchContainer = {
    namespace,
    id: st.id,
    runcRoot: runc.root,
    bundle: st.bundle,
    pid: st.pid,
    status: st.status,
    contract,
    // runc's state has the spec but not containerd's labels: managerOf decides from the rest.
    manager: managerOf({ namespace, annotations: spec.annotations }, ctx.settings.managedNamespaces),
    rssBytes: 0,
    upperDirBytes: 0,
    checkpointIntervalMs: effectiveIntervalMs(contract, ctx.settings.defaultCheckpointIntervalMs),
  };
  // Its sizes, its checkpoint and its shim state are independent reads: all at once (a listing is
  // on a reclaim's critical path, and each read waits for the file system's reply).
  const sizes = async () => {
    // Sizes only shape the plan: a container whose size cannot be read is still listed
    // (a drain or finalize that skipped it would leave its job behind on a node that goes away).
    if (opts.withSizes === false) return;
    const rss = st.pid > 0 ? rssOf(st.pid) : Promise.resolve(0);
    try {
      const upper = await findUpperDir(rootfsOf(st.bundle, spec));
      c.upperDirBytes = upper ? await layerBytes(upper) : 0;
    } catch (err) {
      ctx.log.warn(
        { namespace, container: st.id, err: errorMessage(err) },
        "cannot size the container's writable layer; listed without it",
      );
    }
    c.rssBytes = await rss;
  };
  const checkpoint = async () => {
    const store = checkpointStoreOf(contract, namespace, st.id);
    const dir = await store.current().catch(() => null);
    const m = dir ? await store.readManifest().catch(() => null) : null;
    if (m && dir)
      c.checkpoint = {
        dir,
        createdAt: m.createdAt,
        sizeBytes: m.files.reduce((a, f) => a + f.size, 0),
        node: m.node,
        ...(m.freezeMs !== undefined ? { freezeMs: m.freezeMs } : {}),
      };
  };
  const shimState = async () => {
    const shim = await readShimState(runc.root, st.id);
    c.lastRestoreFailure = shim?.lastRestoreFailure;
    c.lastCheckpointFailure = shim?.lastCheckpointFailure;
  };
  await Promise.all([sizes(), checkpoint(), shimState()]);
  // A failed checkpoint matters until a newer one exists (taken here or, on a shared store, elsewhere).
  const failed = c.lastCheckpointFailure;
  if (failed && c.checkpoint && Date.parse(c.checkpoint.createdAt) > Date.parse(failed.at))
    delete c.lastCheckpointFailure;
  return c;
}

/** Resident memory of the container's cgroup (all its processes), falling back to the init's VmRSS. */
export async function rssOf(pid: number): Promise<number> {
  try {
    const cg = await fsp.readFile(`/proc/${pid}/cgroup`, 'utf8');
    const v1 = /^\d+:(?:[^:]*,)?memory(?:,[^:]*)?:(.*)$/m.exec(cg)?.[1];
    if (v1) {
      const stat = await fsp.readFile(path.join('/sys/fs/cgroup/memory', v1, 'memory.stat'), 'utf8');
      const rss = /^total_rss (\d+)$/m.exec(stat)?.[1];
      if (rss) return Number(rss);
    }
  } catch {
    // fall through
  }
  try {
    const status = await fsp.readFile(`/proc/${pid}/status`, 'utf8');
    return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/**
 * Bytes of the regular files below `dir`, a running container's writable
 * layer: its files come and go while this walks (a job writing a temporary
 * file and renaming it), so an entry gone between the listing and its
 * lstat counts as nothing.
 */
export async function layerBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await fsp.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += await layerBytes(p);
    else if (e.isFile())
      total += await fsp.lstat(p).then(
        (st) => st.size,
        () => 0,
      );
  }
  return total;
}
