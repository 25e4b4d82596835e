import { AwsNoticeWatcher, type AwsWatcherOptions } from '../../core/cloud/aws.js';
import type { ReclaimNotice } from '../../core/cloud/types.js';
import {
  captureLogger,
  FakeAwsImds,
  sleep,
  unusedPort,
  waitUntil,
  within,
  useCloudTestHooks,
} from '../support/fake-metadata.js';

const ACTION = '/latest/meta-data/spot/instance-action';
const REBALANCE = '/latest/meta-data/events/recommendations/rebalance';

const cleanups = useCloudTestHooks();

async function fake(port?: number): Promise<FakeAwsImds> {
  const imds = await FakeAwsImds.start({ port });
  cleanups.push(() => imds.close());
  return imds;
}

function watch(opts: Partial<AwsWatcherOptions> & { baseUrl: string }, handler?: (n: ReclaimNotice) => Promise<void>) {
  const log = captureLogger();
  const watcher = new AwsNoticeWatcher({
    logger: log.logger,
    pollMs: 50,
    maxBackoffMs: 200,
    requestTimeoutMs: 1000,
    ...opts,
  });
  const notices: ReclaimNotice[] = [];
  watcher.start(handler ?? (async (n) => void notices.push(n)));
  // Registered after the server, so it runs first (LIFO): stop the watcher, then close the server.
  cleanups.push(() => watcher.stop());
  return { watcher, notices, log };
}

const statusCount = (imds: FakeAwsImds, path: string, status: number): number =>
  imds.requests.filter((r) => r.path === path && r.status === status).length;

test('delivers a scheduled interruption once, with its time as the deadline', async () => {
  const imds = await fake();
  const { notices } = watch({ baseUrl: imds.url });

  await waitUntil(() => statusCount(imds, ACTION, 404) >= 2, 'polls before any notice');
  expect(notices).toHaveLength(0);

  imds.scheduleNotice({ action: 'terminate', time: '2026-11-28T17:00:00Z' });
  await waitUntil(() => notices.length >= 1, 'notice delivered');
  const seen = statusCount(imds, ACTION, 200);
  await waitUntil(() => statusCount(imds, ACTION, 200) >= seen + 3, 'more polls after delivery');

  expect(notices).toHaveLength(1);
  expect(notices[0]).toMatchObject({
    provider: 'aws',
    kind: 'termination',
    raw: { action: 'terminate', time: '2026-11-28T17:00:00Z' },
  });
  expect(notices[0]!.deadline.toISOString()).toBe('2026-11-28T17:00:00.000Z');

  // IMDSv2: a token PUT with the TTL header, then every GET carries the token.
  const puts = imds.requests.filter((r) => r.method === 'PUT');
  expect(puts.length).toBeGreaterThanOrEqual(1);
  expect(puts[0]!.headers['x-aws-ec2-metadata-token-ttl-seconds']).toBe('21600');
  const gets = imds.requests.filter((r) => r.method === 'GET');
  expect(gets.every((r) => typeof r.headers['x-aws-ec2-metadata-token'] === 'string')).toBe(true);
  expect(imds.countStatus(401)).toBe(0);
});

test('refreshes the IMDSv2 token before it expires', async () => {
  const imds = await fake();
  watch({ baseUrl: imds.url, tokenTtlSeconds: 2 });

  await waitUntil(() => imds.tokensIssued >= 3, 'two token refreshes', 20_000);
  // Each refresh happened while the previous token was still valid: never a 401.
  expect(imds.countStatus(401)).toBe(0);
  const puts = imds.requests.filter((r) => r.method === 'PUT');
  expect(puts.every((r) => r.headers['x-aws-ec2-metadata-token-ttl-seconds'] === '2')).toBe(true);
});

test('on 401 (token revoked) gets a new token and keeps watching', async () => {
  const imds = await fake();
  const { notices, log } = watch({ baseUrl: imds.url });

  await waitUntil(() => statusCount(imds, ACTION, 404) >= 1, 'first poll');
  const issued = imds.tokensIssued;
  imds.revokeTokens();
  await waitUntil(() => imds.tokensIssued > issued, 'token re-issued');
  expect(imds.countStatus(401)).toBeGreaterThanOrEqual(1);
  expect(log.events('cloud.aws.token_rejected').length).toBeGreaterThanOrEqual(1);

  imds.scheduleNotice({ time: '2026-11-28T17:00:00Z' });
  await waitUntil(() => notices.length === 1, 'notice after token refresh');
});

