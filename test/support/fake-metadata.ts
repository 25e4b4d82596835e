/**
 * Loopback fakes of the three metadata services, faithful to the parts of
 * each protocol the watchers use, plus fault injection. Every server listens
 * on 127.0.0.1 and has close(), which also releases hanging and delayed
 * requests so Jest sees no open handles.
 */
import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';

export type FaultKind = 'malformed' | 'http500' | 'slow' | 'drop';

export interface FaultSpec {
  kind: FaultKind;
  /** How many matching requests get the fault. Default 1. */
  times?: number;
  /** Only requests whose path+query contains this. Default: any request. */
  pathIncludes?: string;
  /** Only requests with this method. Default: any. */
  method?: string;
  /** For 'slow': how long to hold the request before answering normally. Default 5000 ms. */
  delayMs?: number;
}

export interface RecordedRequest {
  method: string;
  /** Path and query as sent. */
  url: string;
  path: string;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  body: string;
  /** Status sent, or 'dropped' / undefined (still pending or aborted). */
  status?: number | 'dropped';
  at: number;
}

abstract class FakeMetadataServer {
  readonly requests: RecordedRequest[] = [];
  private readonly server: http.Server;
  private readonly faultList: (FaultSpec & { left: number })[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private port = 0;

  protected constructor() {
    this.server = http.createServer((req, res) => this.onRequest(req, res));
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  protected async listen(port = 0): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.port = (this.server.address() as AddressInfo).port;
  }

  injectFault(spec: FaultSpec): void {
    this.faultList.push({ ...spec, left: spec.times ?? 1 });
  }

  /** Faults not yet consumed (to assert that the watcher really met them). */
  pendingFaults(): number {
    return this.faultList.reduce((s, f) => s + f.left, 0);
  }

  countStatus(status: number | 'dropped'): number {
    return this.requests.filter((r) => r.status === status).length;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.onClose();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Subclasses release hanging requests here. */
  protected onClose(): void {}

  protected abstract handle(req: http.IncomingMessage, res: http.ServerResponse, rec: RecordedRequest): void;
  /** A 200 body that breaks this provider's format. */
  protected abstract malformedBody(rec: RecordedRequest): string;
  /** Headers this provider puts on every response. */
  protected baseHeaders(): Record<string, string> {
    return {};
  }

  protected send(
    res: http.ServerResponse,
    rec: RecordedRequest,
    status: number,
    body: string,
    headers: Record<string, string> = {},
  ): void {
    if (res.writableEnded || res.destroyed) return;
    rec.status = status;
    res.writeHead(status, {
      'Content-Type': 'text/plain',
      ...this.baseHeaders(),
      ...headers,
      'Content-Length': Buffer.byteLength(body),
    });
    res.end(body);
  }

  protected later(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  protected forget(t: NodeJS.Timeout): void {
    clearTimeout(t);
    this.timers.delete(t);
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const u = new URL(req.url ?? '/', 'http://fake');
      const rec: RecordedRequest = {
        method: req.method ?? 'GET',
        url: req.url ?? '/',
        path: u.pathname,
        query: u.searchParams,
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        at: Date.now(),
      };
      this.requests.push(rec);
      const fault = this.faultList.find(
        (f) =>
          f.left > 0 && (!f.pathIncludes || rec.url.includes(f.pathIncludes)) && (!f.method || f.method === rec.method),
      );
      if (fault) {
        fault.left -= 1;
        switch (fault.kind) {
          case 'drop':
            rec.status = 'dropped';
            req.socket.destroy();
            return;
          case 'http500':
            this.send(res, rec, 500, 'Internal Server Error');
            return;
          case 'malformed':
            this.send(res, rec, 200, this.malformedBody(rec));
            return;
          case 'slow':
            this.later(fault.delayMs ?? 5000, () => this.handle(req, res, rec));
            return;
        }
      }
      this.handle(req, res, rec);
    });
  }
}

// --- AWS IMDSv2 -------------------------------------------------------------

export class FakeAwsImds extends FakeMetadataServer {
  private readonly tokens = new Map<string, number>();
  private instanceAction: { action: string; time: string } | undefined;
  private rebalance: { noticeTime: string } | undefined;
  tokensIssued = 0;

