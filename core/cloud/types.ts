import type { Logger } from 'pino';

export type CloudProvider = 'aws' | 'gcp' | 'azure';

/**
 * A cloud provider told us this VM is going away (or probably will). The drain
 * code only needs the deadline; `raw` keeps the provider's own document for
 * logs and post-mortems.
 */
export interface ReclaimNotice {
  provider: CloudProvider;
  kind: 'termination' | 'rebalance' | 'preemption';
  /** When the provider will (or may) take the VM; the drain must finish before. */
  deadline: Date;
  reason: string;
  eventId?: string;
  raw: unknown;
}

/**
 * Watches one provider's metadata service. `start` never throws asynchronously
 * and the watcher never crashes the process: transport and parse problems are
 * logged and retried. Each distinct event reaches `onNotice` exactly once
 * after it resolves; if it rejects, the same notice is offered again on the
 * next poll. `stop` resolves once no request, timer or callback is left.
 */
export interface NoticeWatcher {
  start(onNotice: (n: ReclaimNotice) => Promise<void>): void;
  stop(): Promise<void>;
}

/** Options every provider watcher takes. */
export interface WatcherOptions {
  /**
   * Metadata service origin, e.g. http://169.254.169.254. Required on purpose:
   * only core/cloud/config.ts knows the production default, so tests can never
   * fall back to the real link-local address by omission.
   */
  baseUrl: string;
  logger: Logger;
  /** Delay between polls when all is well. Default 2000 ms (notices give 30 s to 2 min). */
  pollMs?: number;
  /** Per-request timeout (not counting GCP's deliberate hanging wait). Default 2000 ms. */
  requestTimeoutMs?: number;
  /** Upper bound of the retry backoff after failures. Default 5000 ms (never below pollMs). */
  maxBackoffMs?: number;
}

export const DEFAULT_POLL_MS = 2000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 2000;
export const DEFAULT_MAX_BACKOFF_MS = 5000;
