/**
 * From a `reclaim` signal to the drain it caused: the node's reclaim watcher
 * records each signal (deadline + reason) with the id of the drain child
 * workflow it starts. `arch-cli reclaim --wait` follows that drain; the
 * worker waits for it to have started before acknowledging a cloud notice
 * (Azure: StartRequests only once the drain runs).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from '@temporalio/client';
import type { ReclaimRecord, ReclaimSignal, ReclaimWatchState } from '../contract/types.js';
import { workflowIds } from '../contract/names.js';

/** The watcher's record of this signal (current or in its history), once it has one. */
export function recordOf(state: ReclaimWatchState, signal: ReclaimSignal): ReclaimRecord | undefined {
  const deadline = signal.deadline ? new Date(Date.parse(signal.deadline)).toISOString() : undefined;
  const matches = (r: ReclaimRecord | undefined): r is ReclaimRecord =>
    r !== undefined &&
    (deadline === undefined || r.deadline === deadline) &&
    (signal.reason === undefined || r.reason === signal.reason);
  if (matches(state.current)) return state.current;
  return [...state.history].reverse().find(matches);
}

export interface WaitDrainOptions {
  /** Give up (undefined) after this long. */
  timeoutMs: number;
  everyMs?: number;
  signal?: AbortSignal;
}

/**
 * Wait until the node's reclaim watcher has started the drain for `signal`
 * (the drain workflow exists on the server) and return its workflow id;
 * undefined when that did not happen within timeoutMs. Query errors (a
 * watcher between runs, a server hiccup) are retried until then.
 */
export async function waitForReclaimDrain(
  client: Client,
  node: string,
  signal: ReclaimSignal,
  o: WaitDrainOptions,
): Promise<string | undefined> {
  const end = Date.now() + o.timeoutMs;
  const watcher = client.workflow.getHandle(workflowIds.reclaimWatch(node));
  let drainId: string | undefined;
  while (Date.now() < end && !o.signal?.aborted) {
    try {
      if (!drainId) drainId = recordOf(await watcher.query<ReclaimWatchState>('state'), signal)?.drainWorkflowId;
      if (drainId) {
        await client.workflow.getHandle(drainId).describe(); // throws until the child is started
        return drainId;
      }
    } catch {
      // not yet
    }
    await sleep(o.everyMs ?? 200, undefined, { signal: o.signal }).catch(() => undefined);
  }
  return undefined;
}
