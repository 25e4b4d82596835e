/**
 * All activities of one node. The worker registers them on the node's own
 * task queue (arch-node-<node>), so a workflow picks the node by picking
 * the queue; every node registers the same names.
 */
import { checkpointActivities } from './checkpoint.js';
import { containerActivities } from './containers.js';
import type { NodeDeps } from './context.js';
import { recoveryActivities } from './recovery.js';
import { restoreActivities } from './restore.js';

export type { NodeDeps } from './context.js';

export function createActivities(d: NodeDeps) {
  return {
    ...containerActivities(d),
    ...checkpointActivities(d),
    ...restoreActivities(d),
    ...recoveryActivities(d),
  };
}

export type ArchActivities = ReturnType<typeof createActivities>;
