import type { Logger } from 'pino';
import { NoticeDelivery } from './delivery.js';
import { resolveWatcherOptions, type ResolvedWatcherOptions } from './options.js';
import { PollLoop, type TickResult } from './poll-loop.js';
import type { CloudProvider, NoticeWatcher, ReclaimNotice, WatcherOptions } from './types.js';

/**
 * What every provider's watcher shares: resolved options, a provider-tagged
 * logger, exactly-once notice delivery and the never-throwing poll loop.
 * A provider only says how one poll works (tick).
 */
export abstract class PollingNoticeWatcher implements NoticeWatcher {
  protected readonly opts: ResolvedWatcherOptions;
  protected readonly logger: Logger;
  protected readonly delivery: NoticeDelivery;
  private readonly loop: PollLoop;

  protected constructor(provider: CloudProvider, options: WatcherOptions) {
    this.opts = resolveWatcherOptions(options);
    this.logger = options.logger.child({ provider });
    this.delivery = new NoticeDelivery(this.logger);
    this.loop = new PollLoop({
      logger: this.logger,
      intervalMs: this.opts.pollMs,
      maxBackoffMs: this.opts.maxBackoffMs,
      tick: (signal) => this.tick(signal),
    });
  }

  start(onNotice: (n: ReclaimNotice) => Promise<void>): void {
    this.delivery.setHandler(onNotice);
    this.loop.start();
  }

  stop(): Promise<void> {
    return this.loop.stop();
  }

  /** One poll; throwing means a transport or parse failure (backoff and retry). */
  protected abstract tick(signal: AbortSignal): Promise<TickResult | void>;
}
