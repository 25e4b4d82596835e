/**
 * Names shared by workers, workflows and the CLI. Workflow code imports this
 * module: no Node APIs here.
 */

/** Every ARCH workflow runs on this queue, on whichever node's worker picks it up. */
export const WORKFLOW_TASK_QUEUE = 'arch';

const NODE_RE = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;

/** Node names become task queue names and workflow ids: keep them to a hostname-like alphabet. */
export function isValidNodeName(node: string): boolean {
  return typeof node === 'string' && NODE_RE.test(node);
}

export const NODE_NAME_RULE =
  'letters, digits, ".", "_" and "-", starting and ending with a letter or digit, at most 63 characters';

/** The node's own activity queue: activities scheduled here run on that node only. */
export function nodeTaskQueue(node: string): string {
  return `arch-node-${node}`;
}

/** Workflow ids: one reclaim watcher per node; readable ids for the rest. */
export const workflowIds = {
  reclaimWatch: (node: string): string => `arch-reclaim-watch-${node}`,
  migrate: (namespace: string, id: string, suffix: string): string => `arch-migrate-${namespace}-${id}-${suffix}`,
  drain: (node: string, suffix: string): string => `arch-drain-${node}-${suffix}`,
  pause: (node: string, suffix: string): string => `arch-pause-${node}-${suffix}`,
  resume: (node: string, suffix: string): string => `arch-resume-${node}-${suffix}`,
  schedule: (name: string): string => `arch-schedule-${name}`,
  /** One periodic-checkpoint workflow per node (workflows/protect.ts). */
  protect: (node: string): string => `arch-protect-${node}`,
  /** One per Temporal namespace: every worker reports to it (workflows/cluster.ts). */
  cluster: (): string => 'arch-cluster',
  recoverNode: (node: string, at: number): string => `arch-recover-node-${node}-${at}`,
  recoverContainer: (namespace: string, id: string, node: string, at: number): string =>
    `arch-recover-${namespace}-${id}-from-${node}-${at}`,
};

/** Visibility query matching every ARCH workflow (they all carry ArchOperation). */
export const ARCH_VISIBILITY_QUERY = 'ArchOperation IS NOT NULL';
