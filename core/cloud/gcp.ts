import { ArchInputError } from '../../contract/errors.js';
import { joinUrl, MalformedResponseError, metadataRequest, UnexpectedStatusError } from './http.js';
import { positiveMs } from './options.js';
import { PollingNoticeWatcher } from './polling-watcher.js';
import type { TickResult } from './poll-loop.js';
import type { WatcherOptions } from './types.js';

/**
 * GCP preemptible / Spot VM watcher.
 *
 * GET /computeMetadata/v1/instance/preempted answers TRUE or FALSE. GCP
 * gives 30 s between that flip and the ACPI shutdown, so instead of polling
 * we use the documented hanging GET: ?wait_for_change=true&last_etag=<ETag>
 * returns as soon as the value differs from that ETag (or after timeout_sec
 * with the same value). Passing last_etag means a flip that happens between
 * two hanging GETs is reported at once rather than missed.
 */
export interface GcpWatcherOptions extends WatcherOptions {
  /** Time assumed between the flip and shutdown. Default 30 s (GCP's documented notice). */
  noticeWindowMs?: number;
  /** timeout_sec of each hanging GET. Default 20 s; short so a silently dead connection is noticed. */
  waitTimeoutSec?: number;
}

export const PREEMPTED_PATH = '/computeMetadata/v1/instance/preempted';
const PREEMPTED_KEY = 'gcp:preempted';

export class GcpNoticeWatcher extends PollingNoticeWatcher {
  readonly provider = 'gcp' as const;
  private readonly noticeWindowMs: number;
  private readonly waitTimeoutSec: number;
  private etag: string | undefined;

  constructor(options: GcpWatcherOptions) {
    super('gcp', options);
    this.noticeWindowMs = positiveMs(options.noticeWindowMs, 'noticeWindowMs', 30_000);
    const wait = options.waitTimeoutSec ?? 20;
    if (!Number.isInteger(wait) || wait < 1) {
      throw new ArchInputError(
        'waitTimeoutSec',
        `${wait} is not a whole number of seconds >= 1`,
        'pass waitTimeoutSec such as 20',
      );
    }
    this.waitTimeoutSec = wait;
  }

  protected async tick(signal: AbortSignal): Promise<TickResult> {
    await this.delivery.flush();

    // Hang only when we know the current ETag and nothing awaits a retry:
    // a pending notice must be retried at poll pace, not after the next change.
    const hang = this.etag !== undefined && !this.delivery.hasPending() && !this.delivery.isDelivered(PREEMPTED_KEY);
    const query = hang
      ? `?wait_for_change=true&last_etag=${encodeURIComponent(this.etag!)}&timeout_sec=${this.waitTimeoutSec}`
      : '';
    const url = joinUrl(this.opts.baseUrl, PREEMPTED_PATH + query);
    const sentAt = Date.now();
    const res = await metadataRequest(url, {
      headers: { 'Metadata-Flavor': 'Google' },
      timeoutMs: this.opts.requestTimeoutMs + (hang ? this.waitTimeoutSec * 1000 : 0),
      signal,
    });
    // The response header proves we reached Google's metadata server and not
    // some proxy or captive portal that answers any URL.
    if (res.headers.get('metadata-flavor') !== 'Google') {
      throw new MalformedResponseError(`${PREEMPTED_PATH} answered without "Metadata-Flavor: Google"`);
    }
    if (res.status !== 200) throw new UnexpectedStatusError(url, res.status, res.body);
    const value = res.body.trim().toUpperCase();
    if (value !== 'TRUE' && value !== 'FALSE') {
      throw new MalformedResponseError(
        `instance/preempted is ${JSON.stringify(res.body.slice(0, 100))}, not TRUE or FALSE`,
      );
    }
    const previousEtag = this.etag;
    this.etag = res.headers.get('etag') ?? undefined;

    if (value === 'TRUE') {
      this.delivery.offer(PREEMPTED_KEY, {
        provider: 'gcp',
        kind: 'preemption',
        deadline: new Date(Date.now() + this.noticeWindowMs),
        reason: 'GCE instance preempted (instance/preempted=TRUE)',
        eventId: this.etag,
        raw: { preempted: res.body.trim(), etag: this.etag },
      });
      await this.delivery.flush();
    }

    if (!hang) return {}; // plain poll: wait pollMs
    // A server that ignores wait_for_change would answer at once with the same
    // ETag every time; fall back to poll pace instead of spinning.
    const answeredEarly = Date.now() - sentAt < Math.min(1000, (this.waitTimeoutSec * 1000) / 2);
    return { nextDelayMs: answeredEarly && this.etag === previousEtag ? this.opts.pollMs : 0 };
  }
}
