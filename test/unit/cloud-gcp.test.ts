import { GcpNoticeWatcher, type GcpWatcherOptions } from '../../core/cloud/gcp.js';
import type { ReclaimNotice } from '../../core/cloud/types.js';
import {
  captureLogger,
  FakeGcpMetadata,
  sleep,
  waitUntil,
  within,
  useCloudTestHooks,
} from '../support/fake-metadata.js';

const PREEMPTED = '/computeMetadata/v1/instance/preempted';

const cleanups = useCloudTestHooks();

async function fake(): Promise<FakeGcpMetadata> {
  const gcp = await FakeGcpMetadata.start();
  cleanups.push(() => gcp.close());
  return gcp;
}

function watch(opts: Partial<GcpWatcherOptions> & { baseUrl: string }, handler?: (n: ReclaimNotice) => Promise<void>) {
  const log = captureLogger();
  const watcher = new GcpNoticeWatcher({
    logger: log.logger,
    pollMs: 50,
    maxBackoffMs: 200,
    requestTimeoutMs: 1000,
    waitTimeoutSec: 10,
    ...opts,
  });
  const notices: ReclaimNotice[] = [];
  watcher.start(handler ?? (async (n) => void notices.push(n)));
  cleanups.push(() => watcher.stop());
  return { watcher, notices, log };
}

const hangingRequests = (gcp: FakeGcpMetadata) => gcp.requests.filter((r) => r.query.get('wait_for_change') === 'true');

test('a hanging GET sees the preemption at once; one notice, deadline = now + 30 s', async () => {
  const gcp = await fake();
  const { notices } = watch({ baseUrl: gcp.url });

  await waitUntil(() => gcp.hangingCount === 1, 'hanging GET armed');
  const hang = hangingRequests(gcp)[0]!;
  expect(hang.query.get('last_etag')).toBe(gcp.etag);
  expect(hang.query.get('timeout_sec')).toBe('10');
  expect(hang.headers['metadata-flavor']).toBe('Google');
  // While the value does not change the watcher waits instead of polling.
  const count = gcp.requests.length;
  await sleep(300);
  expect(gcp.requests.length).toBe(count);

  const before = Date.now();
  gcp.setPreempted(true);
  await waitUntil(() => notices.length >= 1, 'notice');
  const after = Date.now();
  expect(notices[0]).toMatchObject({ provider: 'gcp', kind: 'preemption' });
  expect(notices[0]!.deadline.getTime()).toBeGreaterThanOrEqual(before + 30_000);
  expect(notices[0]!.deadline.getTime()).toBeLessThanOrEqual(after + 30_000);
  // It was the hanging request that carried the news.
  expect(hang.status).toBe(200);

  const seen = gcp.requests.length;
  await waitUntil(() => gcp.requests.length >= seen + 3, 'more polls');
  expect(notices).toHaveLength(1);
});

test('re-arms the hanging GET after timeout_sec without a change', async () => {
  const gcp = await fake();
  const { notices } = watch({ baseUrl: gcp.url, waitTimeoutSec: 1 });

  await waitUntil(
    () => hangingRequests(gcp).filter((r) => r.status === 200).length >= 2,
    'two waits timed out',
    20_000,
  );
  expect(notices).toHaveLength(0);
  gcp.setPreempted(true);
  await waitUntil(() => notices.length === 1, 'notice');
});

test('honours a configured notice window', async () => {
  const gcp = await fake();
  gcp.setPreempted(true);
  const before = Date.now();
  const { notices } = watch({ baseUrl: gcp.url, noticeWindowMs: 5000 });
  await waitUntil(() => notices.length === 1, 'notice');
  expect(notices[0]!.deadline.getTime()).toBeGreaterThanOrEqual(before + 5000);
  expect(notices[0]!.deadline.getTime()).toBeLessThan(before + 30_000);
});

test('rejects answers without "Metadata-Flavor: Google", accepts them once it is back', async () => {
  const gcp = await fake();
  gcp.setPreempted(true);
  gcp.omitFlavorHeader = true;
  const { notices, log } = watch({ baseUrl: gcp.url });

  await waitUntil(() => log.events('cloud.watch.poll_failed').length >= 3, 'rejected answers');
  expect(notices).toHaveLength(0);
  expect(log.events('cloud.watch.poll_failed')[0]!.err).toMatch(/Metadata-Flavor/);

  gcp.omitFlavorHeader = false;
  await waitUntil(() => notices.length === 1, 'notice once the header is present');
});

test('survives 5xx, malformed body, dropped connections and timeouts', async () => {
  const gcp = await fake();
  gcp.injectFault({ kind: 'http500', pathIncludes: PREEMPTED });
  gcp.injectFault({ kind: 'malformed', pathIncludes: PREEMPTED });
  gcp.injectFault({ kind: 'drop', pathIncludes: PREEMPTED });
  gcp.injectFault({ kind: 'slow', pathIncludes: PREEMPTED, delayMs: 3000 });
  const { notices, log } = watch({ baseUrl: gcp.url, requestTimeoutMs: 300 });

  await waitUntil(() => gcp.hangingCount === 1, 'healthy hanging GET after the faults', 20_000);
  expect(gcp.pendingFaults()).toBe(0);
  const errs = log.events('cloud.watch.poll_failed').map((e) => String(e.err));
  expect(errs).toHaveLength(4);
  expect(errs.some((e) => e.includes('HTTP 500'))).toBe(true);
  expect(errs.some((e) => e.includes('not TRUE or FALSE'))).toBe(true);
  expect(errs.some((e) => e.includes('no answer within 300 ms'))).toBe(true);

  gcp.setPreempted(true);
  await waitUntil(() => notices.length === 1, 'notice');
});

test('a failing onNotice is retried at poll pace, not after the next change', async () => {
  const gcp = await fake();
  let calls = 0;
  watch({ baseUrl: gcp.url, waitTimeoutSec: 600 }, async () => {
    calls += 1;
    if (calls === 1) throw new Error('drain could not start');
  });
  await waitUntil(() => gcp.hangingCount === 1, 'hanging GET armed');
  gcp.setPreempted(true);
  // The value never changes again, so a watcher relying on the next change would wait 600 s.
  await waitUntil(() => calls >= 2, 'handler retried');
  const seen = gcp.requests.length;
  await waitUntil(() => gcp.requests.length >= seen + 3, 'more polls');
  expect(calls).toBe(2);
});

test('stop() ends a hanging GET and leaves nothing running', async () => {
  const gcp = await fake();
  const { watcher } = watch({ baseUrl: gcp.url, waitTimeoutSec: 600 });
  await waitUntil(() => gcp.hangingCount === 1, 'hanging GET armed');

  expect(await within(5000, watcher.stop())).toBe('settled');
  await waitUntil(() => gcp.hangingCount === 0, 'server saw the request go away');
  const count = gcp.requests.length;
  await sleep(300);
  expect(gcp.requests.length).toBe(count);
});