  static async start(opts: { port?: number } = {}): Promise<FakeAwsImds> {
    const s = new FakeAwsImds();
    await s.listen(opts.port);
    return s;
  }

  /** From now on instance-action answers this JSON (AWS: about two minutes ahead). */
  scheduleNotice(n: { action?: 'terminate' | 'stop' | 'hibernate'; time: string }): void {
    this.instanceAction = { action: n.action ?? 'terminate', time: n.time };
  }

  scheduleRebalance(noticeTime: string): void {
    this.rebalance = { noticeTime };
  }

  /** Forget every token, as an IMDS restart would: the next GET with an old token gets 401. */
  revokeTokens(): void {
    this.tokens.clear();
  }

  protected override malformedBody(): string {
    return '{"action": "terminate", "ti';
  }

  protected override handle(req: http.IncomingMessage, res: http.ServerResponse, rec: RecordedRequest): void {
    if (rec.path === '/latest/api/token') {
      if (rec.method !== 'PUT') return this.send(res, rec, 405, 'Method Not Allowed');
      const ttlRaw = req.headers['x-aws-ec2-metadata-token-ttl-seconds'];
      const ttl = Number(ttlRaw);
      if (typeof ttlRaw !== 'string' || !Number.isInteger(ttl) || ttl < 1 || ttl > 21600)
        return this.send(res, rec, 400, 'Bad Request');
      const token = crypto.randomBytes(30).toString('base64');
      this.tokens.set(token, Date.now() + ttl * 1000);
      this.tokensIssued += 1;
      return this.send(res, rec, 200, token, { 'X-Aws-Ec2-Metadata-Token-Ttl-Seconds': String(ttl) });
    }
    if (rec.method !== 'GET') return this.send(res, rec, 405, 'Method Not Allowed');
    // IMDSv2 required: no valid token, no data.
    const token = req.headers['x-aws-ec2-metadata-token'];
    const expiry = typeof token === 'string' ? this.tokens.get(token) : undefined;
    if (expiry === undefined || Date.now() >= expiry) return this.send(res, rec, 401, 'Unauthorized');
    switch (rec.path) {
      case '/latest/meta-data/spot/instance-action':
        return this.instanceAction
          ? this.send(res, rec, 200, JSON.stringify(this.instanceAction))
          : this.send(res, rec, 404, 'Not Found');
      case '/latest/meta-data/events/recommendations/rebalance':
        return this.rebalance
          ? this.send(res, rec, 200, JSON.stringify(this.rebalance))
          : this.send(res, rec, 404, 'Not Found');
      default:
        return this.send(res, rec, 404, 'Not Found');
    }
  }
}

// --- GCP metadata server ----------------------------------------------------

interface Waiter {
  res: http.ServerResponse;
  rec: RecordedRequest;
  timer: NodeJS.Timeout;
}

export class FakeGcpMetadata extends FakeMetadataServer {
  private preempted = false;
  private readonly waiters = new Set<Waiter>();
  /** Simulate something that is not Google's server: answer without the Metadata-Flavor header. */
  omitFlavorHeader = false;

  static async start(opts: { port?: number } = {}): Promise<FakeGcpMetadata> {
    const s = new FakeGcpMetadata();
    await s.listen(opts.port);
    return s;
  }

  /** ETag is a hash of the value, as on GCE: the same value always has the same ETag. */
  get etag(): string {
    return crypto.createHash('sha256').update(this.value).digest('hex').slice(0, 16);
  }

  /** wait_for_change requests currently held open. */
  get hangingCount(): number {
    return this.waiters.size;
  }

  setPreempted(v: boolean): void {
    if (v === this.preempted) return;
    this.preempted = v;
    // A change releases every hanging GET with the new value.
    for (const w of [...this.waiters]) this.release(w);
  }

  private get value(): string {
    return this.preempted ? 'TRUE' : 'FALSE';
  }

  protected override baseHeaders(): Record<string, string> {
    return this.omitFlavorHeader ? {} : { 'Metadata-Flavor': 'Google' };
  }

  protected override malformedBody(): string {
    return 'MAYBE';
  }

  protected override onClose(): void {
    for (const w of this.waiters) clearTimeout(w.timer);
    this.waiters.clear();
  }

