/** Every workflow the `arch` task queue runs; the bundle's entry point. */
export { migrateContainer, migrateProgressQuery } from './migrate.js';
export { drainNode } from './drain.js';
export { nodeReclaimWatch, reclaimSignal, reclaimStateQuery } from './reclaim.js';
export { pauseContainers, resumeContainers } from './pause.js';
export { listNodeContainers } from './list.js';
export { nodeProtect, protectSettingsSignal, protectStateQuery, protectUpdate } from './protect.js';
export { clusterLiveness, clusterNodesQuery, nodeSeenSignal } from './cluster.js';
export { recoverContainer, recoverNode } from './recover.js';
