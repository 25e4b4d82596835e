/**
 * Node liveness, recovery and ownership: what workers report to the cluster
 * workflow, what it knows, and what a recovery returns. Workflow code
 * imports this module: plain data only.
 */
import type { ContainerRef, ContainerSpec, StorageMode } from './types.js';

/** One ARCH container a node runs, as its worker reports it. */
export interface ProtectedContainer extends ContainerRef {
  status: string;
  mode: StorageMode;
  /** Who creates it (contract/managers.ts): a managed one is never recreated by ARCH. */
  manager: string;
  /** How to create it again elsewhere (absent when containerd could not describe it). */
  spec?: ContainerSpec;
  /** Where its checkpoints live (the checkpoint's container directory). */
  checkpointDir: string;
  /** When its current checkpoint was taken (absent: none yet). */
  lastCheckpointAt?: string;
  /** When its last checkpoint failed, if none has succeeded since (`arch-cli ls` says why). */
  lastCheckpointFailedAt?: string;
  /** Its ownership generation (core/lease.ts), when it has a lease. */
  generation?: number;
}

/** A container a node stopped because its job had moved on (core/lease.ts says where). */
export interface StaleStop extends ContainerRef {
  at: string;
  owner: string;
  generation: number;
}

/** What a worker tells the cluster workflow on each beat. */
export interface NodeReport {
  node: string;
  /** The node's own clock when it built the report. */
  at: string;
  /** ARCH_NODE_DEAD_AFTER of this node: silent this long, it is declared dead. */
  deadAfterMs: number;
  fenceAfterMs: number;
  freeMemBytes: number;
  containers: ProtectedContainer[];
  /** Containers it stopped since the last report: their job runs elsewhere now. */
  staleStopped?: StaleStop[];
  /** Set once after the node fenced itself (it had lost Temporal). */
  fenced?: { at: string; stopped: string[] };
}

export type RecoveryOutcome = 'recovered' | 'not-recoverable' | 'left-to-manager' | 'already-elsewhere' | 'failed';

/** The reason given, by name, for a container whose checkpoint only the dead node had. */
export const NOT_RECOVERABLE_LOCAL = "not recoverable: checkpoint on the dead node's disk";

export interface RecoveredContainer extends ContainerRef {
  outcome: RecoveryOutcome;
  runningOn?: string;
  /** The recovery workflow of this container. */
  workflowId?: string;
  reason?: string;
  attempts?: { node: string; error: string }[];
}

export interface NodeRecoveryInput {
  deadNode: string;
  declaredDeadAt: string;
  /** Its containers, from its last report. */
  containers: ProtectedContainer[];
  /** Live nodes and their free memory (from their reports) at the time. */
  candidates: { node: string; freeMemBytes: number }[];
  nodeStartTimeoutMs?: number;
}

export interface NodeRecoveryResult {
  deadNode: string;
  containers: RecoveredContainer[];
  totalMs: number;
}

export interface ContainerRecoveryInput {
  deadNode: string;
  spec: ContainerSpec;
  candidates: { node: string; freeMemBytes: number }[];
  nodeStartTimeoutMs?: number;
}

/** One node as the cluster workflow knows it. */
export interface NodeLiveness {
  node: string;
  firstSeen: string;
  /** Temporal's time of its last report. */
  lastSeen: string;
  status: 'alive' | 'dead';
  declaredDeadAt?: string;
  /** It reported again after being declared dead. */
  cameBackAt?: string;
  report: NodeReport;
  recovery?: { workflowId: string; startedAt: string; result?: NodeRecoveryResult };
  /** What happened to it, newest last (short lines, a few kept). */
  events: string[];
}

export interface ClusterInput {
  nodes?: NodeLiveness[];
  /** Continue-as-new after this many reports (tests lower it). */
  maxReportsPerRun?: number;
}

export interface ClusterView {
  nodes: NodeLiveness[];
  /** Temporal's time when the view was taken. */
  at: string;
}