  protected override handle(req: http.IncomingMessage, res: http.ServerResponse, rec: RecordedRequest): void {
    if (req.headers['metadata-flavor'] !== 'Google') {
      return this.send(res, rec, 403, 'Missing Metadata-Flavor:Google header.');
    }
    if (rec.method !== 'GET') return this.send(res, rec, 405, 'Method Not Allowed');
    if (rec.path === '/computeMetadata/v1/') return this.send(res, rec, 200, 'instance/\nproject/\n');
    if (rec.path !== '/computeMetadata/v1/instance/preempted') return this.send(res, rec, 404, 'Not Found');

    if (rec.query.get('wait_for_change') !== 'true') return this.answer(res, rec);
    const lastEtag = rec.query.get('last_etag');
    // With last_etag: answer at once if the value already differs from it.
    if (lastEtag !== null && lastEtag !== this.etag) return this.answer(res, rec);
    const timeoutSec = Number(rec.query.get('timeout_sec') ?? '60');
    const w: Waiter = {
      res,
      rec,
      // timeout_sec elapsed without change: answer the unchanged value.
      timer: this.later(Math.max(0, timeoutSec) * 1000, () => this.release(w)),
    };
    this.waiters.add(w);
    res.on('close', () => {
      // Client gave up (abort, timeout): drop the waiter.
      if (this.waiters.delete(w)) this.forget(w.timer);
    });
  }

  private release(w: Waiter): void {
    this.waiters.delete(w);
    this.forget(w.timer);
    this.answer(w.res, w.rec);
  }

  private answer(res: http.ServerResponse, rec: RecordedRequest): void {
    this.send(res, rec, 200, this.value, { ETag: this.etag, 'Content-Type': 'application/text' });
  }
}

// --- Azure IMDS Scheduled Events -------------------------------------------

export interface AzureScheduledEvent {
  EventId: string;
  EventType: string;
  ResourceType: string;
  Resources: string[];
  EventStatus: 'Scheduled' | 'Started';
  NotBefore: string;
  Description: string;
  EventSource: string;
  DurationInSeconds: number;
}

export class FakeAzureImds extends FakeMetadataServer {
  readonly vmName: string;
  incarnation = 1;
  events: AzureScheduledEvent[] = [];
  readonly acks: { eventId: string; at: number }[] = [];

  private constructor(vmName: string) {
    super();
    this.vmName = vmName;
  }

  static async start(opts: { port?: number; vmName?: string } = {}): Promise<FakeAzureImds> {
    const s = new FakeAzureImds(opts.vmName ?? 'arch-test-vm');
    await s.listen(opts.port);
    return s;
  }

  /** Add an event (default: a Spot eviction of this VM); bumps DocumentIncarnation. */
  scheduleEvent(e: Partial<AzureScheduledEvent> = {}): string {
    const ev: AzureScheduledEvent = {
      EventId: crypto.randomUUID().toUpperCase(),
      EventType: 'Preempt',
      ResourceType: 'VirtualMachine',
      Resources: [this.vmName],
      EventStatus: 'Scheduled',
      NotBefore: new Date(Date.now() + 30_000).toUTCString(),
      Description: 'Virtual machine is being preempted.',
      EventSource: 'Platform',
      DurationInSeconds: -1,
      ...e,
    };
    this.events.push(ev);
    this.incarnation += 1;
    return ev.EventId;
  }

  removeEvent(eventId: string): void {
    this.events = this.events.filter((e) => e.EventId !== eventId);
    this.incarnation += 1;
  }

  protected override malformedBody(): string {
    return '{"DocumentIncarnation": 7, "Events": [';
  }

