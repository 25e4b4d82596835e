/**
 * What a workflow's history says about its timing: when it started and
 * closed, and every activity it ran (scheduled, started, closed, input and
 * result), read in one place for the tests and the benchmarks.
 *
 * Orchestration overhead is derived from it: wall time from start to close
 * minus the time spent inside activities (the union of every activity
 * attempt's started→closed interval, so parallel activities are not
 * counted twice). What remains is Temporal and ARCH's workflow code: task
 * dispatch, workflow tasks, the gaps between activities.
 */
import type { WorkflowHandle } from '@temporalio/client';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { decodePayloads } from './data-converter.js';

// temporal.api.enums.v1.EventType values (see register.ts for why they are spelled out).
const EV = {
  started: 1,
  completed: 2,
  failed: 3,
  workflowTaskStarted: 6,
  workflowTaskCompleted: 7,
  activityScheduled: 10,
  activityStarted: 11,
  activityCompleted: 12,
  activityFailed: 13,
  activityTimedOut: 14,
  activityCanceled: 16,
} as const;

type Num = { toNumber(): number } | number | null | undefined;

/** An interval of server time, epoch ms. */
interface Span {
  from: number;
  to: number;
}

interface Ts {
  seconds?: Num;
  nanos?: number | null;
}

const num = (v: Num): number => (typeof v === 'number' ? v : (v?.toNumber() ?? 0));
const ms = (t: Ts | null | undefined): number => (t ? num(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6) : NaN);

type Payloads = { payloads?: { data?: Uint8Array | null }[] | null } | null | undefined;

/** The first JSON payload, parsed; undefined if absent or not JSON (e.g. encrypted). */
function firstPayload(p: Payloads): unknown {
  try {
    const data = p?.payloads?.[0]?.data;
    return data ? JSON.parse(Buffer.from(data).toString('utf8')) : undefined;
  } catch {
    return undefined;
  }
}

export interface HistoryEvent {
  eventId?: Num;
  eventTime?: Ts | null;
  eventType?: number | null;
  activityTaskScheduledEventAttributes?: {
    activityType?: { name?: string | null } | null;
    taskQueue?: { name?: string | null } | null;
    input?: Payloads;
  } | null;
  activityTaskStartedEventAttributes?: { scheduledEventId?: Num } | null;
  activityTaskCompletedEventAttributes?: { scheduledEventId?: Num; result?: Payloads } | null;
  activityTaskFailedEventAttributes?: { scheduledEventId?: Num } | null;
  activityTaskTimedOutEventAttributes?: { scheduledEventId?: Num } | null;
  activityTaskCanceledEventAttributes?: { scheduledEventId?: Num } | null;
}

export interface ActivityRun {
  type: string;
  taskQueue: string;
  /** Epoch ms (server clock). */
  scheduledAt: number;
  /** Of the last attempt; NaN if the history has no started event for it. */
  startedAt: number;
  closedAt: number;
  ok: boolean;
  /** The activity's first argument, decoded (JSON payloads), or undefined. */
  input: unknown;
  /** Its result, decoded, when it completed. */
  result: unknown;
}

export interface WorkflowTimes {
  startedAt: number;
  closedAt: number;
  /** In the order they were scheduled. */
  activities: ActivityRun[];
}

/**
 * The runs in the order they closed, beside WorkflowTimes (overhead reports
 * them so), and the workflow tasks' own time: started (a worker took it) →
 * completed (its commands reached the server).
 */
function readHistory(events: HistoryEvent[]): WorkflowTimes & { closed: ActivityRun[]; workflowTasks: Span[] } {
  let startedAt = NaN;
  let closedAt = NaN;
  let taskStartedAt = NaN;
  const workflowTasks: Span[] = [];
  const byId = new Map<number, ActivityRun>();
  const activities: ActivityRun[] = [];
  const closed: ActivityRun[] = [];
  for (const e of events) {
    const t = ms(e.eventTime);
    switch (e.eventType) {
      case EV.started:
        startedAt = t;
        break;
      case EV.completed:
      case EV.failed:
        closedAt = t;
        break;
      case EV.workflowTaskStarted:
        taskStartedAt = t;
        break;
      case EV.workflowTaskCompleted:
        if (!Number.isNaN(taskStartedAt)) workflowTasks.push({ from: taskStartedAt, to: t });
        taskStartedAt = NaN;
        break;
      case EV.activityScheduled: {
        const a = e.activityTaskScheduledEventAttributes;
        const run: ActivityRun = {
          type: a?.activityType?.name ?? '?',
          taskQueue: a?.taskQueue?.name ?? '?',
          scheduledAt: t,
          startedAt: NaN,
          closedAt: NaN,
          ok: false,
          input: firstPayload(a?.input),
          result: undefined,
        };
        byId.set(num(e.eventId), run);
        activities.push(run);
        break;
      }
      case EV.activityStarted: {
        const r = byId.get(num(e.activityTaskStartedEventAttributes?.scheduledEventId));
        if (r) r.startedAt = t;
        break;
      }
      case EV.activityCompleted:
      case EV.activityFailed:
      case EV.activityTimedOut:
      case EV.activityCanceled: {
        const a =
          e.activityTaskCompletedEventAttributes ??
          e.activityTaskFailedEventAttributes ??
          e.activityTaskTimedOutEventAttributes ??
          e.activityTaskCanceledEventAttributes;
        const r = byId.get(num(a?.scheduledEventId));
        if (r) {
          r.closedAt = t;
          r.ok = e.eventType === EV.activityCompleted;
          if (r.ok) r.result = firstPayload(e.activityTaskCompletedEventAttributes?.result);
          closed.push(r);
        }
        break;
      }
    }
  }
  return { startedAt, closedAt, activities, closed, workflowTasks };
}

