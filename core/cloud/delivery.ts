import type { Logger } from 'pino';
import { errorMessage } from '../../contract/errors.js';
import type { ReclaimNotice } from './types.js';

/**
 * Exactly-once delivery per distinct event. A notice is "delivered" only when
 * onNotice resolves; until then it stays pending and every later poll tries
 * again, even if the provider stops reporting it (GCP's hanging GET, for one,
 * will not report an unchanged value again).
 */
export class NoticeDelivery {
  private readonly delivered = new Set<string>();
  private readonly pending = new Map<string, ReclaimNotice>();
  private onNotice: ((n: ReclaimNotice) => Promise<void>) | undefined;

  constructor(private readonly logger: Logger) {}

  setHandler(onNotice: (n: ReclaimNotice) => Promise<void>): void {
    this.onNotice = onNotice;
  }

  /** Record an observed event under a key that identifies it across polls. */
  offer(key: string, notice: ReclaimNotice): void {
    if (this.delivered.has(key) || this.pending.has(key)) return;
    this.logger.warn(
      {
        event: 'cloud.notice.seen',
        key,
        provider: notice.provider,
        kind: notice.kind,
        deadline: notice.deadline.toISOString(),
        reason: notice.reason,
        eventId: notice.eventId,
      },
      'reclaim notice received',
    );
    this.pending.set(key, notice);
  }

  isDelivered(key: string): boolean {
    return this.delivered.has(key);
  }

  hasPending(): boolean {
    return this.pending.size > 0;
  }

  /** Hand every pending notice to onNotice, in arrival order; returns those it accepted. */
  async flush(): Promise<ReclaimNotice[]> {
    const done: ReclaimNotice[] = [];
    if (!this.onNotice) return done;
    for (const [key, notice] of [...this.pending]) {
      try {
        await this.onNotice(notice);
      } catch (err) {
        this.logger.error(
          { event: 'cloud.notice.handler_failed', key, err: errorMessage(err) },
          'notice handler failed; will retry on next poll',
        );
        continue;
      }
      this.pending.delete(key);
      this.delivered.add(key);
      this.logger.info({ event: 'cloud.notice.delivered', key }, 'reclaim notice handled');
      done.push(notice);
    }
    return done;
  }
}
