import { ArchInputError } from '../../contract/errors.js';
import { DEFAULT_MAX_BACKOFF_MS, DEFAULT_POLL_MS, DEFAULT_REQUEST_TIMEOUT_MS, type WatcherOptions } from './types.js';

export interface ResolvedWatcherOptions {
  baseUrl: string;
  pollMs: number;
  requestTimeoutMs: number;
  maxBackoffMs: number;
}

/** Programmatic options get the same "name the field, say the fix" treatment as env vars. */
export function positiveMs(value: number | undefined, field: string, dflt: number): number {
  if (value === undefined) return dflt;
  if (!Number.isFinite(value) || value <= 0) {
    throw new ArchInputError(
      field,
      `${value} is not a positive number of milliseconds`,
      `pass a positive number for ${field}`,
    );
  }
  return value;
}

export function checkBaseUrl(value: string, field: string): string {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new ArchInputError(field, `"${value}" is not a URL`, `use an origin such as http://169.254.169.254`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new ArchInputError(field, `"${value}" is not an http(s) URL`, `use an origin such as http://169.254.169.254`);
  }
  if (u.search || u.hash) {
    throw new ArchInputError(
      field,
      `"${value}" has a query or fragment`,
      `give only the origin (and optional path prefix), e.g. http://169.254.169.254`,
    );
  }
  return value.replace(/\/+$/, '');
}

export function resolveWatcherOptions(o: WatcherOptions): ResolvedWatcherOptions {
  const pollMs = positiveMs(o.pollMs, 'pollMs', DEFAULT_POLL_MS);
  return {
    baseUrl: checkBaseUrl(o.baseUrl, 'baseUrl'),
    pollMs,
    requestTimeoutMs: positiveMs(o.requestTimeoutMs, 'requestTimeoutMs', DEFAULT_REQUEST_TIMEOUT_MS),
    maxBackoffMs: Math.max(pollMs, positiveMs(o.maxBackoffMs, 'maxBackoffMs', DEFAULT_MAX_BACKOFF_MS)),
  };
}
