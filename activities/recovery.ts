/**
 * What a recovery asks a candidate node before restoring a dead node's job
 * there: does it see the checkpoint (shared storage mounted at the same
 * path), does it have the image (the dead node cannot ship it), how much
 * memory is free, and is a copy of that container already running here.
 */
import { checkpointStoreOf, contractOptions, envListToMap, parseContract } from '../core/env-contract.js';
import { validateContainerId, validateNamespace } from '../contract/ids.js';
import type { ContainerSpec } from '../contract/types.js';
import { freeMemBytes } from '../core/free-memory.js';
import { containerd, mapped, type NodeDeps } from './context.js';

export interface RecoveryProbe {
  node: string;
  seesCheckpoint: boolean;
  hasImage: boolean;
  freeMemBytes: number;
  runningHere: boolean;
  why?: string;
}

export function recoveryActivities(d: NodeDeps) {
  return {
    async probeRecoveryTarget(input: { spec: ContainerSpec }): Promise<RecoveryProbe> {
      return mapped(async () => {
        const { spec } = input;
        validateNamespace(spec.namespace);
        validateContainerId(spec.id);
        const contract = parseContract(envListToMap(spec.env), contractOptions(d.ctx.settings));
        if (!contract.enabled) throw new Error(`${spec.namespace}/${spec.id} is not ARCH-enabled`);
        const store = checkpointStoreOf(contract, spec.namespace, spec.id);
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
            : undefined;
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