/** Start and close of a workflow and every activity it ran, from its history. */
export async function workflowTimes(handle: WorkflowHandle): Promise<WorkflowTimes> {
  return timesFromHistory(await historyEvents(handle));
}

/** workflowTimes of events already fetched (and decoded: decodeHistory). */
export function timesFromHistory(events: HistoryEvent[]): WorkflowTimes {
  const { startedAt, closedAt, activities } = readHistory(events);
  return { startedAt, closedAt, activities };
}

export interface ActivitySpan {
  activityType: string;
  taskQueue: string;
  /** Scheduled → started: waiting for the node's worker. */
  queueMs: number;
  /** Started → closed: inside the activity (last attempt). */
  runMs: number;
}

export interface Overhead {
  totalMs: number;
  activityMs: number;
  overheadMs: number;
  /** In the order they closed. */
  activities: ActivitySpan[];
  /** Each workflow task's started → completed, in order (the worker running the workflow code). */
  workflowTaskMs: number[];
  /** The same, less the time some activity ran meanwhile: what the workflow tasks add to the overhead. */
  workflowTaskOutsideMs: number[];
}

/** Sorted, non-overlapping. */
function union(spans: Span[]): Span[] {
  const out: Span[] = [];
  for (const s of [...spans].sort((a, b) => a.from - b.from)) {
    const last = out[out.length - 1];
    if (last && s.from <= last.to) last.to = Math.max(last.to, s.to);
    else out.push({ ...s });
  }
  return out;
}

const lengthOf = (s: Span) => s.to - s.from;

function overlap(a: Span, merged: Span[]): number {
  return merged.reduce((sum, b) => sum + Math.max(0, Math.min(a.to, b.to) - Math.max(a.from, b.from)), 0);
}

export function overheadFromHistory(events: HistoryEvent[]): Overhead {
  const h = readHistory(events);
  const spans: Span[] = [];
  const activities: ActivitySpan[] = [];
  for (const r of h.closed) {
    const st = Number.isNaN(r.startedAt) ? r.closedAt : r.startedAt;
    spans.push({ from: st, to: r.closedAt });
    activities.push({
      activityType: r.type,
      taskQueue: r.taskQueue,
      queueMs: st - r.scheduledAt,
      runMs: r.closedAt - st,
    });
  }
  const inside = union(spans);
  const activityMs = inside.reduce((a, s) => a + lengthOf(s), 0);
  const totalMs = h.closedAt - h.startedAt;
  return {
    totalMs,
    activityMs,
    overheadMs: totalMs - activityMs,
    activities,
    workflowTaskMs: h.workflowTasks.map(lengthOf),
    workflowTaskOutsideMs: h.workflowTasks.map((w) => lengthOf(w) - overlap(w, inside)),
  };
}

export async function workflowOverhead(handle: WorkflowHandle): Promise<Overhead> {
  return overheadFromHistory(await historyEvents(handle));
}

async function historyEvents(handle: WorkflowHandle): Promise<HistoryEvent[]> {
  const events = ((await handle.fetchHistory()).events ?? []) as HistoryEvent[];
  return decodeHistory(events, handle.client.options.loadedDataConverter.payloadCodecs);
}

/**
 * The activities' inputs and results decoded in place with a client's codecs:
 * a history holds payloads as the workers' codec wrote them (encrypted when
 * the cluster has a payload key, temporal/codec.ts), and undecoded no input
 * or result could be read (every activity's container and timings unknown).
 */
export async function decodeHistory(events: HistoryEvent[], codecs: PayloadCodec[]): Promise<HistoryEvent[]> {
  if (codecs.length === 0) return events;
  const decode = async (p: Payloads): Promise<void> => {
    if (p?.payloads?.length) p.payloads = await decodePayloads(codecs, p.payloads as Payload[]);
  };
  for (const e of events) {
    await decode(e.activityTaskScheduledEventAttributes?.input);
    await decode(e.activityTaskCompletedEventAttributes?.result);
  }
  return events;
}
