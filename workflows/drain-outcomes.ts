import type { DrainContainerResult } from '../contract/types.js';

/**
 * How a drain went, counted once for the drain's own summary, the reclaim
 * watcher's record and the CLI's exit code. A container that ended up running
 * on the drained node again (compensated) or was left there (skipped) was not
 * moved off it: for a node that is going away, that is a failure.
 */
export interface DrainCounts {
  migrated: number;
  checkpointed: number;
  /** Checkpointed and stopped for Docker or Kubernetes to create again: done, not failed. */
  leftToManager: number;
  /** Not moved off the node and not safely checkpointed there: everything else. */
  failed: number;
  /** Of failed: not started, not expected to fit before the deadline. */
  skipped: number;
}

export function drainCounts(containers: Pick<DrainContainerResult, 'outcome'>[]): DrainCounts {
  const n = (o: DrainContainerResult['outcome']) => containers.filter((c) => c.outcome === o).length;
  const migrated = n('migrated');
  const checkpointed = n('checkpointed');
  const leftToManager = n('left-to-manager');
  return {
    migrated,
    checkpointed,
    leftToManager,
    failed: containers.length - migrated - checkpointed - leftToManager,
    skipped: n('skipped'),
  };
}
