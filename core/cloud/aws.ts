import { ArchInputError } from '../../contract/errors.js';
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
 * AWS EC2 spot interruption and rebalance watcher over IMDSv2.
 *
 * IMDSv2: PUT /latest/api/token (TTL header) returns a session token that
 * every GET must carry. Interruption: GET /latest/meta-data/spot/instance-action
 * is 404 until AWS schedules one, then {"action","time"} with about two
 * minutes' warning. Rebalance recommendation: GET
 * /latest/meta-data/events/recommendations/rebalance gives {"noticeTime"} and
 * only says "elevated risk", so by default it is logged, not acted on.
 */
export interface AwsWatcherOptions extends WatcherOptions {
  /** IMDSv2 token lifetime asked for, 1..21600 s. Default 21600. */
  tokenTtlSeconds?: number;
  /** 'act' delivers rebalance recommendations as notices; 'log' (default) only logs them. */
  onRebalance?: 'act' | 'log';
  /** Deadline assumed for a rebalance recommendation: noticeTime + this. Default 120 s. */
  rebalanceWindowMs?: number;
}

export const TOKEN_PATH = '/latest/api/token';
export const INSTANCE_ACTION_PATH = '/latest/meta-data/spot/instance-action';
export const REBALANCE_PATH = '/latest/meta-data/events/recommendations/rebalance';
export const TOKEN_TTL_HEADER = 'X-aws-ec2-metadata-token-ttl-seconds';
export const TOKEN_HEADER = 'X-aws-ec2-metadata-token';

/** AWS documents a two-minute interruption warning; used when "time" is unreadable. */
const AWS_INTERRUPTION_WARNING_MS = 120_000;

interface Token {
  value: string;
  /** Refresh at or after this instant (ms epoch); earlier than the real expiry. */
  refreshAt: number;
}

export class AwsNoticeWatcher extends PollingNoticeWatcher {
  readonly provider = 'aws' as const;
  private readonly tokenTtlSeconds: number;
  private readonly onRebalance: 'act' | 'log';
  private readonly rebalanceWindowMs: number;
  private readonly loggedRebalances = new Set<string>();
  private token: Token | undefined;

