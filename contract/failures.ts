/**
 * ApplicationFailure types ARCH raises. Workflows match on them (which
 * errors to retry, when to compensate); the CLI maps them to exit codes.
 * Workflow code imports this module: plain data only.
 */
export const FailureType = {
  /** Bad input: a field and its fix are in the message. Never retried. */
  input: 'ArchInputError',
  containerNotFound: 'ContainerNotFound',
  notArchEnabled: 'NotArchEnabled',
  containerNotRunning: 'ContainerNotRunning',
  /** The checkpoint is missing, corrupt or from an unknown format. */
  checkpointUnusable: 'CheckpointUnusable',
  /** The source's transfer offer expired or its worker restarted: offer again. */
  offerGone: 'TransferOfferGone',
  imageMissing: 'ImageMissing',
  /** arch-runc started the container fresh instead of restoring it. */
  restoreFellBack: 'RestoreFellBack',
  /** Shared storage mode, but the target does not see the checkpoint. */
  sharedNotVisible: 'SharedCheckpointNotVisible',
  /** No worker for that node picked the task up in time. */
  nodeUnavailable: 'NodeUnavailable',
  /** Restore on the target failed; the container runs again on the source. */
  compensated: 'MigrationCompensated',
  /** Restore failed on the target and on the source: the checkpoint is kept. */
  migrationFailed: 'MigrationFailed',
  drainFailed: 'DrainFailed',
} as const;

export type FailureTypeName = (typeof FailureType)[keyof typeof FailureType];

/** Failures retrying cannot fix: activity retry policies list these as non-retryable. */
export const NON_RETRYABLE: string[] = [
  FailureType.input,
  FailureType.containerNotFound,
  FailureType.notArchEnabled,
  FailureType.containerNotRunning,
  FailureType.offerGone,
  FailureType.imageMissing,
  FailureType.sharedNotVisible,
];
