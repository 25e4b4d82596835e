/**
 * Data exchanged between workflows, activities and the CLI. Everything here
 * travels through Temporal's JSON payload converter and lands in workflow
 * history: plain data only, no classes, no Buffers, no Node types.
 */

import type { CpuRecord } from './cpu.js';

/**
 * Where a container's checkpoints live: a node's own disk (moved by
 * copying), a shared filesystem or object storage (every node reads them in
 * place).
 */
export type StorageMode = 'local' | 'shared' | 's3';

/** Modes whose checkpoints every node reads in place: nothing is copied between nodes to move a job. */
export function reachableEverywhere(mode: StorageMode | undefined): boolean {
  return mode === 'shared' || mode === 's3';
}

export interface ContainerRef {
  namespace: string;
  id: string;
}

export interface MountSpec {
  type: string;
  src: string;
  dst: string;
  options: string[];
}

/**
 * What it takes to create the container again on any node: captured from
 * the source's containerd record before the checkpoint, replayed by
 * `ctr run` on the target (where arch-runc then restores the checkpoint).
 */
export interface ContainerSpec extends ContainerRef {
  image: string;
  /** The full process environment (ARCH_* included): it decides where the checkpoint lives. */
  env: string[];
  args: string[];
  cwd?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** User bind mounts only; containerd adds /proc, /dev, ... itself. */
  mounts: MountSpec[];
  netHost: boolean;
  mode: StorageMode;
  priority: number;
}

export interface ContainerSummary extends ContainerRef {
  status: string;
  pid: number;
  mode?: StorageMode;
  /** Who creates the container (contract/managers.ts): ARCH moves only containerd's; absent from older workers. */
  manager?: string;
  priority: number;
  rssBytes?: number;
  upperDirBytes?: number;
  /** freezeMs: how long its last checkpoint froze the job (absent for a stop, or from older ARCH). */
  checkpoint?: { dir: string; createdAt: string; sizeBytes: number; freezeMs?: number };
  /** The periodic checkpoint interval in force for it, when it has one (its own, the node's or `arch-cli protect`). */
  checkpointIntervalMs?: number;
  /** The checkpoint that failed to restore when the container was created (it started fresh): core/shim-state.ts. */
  lastRestoreFailure?: { reason: string; message: string; at: string; checkpointDir: string };
  /** Its last checkpoint that failed, when none has succeeded since (core/shim-state.ts): absent from older workers. */
  lastCheckpointFailure?: { message: string; at: string; field?: string };
}

/** A checkpoint published on a node, as the other activities need it. */
export interface CheckpointInfo extends ContainerRef {
  node: string;
  dir: string;
  containerDir: string;
  mode: StorageMode;
  /** sha256 of manifest.json: binds transfer and restore to exactly this checkpoint. */
  manifestSha256: string;
  createdAt: string;
  sizeBytes: number;
  timings: Record<string, number>;
  totalMs: number;
  /** How long the job was frozen (a checkpoint that left it running). */
  freezeMs?: number;
  /** True when an earlier attempt had already checkpointed (retry after a lost result). */
  reused: boolean;
  /** The CPU the manifest records (contract/cpu.ts): a node that restores it must have its instructions. */
  cpu?: CpuRecord;
}

/** Which checkpoint the restore must use: the one the source published. */
export interface ExpectedCheckpoint {
  manifestSha256: string;
  /** Identity fields of that manifest: a copy on this node has the same ones. */
  node: string;
  createdAt: string;
}

/** A source node's permission to fetch one checkpoint (or image) over HTTP. */
export interface TransferOffer {
  url: string;
  token: string;
  expiresAt: string;
}

export interface ReceiveResult {
  /** copied: streamed and verified; present: already there (shared storage, or an earlier attempt). */
  kind: 'copied' | 'present';
  dir: string;
  bytes: number;
  files: number;
  ms: number;
}

export interface RestoreResult extends ContainerRef {
  node: string;
  pid: number;
  /** The checkpoint the shim restored from (evidence read on the node). */
  restoredFrom: string;
  /** True when a previous attempt had already restored it (retry after a lost result). */
  alreadyRunning: boolean;
  timings: Record<string, number>;
  ms: number;
}

export interface PhaseTiming {
  phase: string;
  node: string;
  /** Wall time of the activity as the workflow saw it (includes queueing). */
  ms: number;
  /** Time spent inside the activity, as it reported. */
  activityMs?: number;
  /** Steps of the same group ran at the same time. */
  parallelGroup?: string;
}

