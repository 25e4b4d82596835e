/**
 * Waiting for a workflow: a progress display while it runs (phase from the
 * workflow, bytes from the running activity's heartbeat), then its result or
 * its failure mapped to an exit code.
 */
import { SingleBar } from 'cli-progress';
import { ApplicationFailure, type WorkflowHandle, WorkflowFailedError } from '@temporalio/client';
import { FailureType } from '../contract/failures.js';
import { SA } from '../contract/search-attributes.js';
import { decodePayloads } from '../temporal/data-converter.js';
import { CliError, EXIT } from './exit-codes.js';
import { bytes, type Out } from './output.js';

const INPUT_TYPES: string[] = [
  FailureType.input,
  FailureType.containerNotFound,
  FailureType.notArchEnabled,
  FailureType.containerNotRunning,
  FailureType.imageMissing,
  FailureType.sharedNotVisible,
];

export function exitCodeFor(type: string | undefined | null): number {
  if (type && INPUT_TYPES.includes(type)) return EXIT.input;
  if (type === FailureType.nodeUnavailable) return EXIT.unavailable;
  if (type === FailureType.compensated) return EXIT.compensated;
  return EXIT.failed;
}

/** The ApplicationFailure at the root of a workflow failure. */
export function rootFailure(err: unknown): { type?: string; message: string; details?: unknown[] } {
  let e: unknown = err;
  let last: { type?: string; message: string; details?: unknown[] } = {
    message: err instanceof Error ? err.message : String(err),
  };
  for (let i = 0; i < 8 && e; i++) {
    if (e instanceof ApplicationFailure) {
      last = { type: e.type ?? undefined, message: e.message, details: e.details ?? undefined };
      break;
    }
    if (e instanceof Error && e.message) last = { message: e.message };
    e = (e as { cause?: unknown }).cause;
  }
  return last;
}

export function failureToCliError(err: unknown, what: string): CliError {
  if (err instanceof CliError) return err;
  const root = rootFailure(err);
  const status = err instanceof WorkflowFailedError ? '' : ` (${(err as Error)?.name ?? 'error'})`;
  return new CliError(`${what} failed${status}: ${root.message}`, exitCodeFor(root.type), {
    type: root.type,
    details: root.details,
  });
}

interface Snapshot {
  phase?: string;
  running: boolean;
  bytesDone?: number;
  bytesTotal?: number;
  activity?: string;
}

async function snapshot(handle: WorkflowHandle): Promise<Snapshot> {
  const d = await handle.describe();
  const phase = d.typedSearchAttributes.get(SA.phase) ?? undefined;
  const running = d.status.name === 'RUNNING';
  let bytesDone: number | undefined;
  let bytesTotal: number | undefined;
  let activity: string | undefined;
  for (const a of d.raw.pendingActivities ?? []) {
    activity = a.activityType?.name ?? undefined;
    // Raw from describe(): still encrypted when a payload key is set.
    const raw = a.heartbeatDetails?.payloads?.[0];
    const payload = raw
      ? (await decodePayloads(handle.client.options.loadedDataConverter.payloadCodecs, [raw]).catch(() => []))[0]
      : undefined;
    if (payload?.data) {
      try {
        const p = JSON.parse(Buffer.from(payload.data).toString('utf8')) as { bytesDone?: number; bytesTotal?: number };
        if (typeof p.bytesTotal === 'number' && p.bytesTotal > 0) {
          bytesDone = p.bytesDone ?? 0;
          bytesTotal = p.bytesTotal;
        }
      } catch {
        // heartbeat details in another encoding: no bytes to show
      }
    }
  }
  return { phase, running, bytesDone, bytesTotal, activity };
}

export interface FollowOptions {
  out: Out;
  label: string;
  timeoutMs?: number;
}

/** Show progress until the workflow closes; resolves its result or throws CliError. */
export async function follow<T>(handle: WorkflowHandle, o: FollowOptions): Promise<T> {
  const bar =
    o.out.isTTY && !o.out.json
      ? new SingleBar({
          format: `${o.label} {phase} [{bar}] {bytes} {duration}s`,
          hideCursor: true,
          clearOnComplete: true,
          barsize: 24,
        })
      : undefined;
  const started = Date.now();
  let lastPhase: string | undefined;
  let done = false;
  const result = handle.result().finally(() => {
    done = true;
  });
  bar?.start(1, 0, { phase: 'starting', bytes: '' });
  const poll = (async () => {
    while (!done) {
      try {
        const s = await snapshot(handle);
        if (bar) {
          const frac = s.bytesTotal ? (s.bytesDone ?? 0) / s.bytesTotal : 0;
          bar.update(frac, {
            phase: s.phase ?? '',
            bytes: s.bytesTotal ? `${bytes(s.bytesDone)} / ${bytes(s.bytesTotal)}` : '',
          });
        } else if (s.phase && s.phase !== lastPhase) {
          o.out.info(`${o.label}: ${s.phase}`);
        }
        lastPhase = s.phase ?? lastPhase;
      } catch {
        // describe can fail transiently; the result decides
      }
      await new Promise((r) => setTimeout(r, 300));
    }
  })();
  let timer: NodeJS.Timeout | undefined;
  const timeout = o.timeoutMs
    ? new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new CliError(
                `${o.label}: still running after ${Math.round(o.timeoutMs! / 1000)} s; it goes on in Temporal (workflow ${handle.workflowId})`,
                EXIT.waitTimeout,
              ),
            ),
          o.timeoutMs,
        );
      })
    : undefined;
  try {
    return (await (timeout ? Promise.race([result, timeout]) : result)) as T;
  } catch (err) {
    throw failureToCliError(err, o.label);
  } finally {
    done = true;
    if (timer) clearTimeout(timer);
    bar?.stop();
    await poll;
    void started;
  }
}

/**
 * Without --wait: give the workflow a moment to get past its checks so bad
 * input or a dead node is reported now, not found later in the UI.
 */
export async function waitPastPreflight(
  handle: WorkflowHandle,
  preflightPhases: string[],
  maxMs = 15_000,
): Promise<string | undefined> {
  const deadline = Date.now() + maxMs;
  for (;;) {
    const d = await handle.describe();
    if (d.status.name !== 'RUNNING') {
      if (d.status.name === 'COMPLETED') return 'completed';
      await handle.result(); // throws the failure
      return d.status.name;
    }
    const phase = d.typedSearchAttributes.get(SA.phase);
    if (phase && !preflightPhases.includes(phase)) return phase;
    if (Date.now() > deadline) return phase ?? undefined;
    await new Promise((r) => setTimeout(r, 150));
  }
}
