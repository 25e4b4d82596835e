import { ArchInputError, errorMessage } from '../../contract/errors.js';
import {
  isRecord,
  joinUrl,
  MalformedResponseError,
  metadataRequest,
  parseJson,
  UnexpectedStatusError,
} from './http.js';
import { positiveMs } from './options.js';
import { PollingNoticeWatcher } from './polling-watcher.js';
import type { WatcherOptions } from './types.js';

/**
 * Azure Scheduled Events watcher (Spot eviction arrives as EventType
 * "Preempt" with at least 30 s notice).
 *
 * GET /metadata/scheduledevents returns {DocumentIncarnation, Events[]};
 * the incarnation increases whenever the event list changes, so an unchanged
 * incarnation is skipped. An event concerns us only if its Resources name
 * this VM. Once the drain has started (onNotice resolved) we POST
 * StartRequests for the event: Azure may then proceed early, which is what
 * we want, and it records that the VM handled the notice.
 */
export interface AzureWatcherOptions extends WatcherOptions {
  /** This VM's name as Scheduled Events lists it; looked up from IMDS when absent. */
  vmName?: string;
  /** Deadline when NotBefore is empty (the event is imminent). Default 30 s. */
  noticeWindowMs?: number;
  /** Event types to act on. Default ["Preempt"]; "Terminate" is VMSS scale-in with a termination notice. */
  eventTypes?: string[];
  /** POST StartRequests after onNotice resolves. Default true. */
  autoAcknowledge?: boolean;
}

export const API_VERSION = '2020-07-01';
export const EVENTS_PATH = `/metadata/scheduledevents?api-version=${API_VERSION}`;
export const VM_NAME_PATH = '/metadata/instance/compute/name?api-version=2021-02-01&format=text';

interface AzureEvent {
  EventId: string;
  EventType: string;
  Resources: string[];
  EventStatus?: string;
  NotBefore?: string;
  Description?: string;
}

export class AzureNoticeWatcher extends PollingNoticeWatcher {
  readonly provider = 'azure' as const;
  private readonly noticeWindowMs: number;
  private readonly eventTypes: Set<string>;
  private readonly autoAcknowledge: boolean;
  private vmName: string | undefined;
  private lastIncarnation: number | undefined;
  /** EventIds whose drain started but whose StartRequests POST has not succeeded yet. */
  private readonly toAcknowledge = new Set<string>();
  private readonly ignoredEvents = new Set<string>();

  constructor(options: AzureWatcherOptions) {
    super('azure', options);
    if (options.vmName !== undefined && !options.vmName.trim()) {
      throw new ArchInputError('vmName', 'is empty', 'pass the VM name or leave vmName unset to look it up from IMDS');
    }
    this.vmName = options.vmName?.trim();
    this.noticeWindowMs = positiveMs(options.noticeWindowMs, 'noticeWindowMs', 30_000);
    this.eventTypes = new Set(options.eventTypes ?? ['Preempt']);
    this.autoAcknowledge = options.autoAcknowledge ?? true;
  }

  /** Tell Azure the event may start now (POST StartRequests). Throws on failure. */
  async acknowledge(eventId: string, signal?: AbortSignal): Promise<void> {
    const url = joinUrl(this.opts.baseUrl, EVENTS_PATH);
    const res = await metadataRequest(url, {
      method: 'POST',
      headers: { Metadata: 'true', 'Content-Type': 'application/json' },
      body: JSON.stringify({ StartRequests: [{ EventId: eventId }] }),
      timeoutMs: this.opts.requestTimeoutMs,
      signal,
    });
    if (res.status !== 200) throw new UnexpectedStatusError(url, res.status, res.body);
    this.logger.info({ event: 'cloud.azure.acknowledged', eventId }, 'scheduled event acknowledged (StartRequests)');
  }

  protected async tick(signal: AbortSignal): Promise<void> {
    await this.flushAndAcknowledge(signal);
    const vmName = this.vmName ?? (await this.lookupVmName(signal));

    const url = joinUrl(this.opts.baseUrl, EVENTS_PATH);
    const res = await metadataRequest(url, {
      headers: { Metadata: 'true' },
      timeoutMs: this.opts.requestTimeoutMs,
      signal,
    });
    if (res.status !== 200) throw new UnexpectedStatusError(url, res.status, res.body);
    const doc = parseJson(res.body, 'scheduledevents');
    if (!isRecord(doc) || typeof doc.DocumentIncarnation !== 'number' || !Array.isArray(doc.Events)) {
      throw new MalformedResponseError(`scheduledevents lacks DocumentIncarnation/Events: ${res.body.slice(0, 200)}`);
    }
    if (doc.DocumentIncarnation !== this.lastIncarnation) {
      for (const raw of doc.Events) this.onEvent(raw, vmName);
      this.lastIncarnation = doc.DocumentIncarnation;
    }
    await this.flushAndAcknowledge(signal);
  }

