/**
 * What a recovery asks a candidate node before restoring a dead node's job
 * there: does it see the checkpoint (shared storage mounted at the same
 * path), does it have the image (the dead node cannot ship it), how much
 * memory is free, can its CPU run the job (the instructions the job's
 * checkpoint was taken with), and is a copy of that container already
 * running here.
 */
import {
  checkpointKeyOf,
  checkpointStoreOf,
  contractOptions,
  envListToMap,
  parseContract,
} from '../core/env-contract.js';
import { leaseOf, ownNodeNames, parkedLease, writeLease, type Lease } from '../core/lease.js';
import { trustOf } from '../core/trust.js';
import { validateContainerId, validateNamespace } from '../contract/ids.js';
import type { ContainerSpec } from '../contract/types.js';
import { freeMemBytes } from '../core/free-memory.js';
import { activityLog, containerd, mapped, type NodeDeps } from './context.js';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { MANIFEST_FILE } from '../core/checkpoint-layout.js';
import { parseManifest } from '../core/manifest.js';
import { assertCpuCanRun, thisCpu } from '../core/cpu-features.js';
import { CheckpointUnusableError } from '../contract/errors.js';

export interface RecoveryProbe {
  node: string;
  seesCheckpoint: boolean;
  hasImage: boolean;
  freeMemBytes: number;
  runningHere: boolean;
  why?: string;
}

export function recoveryActivities(d: NodeDeps) {
  const storeOf = (spec: ContainerSpec) => {
    validateNamespace(spec.namespace);
    validateContainerId(spec.id);
    const contract = parseContract(envListToMap(spec.env), contractOptions(d.ctx.settings));
    if (!contract.enabled) throw new Error(`${spec.namespace}/${spec.id} is not ARCH-enabled`);
    return { contract, store: checkpointStoreOf(contract, spec.namespace, spec.id) };
  };
  return {
    /**
     * Take the job from the dead node before restoring it: the lease is
     * parked with the dead node revoked (its copy may never run again, even
     * if it comes back before this restore), one generation on. A job whose
     * lease says it runs on another node already is left there.
     */
    async claimForRecovery(input: {
      spec: ContainerSpec;
      deadNode: string;
    }): Promise<{ claimed: boolean; owner?: string; generation: number }> {
      return mapped(async () => {
        const { spec } = input;
        const { contract, store } = storeOf(spec);
        const log = activityLog(d, { namespace: spec.namespace, container: spec.id, phase: 'claim' });
        const trust = trustOf(d.ctx.settings);
        const lease = await leaseOf(store, trust, log);
        if (
          lease?.state === 'running' &&
          lease.node !== input.deadNode &&
          !ownNodeNames(d.ctx.settings).has(lease.node)
        )
          return { claimed: false, owner: lease.node, generation: lease.generation };
        const base: Lease = lease ?? {
          format: 1,
          state: 'parked',
          node: input.deadNode,
          generation: 0,
          at: new Date().toISOString(),
          reason: 'unrecorded',
          containerId: spec.id,
        };
        const next = parkedLease(base, d.node, 'node-dead', { node: input.deadNode, generation: base.generation });
        await writeLease(store, next, trust, { namespace: spec.namespace, key: checkpointKeyOf(contract, spec.id) });
        log.warn(
          { deadNode: input.deadNode, generation: next.generation, previous: lease ?? null },
          `job taken from dead node ${input.deadNode}: its copy there is revoked`,
        );
        return { claimed: true, generation: next.generation };
      });
    },

    async probeRecoveryTarget(input: { spec: ContainerSpec }): Promise<RecoveryProbe> {
      return mapped(async () => {
        const { spec } = input;
        const { store } = storeOf(spec);
        const cd = containerd(d, spec.namespace);
        const [current, hasImage, task, free] = await Promise.all([
          store.current().catch(() => null),
          cd.hasImage(spec.image),
          cd.task(spec.id).catch(() => undefined),
          freeMemBytes(),
        ]);
        const why = !current
          ? `does not see a checkpoint in ${store.containerDir}`
          : !hasImage
            ? `does not have image ${spec.image}`
            : await cpuCannotRun(current);
        return {
          node: d.node,
          seesCheckpoint: !!current,
          hasImage,
          freeMemBytes: free,
          runningHere: task?.status === 'RUNNING',
          ...(why ? { why } : {}),
        };
      });
    },
  };
}

/**
 * Why this node's CPU cannot run the checkpoint in `dir` (core/cpu-features.ts),
 * or undefined. The manifest is read, not verified: this only steers the
 * choice of node, and the restore there verifies it before it uses it.
 */
async function cpuCannotRun(dir: string): Promise<string | undefined> {
  try {
    const manifest = parseManifest(await fsp.readFile(path.join(dir, MANIFEST_FILE), 'utf8'));
    assertCpuCanRun(manifest.cpu, thisCpu());
    return undefined;
  } catch (err) {
    // Only the CPU is this check's to say: anything else about the checkpoint is the restore's.
    return err instanceof CheckpointUnusableError && err.reason === 'cpu-features' ? err.message : undefined;
  }
}
