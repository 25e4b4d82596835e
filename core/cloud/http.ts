/**
 * The one place watchers talk HTTP. Metadata services are local and answer in
 * milliseconds, so every request has a hard timeout, bodies are capped, and
 * every failure becomes an Error with a message fit for one log line.
 */

/** Metadata documents are tiny; anything bigger is not a metadata service. */
const MAX_BODY_CHARS = 64 * 1024;

export interface MetadataResponse {
  status: number;
  headers: Headers;
  body: string;
}

export interface MetadataRequest {
  method?: 'GET' | 'PUT' | 'POST';
  headers?: Record<string, string>;
  body?: string;
  timeoutMs: number;
  /** Aborted by the watcher's stop(). */
  signal?: AbortSignal;
}

/** The response was not what the provider documents (bad JSON, wrong header...). */
export class MalformedResponseError extends Error {
  constructor(what: string) {
    super(`malformed metadata response: ${what}`);
    this.name = 'MalformedResponseError';
  }
}

export class UnexpectedStatusError extends Error {
  readonly status: number;
  constructor(url: string, status: number, body: string) {
    super(`${url} answered HTTP ${status}${body ? `: ${body.slice(0, 200)}` : ''}`);
    this.name = 'UnexpectedStatusError';
    this.status = status;
  }
}

/** Join an origin (possibly with a path prefix, e.g. a test proxy) and an absolute path. */
export function joinUrl(baseUrl: string, pathAndQuery: string): string {
  return baseUrl.replace(/\/+$/, '') + pathAndQuery;
}

export async function metadataRequest(url: string, req: MetadataRequest): Promise<MetadataResponse> {
  const timeout = AbortSignal.timeout(req.timeoutMs);
  const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
  try {
    const res = await fetch(url, {
      method: req.method ?? 'GET',
      headers: req.headers,
      body: req.body,
      signal,
      // A metadata service never redirects; following one could leave the host.
      redirect: 'error',
    });
    // The same signal bounds the body read, so a stalled body also times out.
    const body = await res.text();
    if (body.length > MAX_BODY_CHARS) throw new MalformedResponseError(`body of ${body.length} characters from ${url}`);
    return { status: res.status, headers: res.headers, body };
  } catch (err) {
    if (err instanceof MalformedResponseError) throw err;
    if (timeout.aborted && !req.signal?.aborted)
      throw new Error(`${req.method ?? 'GET'} ${url}: no answer within ${req.timeoutMs} ms`);
    throw new Error(`${req.method ?? 'GET'} ${url}: ${describeFetchError(err)}`);
  }
}

/**
 * undici hides the useful part (ECONNREFUSED, "other side closed") in
 * err.cause. Duck-typed on purpose: under Jest's VM modules the error may come
 * from another realm, where instanceof fails.
 */
export function describeFetchError(err: unknown): string {
  if (typeof err !== 'object' || err === null) return String(err);
  const e = err as { name?: string; message?: string; cause?: unknown };
  const parts = [e.message ?? String(err)];
  const cause = e.cause as { code?: string; message?: string } | undefined;
  if (cause && typeof cause === 'object') {
    const detail = [cause.code, cause.message].filter(Boolean).join(' ');
    if (detail) parts.push(`(${detail})`);
  }
  return parts.join(' ');
}

export function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new MalformedResponseError(`${what} is not JSON: ${JSON.stringify(text.slice(0, 100))}`);
  }
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