export interface ActivityTimeouts {
  /** How long a node may take to pick up a task before it is considered gone. */
  nodeStartTimeoutMs?: number;
  restoreAttempts?: number;
  checkpointTimeoutMs?: number;
  transferTimeoutMs?: number;
  restoreTimeoutMs?: number;
  /** Drains: no checkpoint attempt (retries included) may run past this instant (epoch ms). */
  checkpointDeadlineEpochMs?: number;
}

export interface MigrateInput extends ContainerRef, ActivityTimeouts {
  from: string;
  to: string;
}

export type MigrateOutcome = 'migrated' | 'compensated';

export interface MigrateResult extends ContainerRef {
  from: string;
  to: string;
  outcome: MigrateOutcome;
  /** Where the container runs now. */
  runningOn: string;
  checkpoint: { sizeBytes: number; mode: StorageMode; transferred: 'copied' | 'present' };
  phases: PhaseTiming[];
  totalMs: number;
  /** Sum of the activities' own durations: totalMs minus this is orchestration overhead. */
  activityMs: number;
  cleanupError?: string;
}

export interface MigrateProgress {
  phase: string;
  from: string;
  to: string;
  phases: PhaseTiming[];
  error?: string;
}

export interface Selector {
  /** Only this containerd namespace. */
  namespace?: string;
  /** Only these container ids (any namespace unless namespace is set). */
  ids?: string[];
}

export interface DrainInput extends ActivityTimeouts {
  node: string;
  /** Nodes to restore on, round-robin; empty = checkpoint only. */
  targets: string[];
  /** ISO time by which every checkpoint must be published. */
  deadline: string;
  parallelism?: number;
  selector?: Selector;
  reason?: string;
}

/**
 * skipped: not started, because the plan did not expect it to finish before
 * the deadline and there was still not enough time left when a lane freed;
 * it keeps running on the drained node, its previous checkpoint (if any)
 * untouched.
 * left-to-manager: Docker or Kubernetes (see `manager`) created it, so it is
 * checkpointed and stopped but not restored on a target: its orchestrator
 * creates it again, and arch-runc restores it then.
 */
export type DrainOutcome =
  'migrated' | 'checkpointed' | 'checkpoint-failed' | 'restore-failed' | 'compensated' | 'skipped' | 'left-to-manager';

/** One container in a drain plan (the planDrain activity's answer). */
export interface PlannedContainer extends ContainerRef {
  priority: number;
  /** Resident memory + writable layer: what the checkpoint writes. */
  bytes: number;
  /** Estimated duration of its checkpoint. */
  estimatedMs: number;
  /** Expected finish, ms after plannedAt. */
  expectedFinishMs: number;
  /** Expected to finish before the deadline (minus the safety margin). */
  expectedToFit: boolean;
}

export interface DrainPlanSummary {
  /** Execution order: expected to fit first, then the others (best effort). */
  order: PlannedContainer[];
  parallelism: number;
  /** How many are expected to fit. */
  expectedToFit: number;
  /** "ns/id" of those not expected to finish before the deadline. */
  notExpectedToFit: string[];
  /** deadline - plannedAt - safetyMarginMs (may be <= 0). */
  budgetMs: number;
  plannedAt: string;
  /** Disk throughput the estimate used (measured on the node, or the default). */
  throughputBytesPerSec: number;
  safetyMarginMs: number;
}

export interface DrainContainerResult extends ContainerRef {
  outcome: DrainOutcome;
  target?: string;
  runningOn?: string;
  checkpointMs?: number;
  transferMs?: number;
  restoreMs?: number;
  /** Checkpoint published before the deadline. */
  checkpointedInTime?: boolean;
  /** What the plan said before the checkpoints started. */
  expectedToFit: boolean;
  sizeBytes?: number;
  /** Set for a container an orchestrator manages (contract/managers.ts). */
  manager?: string;
  error?: string;
}

export interface DrainResult {
  node: string;
  targets: string[];
  deadline: string;
  reason?: string;
  containers: DrainContainerResult[];
  /** The plan, as reported before the checkpoints started. */
  plan: {
    parallelism: number;
    budgetMs: number;
    plannedAt: string;
    throughputBytesPerSec: number;
    notExpectedToFit: string[];
  };
  /** Every checkpoint published before the deadline. */
  withinDeadline: boolean;
  checkpointPhaseMs: number;
  totalMs: number;
}

export interface ReclaimSignal {
  /** ISO time, or absent for the watcher's default lead time. */
  deadline?: string;
  reason?: string;
  targets?: string[];
}

export interface ReclaimWatchInput {
  node: string;
  targets: string[];
  /** Used when a reclaim signal carries no deadline (seconds from receipt). */
  defaultDeadlineSec?: number;
  /** Carried over continueAsNew. */
  history?: ReclaimRecord[];
  pending?: ReclaimSignal[];
  /** Continue-as-new after this many drains (tests lower it). */
  maxDrainsPerRun?: number;
}

