/**
 * Helpers every ARCH workflow uses: node-pinned activity proxies with the
 * right timeouts, input validation that fails as ApplicationFailure (a bare
 * Error would only fail the workflow *task* and stall the workflow), phase
 * tracking for the UI, and failure classification.
 */
import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  proxyActivities,
  setCurrentDetails,
  TimeoutFailure,
  upsertSearchAttributes,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { ArchActivities } from '../activities/index.js';
import { attributePairs, type ArchAttributes } from '../contract/search-attributes.js';
import { FailureType, NON_RETRYABLE } from '../contract/failures.js';
import { isValidNodeName, NODE_NAME_RULE, nodeTaskQueue } from '../contract/names.js';
import { validateContainerId, validateNamespace } from '../contract/ids.js';
import type { ActivityTimeouts, ContainerRef } from '../contract/types.js';

export const DEFAULTS = {
  nodeStartTimeoutMs: 30_000,
  restoreAttempts: 3,
  checkpointTimeoutMs: 10 * 60_000,
  transferTimeoutMs: 30 * 60_000,
  restoreTimeoutMs: 5 * 60_000,
} as const;

export type Kind = 'quick' | 'checkpoint' | 'periodic' | 'transfer' | 'restore' | 'cleanup';

/**
 * Activities of one node. scheduleToStart makes a node without a live worker
 * fail fast (it is never retried); heartbeatTimeout notices a worker that dies
 * mid-activity, and the retry then goes to the restarted (or no) worker;
 * scheduleToClose bounds the whole thing, retries included.
 */
export function onNode(node: string, kind: Kind, t: ActivityTimeouts = {}): ArchActivities {
  const start = t.nodeStartTimeoutMs ?? DEFAULTS.nodeStartTimeoutMs;
  const retry = (maximumAttempts: number) => ({
    initialInterval: '1s',
    backoffCoefficient: 2,
    maximumInterval: '20s',
    maximumAttempts,
    nonRetryableErrorTypes: NON_RETRYABLE,
  });
  let o: ActivityOptions;
  switch (kind) {
    case 'quick':
      o = { startToCloseTimeout: '60s', retry: retry(3) };
      break;
    case 'cleanup':
      o = { startToCloseTimeout: '120s', retry: retry(5) };
      break;
    case 'checkpoint':
      // On cancellation wait for the activity's own answer: a checkpoint that
      // finished anyway has stopped the container, and the workflow must
      // know it to restore it.
      o = {
        startToCloseTimeout: t.checkpointTimeoutMs ?? DEFAULTS.checkpointTimeoutMs,
        heartbeatTimeout: '30s',
        retry: retry(3),
        cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      };
      break;
    case 'periodic':
      // One attempt: the next period is the retry, and a late copy is worth less than the next fresh one.
      o = {
        startToCloseTimeout: t.checkpointTimeoutMs ?? DEFAULTS.checkpointTimeoutMs,
        heartbeatTimeout: '30s',
        retry: retry(1),
      };
      break;
    case 'transfer':
      o = {
        startToCloseTimeout: t.transferTimeoutMs ?? DEFAULTS.transferTimeoutMs,
        heartbeatTimeout: '30s',
        retry: retry(5),
      };
      break;
    case 'restore':
      o = {
        startToCloseTimeout: t.restoreTimeoutMs ?? DEFAULTS.restoreTimeoutMs,
        heartbeatTimeout: '10s',
        retry: retry(t.restoreAttempts ?? DEFAULTS.restoreAttempts),
      };
      break;
  }
  const attempts = o.retry!.maximumAttempts!;
  const perAttempt = toMs(o.startToCloseTimeout!) + start;
  let scheduleToClose = attempts * perAttempt + 60_000;
  // A checkpoint that ends after the node is gone is worthless: retries stop at the deadline.
  if (kind === 'checkpoint' && t.checkpointDeadlineEpochMs !== undefined) {
    scheduleToClose = Math.max(5_000, Math.min(scheduleToClose, t.checkpointDeadlineEpochMs - Date.now()));
  }
  return proxyActivities<ArchActivities>({
    ...o,
    taskQueue: nodeTaskQueue(node),
    scheduleToStartTimeout: Math.min(start, scheduleToClose),
    scheduleToCloseTimeout: scheduleToClose,
  });
}

function toMs(d: string | number): number {
  if (typeof d === 'number') return d;
  const m = /^(\d+)(ms|s|m)$/.exec(d);
  if (!m) return 60_000;
  return Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 's' ? 1000 : 60_000);
}

/** Bad input: fail the workflow at once, with the field and its fix. */
export function inputFailure(message: string): ApplicationFailure {
  return ApplicationFailure.create({ type: FailureType.input, message, nonRetryable: true });
}

export function checkNode(node: unknown, field: string): string {
  if (typeof node !== 'string' || !isValidNodeName(node))
    throw inputFailure(`${field}: "${String(node)}" is not a node name. Fix: use ${NODE_NAME_RULE}`);
  return node;
}

export function checkRef(ref: Partial<ContainerRef>): ContainerRef {
  try {
    return { namespace: validateNamespace(ref.namespace as string), id: validateContainerId(ref.id as string) };
  } catch (err) {
    throw inputFailure((err as Error).message);
  }
}

export function checkDeadline(v: unknown, field = 'deadline'): string {
  const t = typeof v === 'string' ? Date.parse(v) : NaN;
  if (Number.isNaN(t))
    throw inputFailure(`${field}: "${String(v)}" is not an ISO time. Fix: pass e.g. 2026-01-01T12:00:00Z`);
  return new Date(t).toISOString();
}

/** Search attributes + current details: what the UI shows while the workflow runs. */
export function track(attrs: ArchAttributes, details?: string): void {
  upsertSearchAttributes(attributePairs(attrs));
  if (details !== undefined) setCurrentDetails(details);
}

/** The ApplicationFailure type behind an activity/child failure; NodeUnavailable for scheduleToStart timeouts. */
export function failureTypeOf(err: unknown): string | undefined {
  let e: unknown = err;
  for (let i = 0; i < 6 && e; i++) {
    if (e instanceof ApplicationFailure) return e.type ?? undefined;
    if (e instanceof TimeoutFailure && e.timeoutType === 'SCHEDULE_TO_START') return FailureType.nodeUnavailable;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** The innermost message: what actually went wrong, without the wrappers. */
export function rootMessage(err: unknown): string {
  let e: unknown = err;
  let msg = err instanceof Error ? err.message : String(err);
  for (let i = 0; i < 6 && e; i++) {
    if (e instanceof TimeoutFailure && e.timeoutType === 'SCHEDULE_TO_START') {
      return `no worker picked the task up in time (${msg})`;
    }
    if (e instanceof Error && e.message && !(e instanceof ActivityFailure)) msg = e.message;
    e = (e as { cause?: unknown }).cause;
  }
  return msg;
}

/** A node without a live worker, said plainly. */
export function nodeUnavailable(node: string, startTimeoutMs: number, err: unknown): ApplicationFailure {
  return ApplicationFailure.create({
    type: FailureType.nodeUnavailable,
    message: `node ${node} did not answer within ${Math.round(startTimeoutMs / 1000)} s: no arch-worker polls task queue ${nodeTaskQueue(node)}. Fix: start \`arch-worker --node ${node}\` on that node, or check the node name`,
    nonRetryable: true,
    cause: err instanceof Error ? err : undefined,
  });
}

/** Run fns with at most `limit` at once; results in input order. */
export async function boundedAll<T, R>(
  items: T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  return out;
}

export const refString = (r: ContainerRef): string => `${r.namespace}/${r.id}`;