test('survives 5xx, malformed JSON, dropped connections and timeouts, then delivers once', async () => {
  const imds = await fake();
  imds.scheduleNotice({ action: 'stop', time: '2026-11-28T17:00:00Z' });
  imds.injectFault({ kind: 'http500', pathIncludes: ACTION, times: 2 });
  imds.injectFault({ kind: 'malformed', pathIncludes: ACTION, times: 2 });
  imds.injectFault({ kind: 'drop', pathIncludes: ACTION, times: 2 });
  imds.injectFault({ kind: 'slow', pathIncludes: ACTION, delayMs: 3000 });
  const { notices, log } = watch({ baseUrl: imds.url, requestTimeoutMs: 300 });

  await waitUntil(() => notices.length >= 1, 'notice after faults', 30_000);
  // The notice is only visible through a healthy response, which comes after every fault.
  expect(imds.pendingFaults()).toBe(0);
  const failures = log.events('cloud.watch.poll_failed');
  expect(failures.length).toBeGreaterThanOrEqual(7);
  expect(failures.some((e) => String(e.err).includes('HTTP 500'))).toBe(true);
  expect(failures.some((e) => String(e.err).includes('not JSON'))).toBe(true);
  expect(failures.some((e) => String(e.err).includes('no answer within 300 ms'))).toBe(true);
  expect(failures.filter((e) => e.level === 40).length).toBeGreaterThanOrEqual(1);

  const seen = statusCount(imds, ACTION, 200);
  await waitUntil(() => statusCount(imds, ACTION, 200) >= seen + 3, 'more polls');
  expect(notices).toHaveLength(1);
  expect(notices[0]!.reason).toContain('stop');
  expect(log.events('cloud.watch.recovered').length).toBeGreaterThanOrEqual(1);
});

test('connection refused: keeps retrying until the metadata service appears', async () => {
  const port = await unusedPort();
  const { notices, log } = watch({ baseUrl: `http://127.0.0.1:${port}` });

  await waitUntil(() => log.events('cloud.watch.poll_failed').length >= 3, 'refused attempts');
  expect(log.events('cloud.watch.poll_failed')[0]!.err).toMatch(/ECONNREFUSED/);

  const imds = await fake(port);
  imds.scheduleNotice({ time: '2026-11-28T17:00:00Z' });
  await waitUntil(() => notices.length === 1, 'notice once the service is up');
});

test('a failing onNotice is retried on the next poll, then never again', async () => {
  const imds = await fake();
  imds.scheduleNotice({ time: '2026-11-28T17:00:00Z' });
  let calls = 0;
  const { log } = watch({ baseUrl: imds.url }, async () => {
    calls += 1;
    if (calls === 1) throw new Error('drain could not start');
  });

  await waitUntil(() => calls >= 2, 'handler retried');
  const seen = imds.requests.length;
  await waitUntil(() => imds.requests.length >= seen + 6, 'more polls');
  expect(calls).toBe(2);
  expect(log.events('cloud.notice.handler_failed')).toHaveLength(1);
  expect(log.events('cloud.notice.handler_failed')[0]!.err).toBe('drain could not start');
});

test("rebalance recommendation is only logged with onRebalance='log' (default)", async () => {
  const imds = await fake();
  imds.scheduleRebalance('2026-11-28T16:58:00Z');
  const { notices, log } = watch({ baseUrl: imds.url });

  await waitUntil(() => statusCount(imds, REBALANCE, 200) >= 3, 'rebalance polled');
  expect(notices).toHaveLength(0);
  expect(log.events('cloud.aws.rebalance_logged')).toHaveLength(1);
});

test("rebalance recommendation becomes a notice with onRebalance='act'", async () => {
  const imds = await fake();
  imds.scheduleRebalance('2026-11-28T16:58:00Z');
  const { notices } = watch({ baseUrl: imds.url, onRebalance: 'act', rebalanceWindowMs: 60_000 });

  await waitUntil(() => notices.length >= 1, 'rebalance notice');
  await waitUntil(() => statusCount(imds, REBALANCE, 200) >= 4, 'more polls');
  expect(notices).toHaveLength(1);
  expect(notices[0]!.kind).toBe('rebalance');
  expect(notices[0]!.deadline.toISOString()).toBe('2026-11-28T16:59:00.000Z');
});

test('stop() aborts an in-flight request and leaves nothing running', async () => {
  const imds = await fake();
  imds.injectFault({ kind: 'slow', pathIncludes: ACTION, delayMs: 60_000 });
  const { watcher } = watch({ baseUrl: imds.url, requestTimeoutMs: 60_000 });

  await waitUntil(() => imds.requests.some((r) => r.path === ACTION), 'request in flight');
  expect(await within(5000, watcher.stop())).toBe('settled');

  const count = imds.requests.length;
  await sleep(300);
  expect(imds.requests.length).toBe(count);
});

test('rejects bad options with the field named', () => {
  const { logger } = captureLogger();
  expect(() => new AwsNoticeWatcher({ baseUrl: 'http://127.0.0.1:1', logger, tokenTtlSeconds: 0 })).toThrow(
    /tokenTtlSeconds/,
  );
  expect(() => new AwsNoticeWatcher({ baseUrl: 'not a url', logger })).toThrow(/baseUrl/);
  expect(() => new AwsNoticeWatcher({ baseUrl: 'http://127.0.0.1:1', logger, pollMs: -5 })).toThrow(/pollMs/);
});
