/** Shared by the container contract's parser (core/checkpoint-interval.ts) and the protect workflow. */

/** The least periodic checkpoint interval: shorter, a job would spend a noticeable share of its time frozen. */
export const MIN_CHECKPOINT_INTERVAL_MS = 5_000;