export interface ReclaimRecord {
  receivedAt: string;
  deadline: string;
  reason?: string;
  drainWorkflowId: string;
  status: 'running' | 'completed' | 'failed';
  migrated?: number;
  /** Not moved off the node: checkpoint or restore failed, running there again (compensated) or not started (skipped). */
  failed?: number;
  /** Left on the node: not expected to fit and not started (also counted in failed). */
  skipped?: number;
  /** Checkpointed and stopped, for Docker or Kubernetes to create again (not failed). */
  leftToManager?: number;
  /** "ns/id" the drain's plan did not expect to finish before the deadline. */
  notExpectedToFit?: string[];
  withinDeadline?: boolean;
  error?: string;
}

export interface ReclaimWatchState {
  node: string;
  targets: string[];
  status: 'watching' | 'draining';
  current?: ReclaimRecord;
  history: ReclaimRecord[];
  pending: number;
  runsSinceStart: number;
}

export interface PauseInput extends ActivityTimeouts {
  node: string;
  selector?: Selector;
  parallelism?: number;
  /** Set by schedules: the schedule name, for the UI. */
  schedule?: string;
}

export interface PauseItemResult extends ContainerRef {
  outcome: 'paused' | 'resumed' | 'skipped' | 'failed';
  ms?: number;
  sizeBytes?: number;
  /** Set for a container an orchestrator manages: paused, it is left to it; resume does not create it. */
  manager?: string;
  /** What happened to a managed container, or why it was skipped. */
  note?: string;
  error?: string;
}

export interface PauseResult {
  node: string;
  action: 'pause' | 'resume';
  containers: PauseItemResult[];
  totalMs: number;
}

export interface ListNodeInput {
  node: string;
  namespaces?: string[];
  nodeStartTimeoutMs?: number;
}

/** Node settings the worker hands its periodic-checkpoint workflow (a signal at each worker start). */
export interface ProtectNodeSettings {
  /** ARCH_MAX_CONCURRENT_CHECKPOINTS. */
  maxConcurrent: number;
}

/** One container's periodic checkpoints as the node's protect workflow knows them. */
export interface ProtectedContainer extends ContainerRef {
  /** The interval in force (absent: not protected). */
  intervalMs?: number;
  /** Where it comes from: the container's environment (or the node's default), or `arch-cli protect`. */
  source: 'container' | 'protect' | 'off';
  /** When the next one is due (ISO). */
  nextAt?: string;
  running: boolean;
  last?: PeriodicCheckpoint;
  /** Checkpoints taken / failed by this workflow (across continueAsNew). */
  taken: number;
  failed: number;
}

export interface PeriodicCheckpoint {
  startedAt: string;
  ms: number;
  ok: boolean;
  freezeMs?: number;
  sizeBytes?: number;
  error?: string;
}

export interface ProtectWatchInput {
  node: string;
  settings?: ProtectNodeSettings;
  /** `arch-cli protect` intervals by "ns/id": ms, or 0 for off. Carried over continueAsNew. */
  overrides?: Record<string, number>;
  /**
   * `arch-cli protect` choices handed over by another node's protect workflow
   * for containers moving here, by "ns/id": kept until the container is
   * listed here or until `until` (ISO) passes. Carried over continueAsNew.
   */
  incoming?: Record<string, { intervalMs: number; until: string; from: string }>;
  /** Last checkpoint and counts by "ns/id", carried over continueAsNew. */
  carried?: Record<string, Pick<ProtectedContainer, 'last' | 'taken' | 'failed' | 'nextAt'>>;
  /** How often the node's containers are listed again (default 10 s). */
  discoverEveryMs?: number;
  /** Jitter as a fraction of the interval (default 0.1: ±10 %). */
  jitter?: number;
  /** Continue-as-new after this many wake-ups (tests lower it). */
  maxRoundsPerRun?: number;
}

/** A container leaves this node for `to` (a migration or a drain): its `protect` choice goes with it. */
export interface ProtectHandOver extends ContainerRef {
  to: string;
}

/** A `protect` choice arriving with a container from node `from` (sent by that node's protect workflow). */
export interface ProtectCarry extends ContainerRef {
  from: string;
  /** ms, or 0 for off. */
  intervalMs: number;
}

export interface ProtectRequest extends ContainerRef {
  /** ms (at least 5 s), 0 for off, null for the container's own interval again. */
  intervalMs: number | null;
}

export interface ProtectWatchState {
  node: string;
  maxConcurrent: number;
  running: number;
  containers: ProtectedContainer[];
  lastDiscovery?: { at: string; ok: boolean; error?: string };
  runs: number;
}
