import type { Logger } from 'pino';
import { errorMessage } from '../../contract/errors.js';

export interface TickResult {
  /** Override the delay before the next tick (GCP re-arms its hanging GET at once). */
  nextDelayMs?: number;
}

export interface PollLoopOptions {
  logger: Logger;
  intervalMs: number;
  maxBackoffMs: number;
  /** One poll. Throwing means "transport or parse failure": back off and retry. */
  tick: (signal: AbortSignal) => Promise<TickResult | void>;
}

/**
 * Runs `tick` forever, one at a time, until stop(). Failures never escape:
 * they are logged and the next tick is delayed by a doubling backoff capped at
 * maxBackoffMs. The cap is small on purpose: a notice gives 30 s (GCP, Azure)
 * to 2 min (AWS), so a long backoff would lose most of the drain window.
 */
export class PollLoop {
  private readonly opts: PollLoopOptions;
  private timer: NodeJS.Timeout | undefined;
  private abort: AbortController | undefined;
  private running: Promise<void> | undefined;
  private started = false;
  private stopped = false;
  private failures = 0;

  constructor(opts: PollLoopOptions) {
    this.opts = { ...opts, maxBackoffMs: Math.max(opts.maxBackoffMs, opts.intervalMs) };
  }

  start(): void {
    if (this.started) throw new Error('watcher already started');
    this.started = true;
    this.schedule(0);
  }

  /** Cancels the timer, aborts the in-flight request, and waits for the tick to unwind. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.abort?.abort();
    await this.running;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.running = this.runOnce();
    }, delayMs);
  }

  private async runOnce(): Promise<void> {
    const abort = new AbortController();
    this.abort = abort;
    let delay = this.opts.intervalMs;
    try {
      const result = await this.opts.tick(abort.signal);
      if (this.failures > 0) {
        this.opts.logger.info(
          { event: 'cloud.watch.recovered', afterFailures: this.failures },
          'metadata service reachable again',
        );
      }
      this.failures = 0;
      if (result?.nextDelayMs !== undefined) delay = result.nextDelayMs;
    } catch (err) {
      if (this.stopped) return;
      this.failures += 1;
      delay = Math.min(this.opts.maxBackoffMs, this.opts.intervalMs * 2 ** Math.min(this.failures, 20));
      // Warn on failures 1, 2, 4, 8...: a metadata outage lasting hours stays
      // visible without writing a warning every few seconds.
      const isPowerOfTwo = (this.failures & (this.failures - 1)) === 0;
      this.opts.logger[isPowerOfTwo ? 'warn' : 'debug'](
        {
          event: 'cloud.watch.poll_failed',
          err: errorMessage(err),
          consecutiveFailures: this.failures,
          retryInMs: delay,
        },
        'metadata poll failed; retrying',
      );
    } finally {
      if (this.abort === abort) this.abort = undefined;
    }
    this.schedule(delay);
  }
}
