/**
 * Who owns a job: the lease, kept beside its checkpoints (lease.json in the
 * checkpoint's container directory), so every node that sees the storage
 * sees it. A job is *running* on one node, or *parked* (checkpointed and
 * stopped, exited, or taken from a node declared dead), and every restore,
 * recovery and migration increments its generation.
 *
 * arch-runc refuses to create a container whose job runs on another node,
 * or whose lease revokes this node (it was declared dead and its job moved
 * on): so a node that comes back, or a manual create elsewhere, never makes
 * a second copy. A checkpoint is not published by a node that lost the job
 * either (a late one would replace the new owner's).
 *
 * Taking the job is a compare-and-swap: before a node restores or starts it,
 * it claims the next generation (lease.claim-<N+1>, made with O_EXCL). Of two
 * nodes that read the same parked lease at the same instant, exactly one
 * makes the claim; the other is refused as if the job ran elsewhere. O_EXCL
 * rather than a lock: fcntl/flock locks on NFS depend on its lock daemon and
 * die with the process that held them, while an exclusive create is atomic
 * on a local filesystem and on NFSv3 and later (link() to a unique name, the
 * NFSv2 way, would need its own link-count check for no gain). Keyed by
 * generation, a claim never has to be removed to let the next one happen,
 * so a claimer that dies leaves nothing to clean: the next generation (a
 * recovery bumps it) is a new file.
 *
 * The lease is written atomically (beside, then renamed) through the
 * store's symlink-free walk, and signed with the node's key like a manifest:
 * a container never sees the checkpoint directory, and a lease that no
 * trusted node signed is ignored (logged) rather than believed.
 */
import os from 'node:os';
import { errorMessage } from '../contract/errors.js';
import { settingsVars, type Settings } from './settings.js';
import type { CheckpointStore } from './store.js';
import { validRestoreCrashes, type RestoreCrashes } from './restore-crash-record.js';
import { signManifest, verifyManifestSignature, type Trust } from './trust.js';

export interface Lease {
  format: 1;
  state: 'running' | 'parked';
  /** running: where it runs; parked: the node that parked it. */
  node: string;
  generation: number;
  at: string;
  /** Why it changed: restored, started, checkpointed, exited with code N, node-dead, fenced. */
  reason: string;
  containerId: string;
  /** A node declared dead at `generation`: its copy must never run again (cleared by the next owner). */
  revoked?: { node: string; generation: number };
  /** Restores of one checkpoint in a row that crashed soon after (core/restore-crashes.ts): kept across owners. */
  restoreCrashes?: RestoreCrashes;
}

interface LeaseFile {
  /** The lease as signed (exact bytes). */
  lease: string;
  /** The signature file's text over those bytes (absent: the node had no key). */
  signature?: string;
}

export interface LeaseRead {
  lease?: Lease;
  /** Why a lease that is there was not believed. */
  problem?: string;
}

export async function readLease(store: CheckpointStore, trust: Trust): Promise<LeaseRead> {
  let text: string | undefined;
  try {
    text = await store.readLease();
  } catch (err) {
    return { problem: `cannot read the lease: ${errorMessage(err)}` };
  }
  if (text === undefined) return {};
  try {
    const f = JSON.parse(text) as LeaseFile;
    if (typeof f?.lease !== 'string') throw new Error('no lease field');
    verifyManifestSignature(Buffer.from(f.lease), f.signature, trust);
    const lease = JSON.parse(f.lease) as Lease;
    if (
      lease?.format !== 1 ||
      (lease.state !== 'running' && lease.state !== 'parked') ||
      typeof lease.node !== 'string' ||
      !Number.isInteger(lease.generation)
    )
      throw new Error('not an ARCH lease (format 1)');
    // A count of the wrong shape is dropped, not the lease: it only ever makes a restore less likely.
    const { restoreCrashes, ...rest } = lease;
    const crashes = validRestoreCrashes(restoreCrashes);
    return { lease: crashes ? { ...rest, restoreCrashes: crashes } : rest };
  } catch (err) {
    return { problem: `lease not believed: ${errorMessage(err)}` };
  }
}

export async function writeLease(
  store: CheckpointStore,
  lease: Lease,
  trust: Trust,
  owner: { namespace: string; key: string },
): Promise<void> {
  const bytes = JSON.stringify(lease);
  const file: LeaseFile = { lease: bytes, signature: signManifest(Buffer.from(bytes), trust) };
  await store.writeLease(`${JSON.stringify(file)}\n`, { ...owner, containerId: lease.containerId, node: lease.node });
}