  constructor(options: AwsWatcherOptions) {
    super('aws', options);
    const ttl = options.tokenTtlSeconds ?? 21600;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21600) {
      throw new ArchInputError(
        'tokenTtlSeconds',
        `${ttl} is outside IMDSv2's 1..21600`,
        'pass a whole number of seconds between 1 and 21600',
      );
    }
    this.tokenTtlSeconds = ttl;
    const onRebalance = options.onRebalance ?? 'log';
    if (onRebalance !== 'act' && onRebalance !== 'log') {
      throw new ArchInputError(
        'onRebalance',
        `"${String(onRebalance)}" is not act or log`,
        'pass onRebalance: "act" or "log"',
      );
    }
    this.onRebalance = onRebalance;
    this.rebalanceWindowMs = positiveMs(options.rebalanceWindowMs, 'rebalanceWindowMs', 120_000);
  }

  protected async tick(signal: AbortSignal): Promise<void> {
    // Retry earlier handler failures first: they do not depend on the network.
    await this.delivery.flush();

    const action = await this.get(INSTANCE_ACTION_PATH, signal);
    if (action !== undefined) this.onInstanceAction(action);

    const rebalance = await this.get(REBALANCE_PATH, signal);
    if (rebalance !== undefined) this.onRebalanceRecommendation(rebalance);

    await this.delivery.flush();
  }

  private onInstanceAction(body: string): void {
    const doc = parseJson(body, 'spot/instance-action');
    if (!isRecord(doc) || typeof doc.action !== 'string' || !doc.action) {
      throw new MalformedResponseError(`spot/instance-action has no "action": ${body.slice(0, 200)}`);
    }
    const time = typeof doc.time === 'string' ? doc.time : '';
    let deadline = new Date(time);
    if (Number.isNaN(deadline.getTime())) {
      // Acting early beats not acting: assume the documented two-minute warning.
      deadline = new Date(Date.now() + AWS_INTERRUPTION_WARNING_MS);
      this.logger.warn(
        { event: 'cloud.aws.bad_time', time },
        'instance-action time unreadable; assuming two minutes from now',
      );
    }
    this.delivery.offer(`aws:instance-action:${doc.action}:${time}`, {
      provider: 'aws',
      kind: 'termination',
      deadline,
      reason: `EC2 spot interruption: ${doc.action} at ${time || 'unknown time'}`,
      raw: doc,
    });
  }

  private onRebalanceRecommendation(body: string): void {
    const doc = parseJson(body, 'events/recommendations/rebalance');
    const noticeTime = isRecord(doc) && typeof doc.noticeTime === 'string' ? doc.noticeTime : undefined;
    const noticeMs = noticeTime === undefined ? NaN : Date.parse(noticeTime);
    if (noticeTime === undefined || Number.isNaN(noticeMs)) {
      throw new MalformedResponseError(`rebalance recommendation without a valid "noticeTime": ${body.slice(0, 200)}`);
    }
    if (this.onRebalance === 'log') {
      if (!this.loggedRebalances.has(noticeTime)) {
        this.loggedRebalances.add(noticeTime);
        this.logger.warn(
          { event: 'cloud.aws.rebalance_logged', noticeTime },
          'EC2 rebalance recommendation (not acting: onRebalance=log)',
        );
      }
      return;
    }
    this.delivery.offer(`aws:rebalance:${noticeTime}`, {
      provider: 'aws',
      kind: 'rebalance',
      deadline: new Date(noticeMs + this.rebalanceWindowMs),
      reason: `EC2 rebalance recommendation at ${noticeTime}`,
      raw: doc,
    });
  }

  /** GET a metadata path: body on 200, undefined on 404, throws otherwise. */
  private async get(path: string, signal: AbortSignal): Promise<string | undefined> {
    const url = joinUrl(this.opts.baseUrl, path);
    for (let attempt = 0; ; attempt++) {
      const token = await this.currentToken(signal);
      const res = await metadataRequest(url, {
        headers: { [TOKEN_HEADER]: token },
        timeoutMs: this.opts.requestTimeoutMs,
        signal,
      });
      if (res.status === 401 && attempt === 0) {
        // Expired early or revoked (e.g. IMDS restarted): get a fresh token once.
        this.logger.info({ event: 'cloud.aws.token_rejected', path }, 'IMDSv2 token rejected; refreshing');
        this.token = undefined;
        continue;
      }
      if (res.status === 200) return res.body;
      if (res.status === 404) return undefined;
      throw new UnexpectedStatusError(url, res.status, res.body);
    }
  }

  private async currentToken(signal: AbortSignal): Promise<string> {
    if (this.token && Date.now() < this.token.refreshAt) return this.token.value;
    const requestedAt = Date.now();
    const url = joinUrl(this.opts.baseUrl, TOKEN_PATH);
    const res = await metadataRequest(url, {
      method: 'PUT',
      headers: { [TOKEN_TTL_HEADER]: String(this.tokenTtlSeconds) },
      timeoutMs: this.opts.requestTimeoutMs,
      signal,
    });
    if (res.status !== 200) throw new UnexpectedStatusError(url, res.status, res.body);
    const value = res.body.trim();
    if (!value) throw new MalformedResponseError('empty IMDSv2 token');
    // Count the lifetime from before the request (the server's clock started
    // later), and refresh a quarter of the TTL (at most a minute) early.
    const ttlMs = this.tokenTtlSeconds * 1000;
    this.token = { value, refreshAt: requestedAt + ttlMs - Math.min(60_000, ttlMs / 4) };
    this.logger.debug(
      { event: 'cloud.aws.token_refreshed', ttlSeconds: this.tokenTtlSeconds },
      'IMDSv2 token obtained',
    );
    return value;
  }
}
