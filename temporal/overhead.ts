/**
 * Orchestration overhead of a workflow, from its history: wall time from
 * start to close minus the time spent inside activities (the union of every
 * activity attempt's started→closed interval, so parallel activities are not
 * counted twice). What remains is Temporal and ARCH's workflow code: task
 * dispatch, workflow tasks, the gaps between activities.
 */
import type { WorkflowHandle } from '@temporalio/client';

// temporal.api.enums.v1.EventType values (see register.ts for why they are spelled out).
const EV = {
  started: 1,
  completed: 2,
  failed: 3,
  activityScheduled: 10,
  activityStarted: 11,
  activityCompleted: 12,
  activityFailed: 13,
  activityTimedOut: 14,
  activityCanceled: 16,
} as const;

interface Ts {
  seconds?: { toNumber(): number } | number | null;
  nanos?: number | null;
}

function ms(t: Ts | null | undefined): number {
  if (!t) return NaN;
  const s = typeof t.seconds === 'number' ? t.seconds : (t.seconds?.toNumber() ?? 0);
  return s * 1000 + Math.floor((t.nanos ?? 0) / 1e6);
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
  activities: ActivitySpan[];
}

interface Event {
  eventId?: { toNumber(): number } | number | null;
  eventTime?: Ts | null;
  eventType?: number | null;
  activityTaskScheduledEventAttributes?: {
    activityType?: { name?: string | null } | null;
    taskQueue?: { name?: string | null } | null;
  } | null;
  activityTaskStartedEventAttributes?: { scheduledEventId?: { toNumber(): number } | number | null } | null;
  activityTaskCompletedEventAttributes?: { scheduledEventId?: { toNumber(): number } | number | null } | null;
  activityTaskFailedEventAttributes?: { scheduledEventId?: { toNumber(): number } | number | null } | null;
  activityTaskTimedOutEventAttributes?: { scheduledEventId?: { toNumber(): number } | number | null } | null;
  activityTaskCanceledEventAttributes?: { scheduledEventId?: { toNumber(): number } | number | null } | null;
}

const num = (v: { toNumber(): number } | number | null | undefined): number =>
  typeof v === 'number' ? v : (v?.toNumber() ?? 0);

export function overheadFromHistory(events: Event[]): Overhead {
  let start = NaN;
  let end = NaN;
  const scheduled = new Map<number, { at: number; type: string; queue: string }>();
  const started = new Map<number, number>();
  const spans: { from: number; to: number }[] = [];
  const activities: ActivitySpan[] = [];
  for (const e of events) {
    const t = ms(e.eventTime);
    const id = num(e.eventId);
    switch (e.eventType) {
      case EV.started:
        start = t;
        break;
      case EV.completed:
      case EV.failed:
        end = t;
        break;
      case EV.activityScheduled:
        scheduled.set(id, {
          at: t,
          type: e.activityTaskScheduledEventAttributes?.activityType?.name ?? '?',
          queue: e.activityTaskScheduledEventAttributes?.taskQueue?.name ?? '?',
        });
        break;
      case EV.activityStarted:
        started.set(num(e.activityTaskStartedEventAttributes?.scheduledEventId), t);
        break;
      case EV.activityCompleted:
      case EV.activityFailed:
      case EV.activityTimedOut:
      case EV.activityCanceled: {
        const a =
          e.activityTaskCompletedEventAttributes ??
          e.activityTaskFailedEventAttributes ??
          e.activityTaskTimedOutEventAttributes ??
          e.activityTaskCanceledEventAttributes;
        const sid = num(a?.scheduledEventId);
        const s = scheduled.get(sid);
        const st = started.get(sid) ?? t;
        spans.push({ from: st, to: t });
        if (s) activities.push({ activityType: s.type, taskQueue: s.queue, queueMs: st - s.at, runMs: t - st });
        break;
      }
    }
  }
  spans.sort((a, b) => a.from - b.from);
  let activityMs = 0;
  let curFrom = NaN;
  let curTo = NaN;
  for (const s of spans) {
    if (Number.isNaN(curTo) || s.from > curTo) {
      if (!Number.isNaN(curTo)) activityMs += curTo - curFrom;
      curFrom = s.from;
      curTo = s.to;
    } else curTo = Math.max(curTo, s.to);
  }
  if (!Number.isNaN(curTo)) activityMs += curTo - curFrom;
  const totalMs = end - start;
  return { totalMs, activityMs, overheadMs: totalMs - activityMs, activities };
}

export async function workflowOverhead(handle: WorkflowHandle): Promise<Overhead> {
  const h = await handle.fetchHistory();
  return overheadFromHistory((h.events ?? []) as Event[]);
}