  private onEvent(raw: unknown, vmName: string): void {
    const ev = toEvent(raw);
    if (!ev) {
      this.logger.warn(
        { event: 'cloud.azure.bad_event', raw },
        'scheduled event without EventId/EventType/Resources; skipped',
      );
      return;
    }
    // Azure VM names are case-insensitive.
    const ours = ev.Resources.some((r) => r.toLowerCase() === vmName.toLowerCase());
    if (!ours || !this.eventTypes.has(ev.EventType)) {
      if (!this.ignoredEvents.has(ev.EventId)) {
        this.ignoredEvents.add(ev.EventId);
        this.logger.info(
          {
            event: 'cloud.azure.event_ignored',
            eventId: ev.EventId,
            eventType: ev.EventType,
            resources: ev.Resources,
            vmName,
          },
          ours ? 'scheduled event type not acted on' : 'scheduled event for another VM',
        );
      }
      return;
    }
    this.delivery.offer(`azure:${ev.EventId}`, {
      provider: 'azure',
      kind: ev.EventType === 'Preempt' ? 'preemption' : 'termination',
      deadline: this.deadlineOf(ev),
      reason: `Azure scheduled event ${ev.EventType}${ev.Description ? `: ${ev.Description}` : ''}`,
      eventId: ev.EventId,
      raw,
    });
  }

  private deadlineOf(ev: AzureEvent): Date {
    // NotBefore is RFC 1123 ("Mon, 19 Sep 2016 18:29:47 GMT"), which Date parses;
    // it is empty once the event has started.
    const notBefore = ev.NotBefore?.trim() ? Date.parse(ev.NotBefore) : NaN;
    if (!Number.isNaN(notBefore)) return new Date(notBefore);
    if (ev.NotBefore?.trim()) {
      this.logger.warn(
        { event: 'cloud.azure.bad_not_before', eventId: ev.EventId, notBefore: ev.NotBefore },
        'NotBefore unreadable; assuming the event is imminent',
      );
    }
    return new Date(Date.now() + this.noticeWindowMs);
  }

  private async flushAndAcknowledge(signal: AbortSignal): Promise<void> {
    for (const n of await this.delivery.flush()) {
      if (this.autoAcknowledge && n.eventId) this.toAcknowledge.add(n.eventId);
    }
    for (const eventId of [...this.toAcknowledge]) {
      try {
        await this.acknowledge(eventId, signal);
        this.toAcknowledge.delete(eventId);
      } catch (err) {
        // The drain is already running; a failed ack only costs Azure's head
        // start, so retry next poll without failing the tick.
        this.logger.warn(
          { event: 'cloud.azure.ack_failed', eventId, err: errorMessage(err) },
          'acknowledging scheduled event failed; will retry',
        );
      }
    }
  }

  private async lookupVmName(signal: AbortSignal): Promise<string> {
    const url = joinUrl(this.opts.baseUrl, VM_NAME_PATH);
    const res = await metadataRequest(url, {
      headers: { Metadata: 'true' },
      timeoutMs: this.opts.requestTimeoutMs,
      signal,
    });
    if (res.status !== 200) throw new UnexpectedStatusError(url, res.status, res.body);
    const name = res.body.trim();
    if (!name) throw new MalformedResponseError('empty compute/name');
    this.vmName = name;
    this.logger.info({ event: 'cloud.azure.vm_name', vmName: name }, 'VM name from IMDS');
    return name;
  }
}

function toEvent(raw: unknown): AzureEvent | undefined {
  if (!isRecord(raw)) return undefined;
  const { EventId, EventType, Resources } = raw;
  if (typeof EventId !== 'string' || !EventId || typeof EventType !== 'string' || !Array.isArray(Resources))
    return undefined;
  return {
    EventId,
    EventType,
    Resources: Resources.filter((r): r is string => typeof r === 'string'),
    EventStatus: typeof raw.EventStatus === 'string' ? raw.EventStatus : undefined,
    NotBefore: typeof raw.NotBefore === 'string' ? raw.NotBefore : undefined,
    Description: typeof raw.Description === 'string' ? raw.Description : undefined,
  };
}