/** This node runs the job from now on (a restore or a fresh start): the next generation. */
export function runningLease(prev: Lease | undefined, node: string, containerId: string, reason: string): Lease {
  return {
    format: 1,
    state: 'running',
    node,
    generation: (prev?.generation ?? 0) + 1,
    at: new Date().toISOString(),
    reason,
    containerId,
    ...(prev?.restoreCrashes ? { restoreCrashes: prev.restoreCrashes } : {}),
  };
}

/**
 * Claim the next generation of the job for `node` (see above): the lease
 * this node will write once the job runs here, or why it must not run here
 * (another node claimed that generation first). A claim this node already
 * holds for that generation (a create retried here) is its own.
 */
export async function claimNextLease(
  store: CheckpointStore,
  prev: Lease | undefined,
  node: string,
  mine: ReadonlySet<string>,
  containerId: string,
  owner: { namespace: string; key: string },
  what: string,
): Promise<{ generation: number; refusal?: string }> {
  const generation = (prev?.generation ?? 0) + 1;
  const text = `${JSON.stringify({ node, generation, at: new Date().toISOString(), containerId })}\n`;
  const taken = await store.claimLease(generation, text, { ...owner, containerId, node });
  if (taken === undefined) return { generation };
  let holder = '';
  try {
    holder = String((JSON.parse(taken) as { node?: unknown }).node ?? '');
  } catch {
    // empty or damaged: a claimer that died while writing it, still not this node
  }
  if (holder && mine.has(holder)) return { generation };
  return {
    generation,
    refusal:
      `${what}: another node${holder ? ` (${holder})` : ''} took the job at generation ${generation} at the same time ` +
      `(${prev ? `it was ${prev.state} on ${prev.node} at generation ${prev.generation}` : 'its first start'}); ` +
      `refusing to start a second copy here. Fix: let that node run it (arch-cli nodes / arch-cli ls show where it runs); ` +
      `to run it here, move it with arch-cli migrate`,
  };
}

/** Parked by `node`: stopped there with its checkpoint (same generation). */
export function parkedLease(prev: Lease, node: string, reason: string, revoked?: Lease['revoked']): Lease {
  return {
    ...prev,
    state: 'parked',
    node,
    at: new Date().toISOString(),
    reason,
    ...(revoked ? { revoked, generation: prev.generation + 1 } : {}),
  };
}

/**
 * The names this node's jobs may be recorded under: its own (a worker's
 * --node), and the one arch-runc records, which runs in containerd's
 * environment: ARCH_NODE_NAME from the settings file, else the host name.
 * They should be one (the worker warns when not); until then both are this node.
 */
export function ownNodeNames(settings: Pick<Settings, 'nodeName' | 'configFile'>): ReadonlySet<string> {
  const runcName = settingsVars({ ARCH_CONFIG: settings.configFile }).vars.ARCH_NODE_NAME || os.hostname();
  return new Set([settings.nodeName, runcName]);
}

/**
 * Why this node (known by the names in `mine`) must not run the job
 * (undefined: it may). `what` names the job for the message.
 */
export function leaseRefusal(lease: Lease | undefined, mine: ReadonlySet<string>, what: string): string | undefined {
  if (!lease) return undefined;
  if (lease.state === 'running' && !mine.has(lease.node))
    return (
      `${what}: its job is recorded as running on node ${lease.node} (generation ${lease.generation}, since ${lease.at}); ` +
      `refusing to start a second copy here. Fix: stop it there first (arch-cli migrate moves it, arch-cli finalize on ${lease.node} parks it); ` +
      `if ${lease.node} is gone, its job is recovered elsewhere once the cluster declares it dead (ARCH_NODE_DEAD_AFTER)`
    );
  if (lease.revoked && mine.has(lease.revoked.node))
    return (
      `${what}: this node was declared dead at generation ${lease.revoked.generation} and its job moved on ` +
      `(now generation ${lease.generation}, ${lease.state} on ${lease.node}); refusing to run a stale copy here. ` +
      `Fix: delete this container here; to run the job here again, move it with arch-cli migrate, or finalize it where it runs and create it here`
    );
  return undefined;
}

/** True when this node's copy is stale: the lease gives the job to another node, or revokes this one. */
export function staleHere(lease: Lease | undefined, mine: ReadonlySet<string>): boolean {
  return leaseRefusal(lease, mine, '') !== undefined;
}

/** The lease of a store as this node believes it (a lease not believed is logged and counts as none). */
export async function leaseOf(
  store: CheckpointStore,
  trust: Trust,
  log: { warn: (o: object, msg: string) => void },
): Promise<Lease | undefined> {
  const r = await readLease(store, trust);
  if (r.problem) log.warn({ checkpointDir: store.containerDir, why: r.problem }, "ignoring the job's lease");
  return r.lease;
}
