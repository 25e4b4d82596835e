/**
 * What every activity of one node shares, and the two rules they all follow:
 * errors leave as ApplicationFailures a workflow can act on, and long work
 * heartbeats its progress and stops when the activity is cancelled.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { Containerd, isNotFound } from '../core/containerd.js';
import type { NodeContext } from '../core/context.js';
import { ArchInputError, CheckpointUnusableError, errorMessage } from '../contract/errors.js';
import type { Logger } from '../core/log.js';
import { FailureType } from '../contract/failures.js';
import type { TransferServer } from '../core/transfer.js';
import { OfferGoneError } from '../core/transfer.js';

export interface NodeDeps {
  node: string;
  /** settings.nodeName is the node; settings.runcRootBase this node's runc roots. */
  ctx: NodeContext;
  containerdAddress: string;
  ctr?: string;
  /** cgroup parent for containers this node creates (default: ctr's /NAMESPACE/ID). */
  cgroupParent?: string;
  /** The runc wrapper restored containers are created with. */
  archRunc: string;
  /** Namespaces this node manages; absent = every namespace under runcRootBase. */
  namespaces?: string[];
  transfer: TransferServer;
  /** CA for fetching from other nodes' transfer servers (ARCH_TRANSFER_TLS_CA): https only when set. */
  transferCa?: Buffer;
  /** Where restored containers' stdout/stderr go (<logDir>/<ns>/<id>.log); absent = discarded. */
  logDir?: string;
  /** Scratch space: image exports/imports, throughput history. */
  stateDir: string;
  /** A restored container must keep running this long before restore counts as done. */
  verifyStableMs: number;
  /** Lifetime of a transfer offer. */
  offerTtlMs: number;
}

export function containerd(d: NodeDeps, namespace: string): Containerd {
  return new Containerd({
    address: d.containerdAddress,
    namespace,
    ctr: d.ctr,
    runcRoot: d.ctx.settings.runcRootBase,
    cgroupParent: d.cgroupParent,
  });
}

/** Logger with the fields an operator filters on. */
export function activityLog(d: NodeDeps, fields: { namespace?: string; container?: string; phase: string }): Logger {
  let wf: Record<string, string> = {};
  try {
    const info = Context.current().info;
    wf = {
      activity: info.activityType,
      workflowId: info.workflowExecution?.workflowId ?? '',
      attempt: String(info.attempt),
    };
  } catch {
    // called outside an activity (tests, CLI): no Temporal fields
  }
  return d.ctx.log.child({ ...fields, ...wf });
}

/** Map domain errors to ApplicationFailures whose type the workflows understand. */
export function toFailure(err: unknown): unknown {
  if (err instanceof ApplicationFailure) return err;
  if (err instanceof ArchInputError) {
    return ApplicationFailure.create({
      type: FailureType.input,
      message: err.message,
      nonRetryable: true,
      details: [{ field: err.field, fix: err.fix }],
    });
  }
  if (err instanceof CheckpointUnusableError) {
    return ApplicationFailure.create({
      type: FailureType.checkpointUnusable,
      message: err.message,
      details: [{ reason: err.reason }],
    });
  }
  if (err instanceof OfferGoneError) {
    return ApplicationFailure.create({ type: FailureType.offerGone, message: err.message, nonRetryable: true });
  }
  if (isNotFound(err)) {
    return ApplicationFailure.create({
      type: FailureType.containerNotFound,
      message: errorMessage(err),
      nonRetryable: true,
    });
  }
  return err;
}

export function fail(type: string, message: string, details?: unknown): ApplicationFailure {
  return ApplicationFailure.create({
    type,
    message,
    nonRetryable: true,
    details: details === undefined ? undefined : [details],
  });
}

export interface Progress {
  phase: string;
  bytesDone?: number;
  bytesTotal?: number;
  [k: string]: unknown;
}

/**
 * Run fn while heartbeating the latest progress every second. Heartbeats are
 * what lets the server notice a dead worker (heartbeatTimeout) and what
 * delivers cancellation: fn gets the activity's AbortSignal.
 */
export async function withHeartbeat<T>(
  initial: Progress,
  fn: (signal: AbortSignal, report: (p: Progress) => void) => Promise<T>,
): Promise<T> {
  let ctx: Context | undefined;
  try {
    ctx = Context.current();
  } catch {
    ctx = undefined;
  }
  let last = initial;
  const beat = () => ctx?.heartbeat(last);
  beat();
  const timer = setInterval(beat, 1000);
  try {
    return await fn(ctx?.cancellationSignal ?? new AbortController().signal, (p) => {
      last = p;
    });
  } catch (err) {
    // Cancelled: whatever the interrupted tool said, report a cancellation
    // (the SDK only does so for CancelledFailure/AbortError), not a failure
    // that a retry policy would run again.
    if (ctx?.cancellationSignal.aborted && !(err instanceof CancelledFailure)) {
      throw new CancelledFailure(`cancelled: ${errorMessage(err)}`);
    }
    throw toFailure(err);
  } finally {
    clearInterval(timer);
  }
}

/** Short activities: just the error mapping. */
export async function mapped<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toFailure(err);
  }
}