  protected override handle(req: http.IncomingMessage, res: http.ServerResponse, rec: RecordedRequest): void {
    const json = { 'Content-Type': 'application/json; charset=utf-8' };
    if (req.headers['metadata'] !== 'true') {
      return this.send(
        res,
        rec,
        400,
        JSON.stringify({ error: 'Bad request. Required metadata header not specified' }),
        json,
      );
    }
    if (!rec.query.get('api-version')) {
      return this.send(
        res,
        rec,
        400,
        JSON.stringify({ error: 'Bad request. api-version was not specified in the request' }),
        json,
      );
    }
    if (rec.path === '/metadata/instance/compute/name' && rec.method === 'GET') {
      if (rec.query.get('format') !== 'text')
        return this.send(res, rec, 400, JSON.stringify({ error: 'format=text required for leaf' }), json);
      return this.send(res, rec, 200, this.vmName);
    }
    if (rec.path !== '/metadata/scheduledevents')
      return this.send(res, rec, 404, JSON.stringify({ error: 'Not found' }), json);
    if (rec.method === 'GET') {
      return this.send(
        res,
        rec,
        200,
        JSON.stringify({ DocumentIncarnation: this.incarnation, Events: this.events }),
        json,
      );
    }
    if (rec.method === 'POST') {
      let ids: string[];
      try {
        const body = JSON.parse(rec.body) as { StartRequests?: { EventId?: unknown }[] };
        if (!Array.isArray(body.StartRequests)) throw new Error('no StartRequests');
        ids = body.StartRequests.map((r) => String(r.EventId));
      } catch {
        return this.send(res, rec, 400, JSON.stringify({ error: 'Bad request. Malformed StartRequests' }), json);
      }
      if (ids.some((id) => !this.events.some((e) => e.EventId === id))) {
        return this.send(res, rec, 400, JSON.stringify({ error: 'Bad request. Unknown EventId' }), json);
      }
      for (const id of ids) {
        this.acks.push({ eventId: id, at: Date.now() });
        const ev = this.events.find((e) => e.EventId === id)!;
        // Approved: the platform starts the event; NotBefore no longer applies.
        ev.EventStatus = 'Started';
        ev.NotBefore = '';
      }
      this.incarnation += 1;
      return this.send(res, rec, 200, '', json);
    }
    return this.send(res, rec, 405, 'Method Not Allowed');
  }
}

// --- test helpers -----------------------------------------------------------

/** A port nothing listens on (connection refused), on loopback. */
export async function unusedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * Make any fetch to a non-loopback host fail loudly, so a test can never
 * reach 169.254.169.254 (or any real endpoint) by mistake. Returns the restorer.
 */
export function guardLoopbackFetch(): () => void {
  const original = globalThis.fetch;
  globalThis.fetch = ((input: Parameters<typeof fetch>[0], init?: Parameters<typeof fetch>[1]) => {
    const raw = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    const host = new URL(raw).hostname;
    if (host !== '127.0.0.1' && host !== 'localhost' && host !== '[::1]') {
      throw new Error(`test tried to reach non-loopback ${raw}`);
    }
    return original(input, init);
  }) as typeof fetch;
  return () => {
    globalThis.fetch = original;
  };
}

export interface LogEntry {
  level: number;
  event?: string;
  msg?: string;
  [k: string]: unknown;
}

/** A pino logger whose lines are parsed into `entries` for assertions. */
export function captureLogger(): { logger: Logger; entries: LogEntry[]; events: (name: string) => LogEntry[] } {
  const entries: LogEntry[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n'))
        if (line.trim()) entries.push(JSON.parse(line) as LogEntry);
      cb();
    },
  });
  const logger = pino({ level: 'debug' }, stream);
  return { logger, entries, events: (name) => entries.filter((e) => e.event === name) };
}

/** Poll a condition; throws with `what` if it does not hold within timeoutMs. */
export async function waitUntil(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** 'settled' if p settles within ms, else 'pending'; leaves no timer behind. */
export async function within(ms: number, p: Promise<unknown>): Promise<'settled' | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'pending'>((r) => {
    timer = setTimeout(() => r('pending'), ms);
  });
  try {
    return await Promise.race([
      p.then(
        () => 'settled' as const,
        () => 'settled' as const,
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Jest hooks every cloud test file needs: fetch refused for anything but
 * loopback for the whole file, and a stack of clean-ups run (last first)
 * after each test. Returns the stack to push clean-ups onto.
 */
export function useCloudTestHooks(): (() => Promise<void>)[] {
  let restoreFetch: () => void = () => undefined;
  beforeAll(() => {
    restoreFetch = guardLoopbackFetch();
  });
  afterAll(() => restoreFetch());
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });
  return cleanups;
}
