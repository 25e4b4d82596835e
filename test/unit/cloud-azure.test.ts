import { AzureNoticeWatcher, type AzureWatcherOptions } from '../../core/cloud/azure.js';
import type { ReclaimNotice } from '../../core/cloud/types.js';
import { captureLogger, FakeAzureImds, sleep, waitUntil, useCloudTestHooks } from '../support/fake-metadata.js';

const EVENTS = '/metadata/scheduledevents';

const cleanups = useCloudTestHooks();

async function fake(vmName = 'arch-test-vm'): Promise<FakeAzureImds> {
  const az = await FakeAzureImds.start({ vmName });
  cleanups.push(() => az.close());
  return az;
}

function watch(
  opts: Partial<AzureWatcherOptions> & { baseUrl: string },
  handler?: (n: ReclaimNotice) => Promise<void>,
) {
  const log = captureLogger();
  const watcher = new AzureNoticeWatcher({
    logger: log.logger,
    pollMs: 50,
    maxBackoffMs: 200,
    requestTimeoutMs: 1000,
    ...opts,
  });
  const notices: ReclaimNotice[] = [];
  watcher.start(handler ?? (async (n) => void notices.push(n)));
  cleanups.push(() => watcher.stop());
  return { watcher, notices, log };
}

const eventGets = (az: FakeAzureImds) =>
  az.requests.filter((r) => r.path === EVENTS && r.method === 'GET' && r.status === 200).length;

async function morePolls(az: FakeAzureImds, n = 3): Promise<void> {
  const seen = eventGets(az);
  await waitUntil(() => eventGets(az) >= seen + n, `${n} more polls`);
}

test('Preempt for this VM: one notice at NotBefore, acknowledged only after onNotice resolves', async () => {
  const az = await fake();
  const notices: ReclaimNotice[] = [];
  let release!: () => void;
  const drainStarted = new Promise<void>((r) => (release = r));
  watch({ baseUrl: az.url, vmName: 'arch-test-vm' }, async (n) => {
    notices.push(n);
    await drainStarted;
  });
  await morePolls(az, 1);

  const notBefore = new Date(Date.now() + 60_000).toUTCString(); // RFC 1123, e.g. "Mon, 19 Sep 2016 18:29:47 GMT"
  const eventId = az.scheduleEvent({ NotBefore: notBefore });
  await waitUntil(() => notices.length === 1, 'notice');
  expect(notices[0]).toMatchObject({ provider: 'azure', kind: 'preemption', eventId });
  expect(notices[0]!.deadline.getTime()).toBe(Date.parse(notBefore));

  await sleep(200);
  expect(az.acks).toHaveLength(0); // drain not started yet
  release();
  await waitUntil(() => az.acks.length === 1, 'acknowledged');
  expect(az.acks[0]!.eventId).toBe(eventId);
  const post = az.requests.find((r) => r.method === 'POST')!;
  expect(post.headers['metadata']).toBe('true');
  expect(post.query.get('api-version')).toBe('2020-07-01');
  expect(JSON.parse(post.body)).toEqual({ StartRequests: [{ EventId: eventId }] });
  expect(az.events[0]!.EventStatus).toBe('Started');

  // The Started event (new incarnation, same EventId) is not delivered again.
  await morePolls(az);
  expect(notices).toHaveLength(1);
  expect(az.acks).toHaveLength(1);
});

test('looks the VM name up from IMDS when it is not configured (once)', async () => {
  const az = await fake('spot-vm-7');
  const { notices } = watch({ baseUrl: az.url });
  await morePolls(az, 1);
  az.scheduleEvent();
  await waitUntil(() => notices.length === 1, 'notice');
  await morePolls(az);
  const lookups = az.requests.filter((r) => r.path === '/metadata/instance/compute/name');
  expect(lookups).toHaveLength(1);
  expect(lookups[0]!.query.get('format')).toBe('text');
  expect(lookups[0]!.headers['metadata']).toBe('true');
});

test("ignores other VMs' events and event types it does not act on", async () => {
  const az = await fake();
  const { notices, log } = watch({ baseUrl: az.url, vmName: 'arch-test-vm' });
  az.scheduleEvent({ Resources: ['other-vm'] });
  az.scheduleEvent({ EventType: 'Reboot' });
  await morePolls(az);
  expect(notices).toHaveLength(0);
  expect(az.acks).toHaveLength(0);
  expect(log.events('cloud.azure.event_ignored')).toHaveLength(2);

  // VM names compare case-insensitively, as Azure treats them.
  az.scheduleEvent({ Resources: ['ARCH-TEST-VM'] });
  await waitUntil(() => notices.length === 1, 'notice for this VM');
});

test('an unchanged DocumentIncarnation is not reprocessed', async () => {
  const az = await fake();
  const { notices } = watch({ baseUrl: az.url, vmName: 'arch-test-vm' });
  await morePolls(az, 1);
  // Sneak an event in without bumping the incarnation: the watcher must skip the document.
  const id = az.scheduleEvent();
  az.incarnation -= 1;
  await morePolls(az);
  expect(notices).toHaveLength(0);

  az.incarnation += 1;
  await waitUntil(() => notices.length === 1, 'notice after the incarnation changed');
  expect(notices[0]!.eventId).toBe(id);
});

test('an empty NotBefore means now + 30 s', async () => {
  const az = await fake();
  az.scheduleEvent({ NotBefore: '', EventStatus: 'Started' });
  const before = Date.now();
  const { notices } = watch({ baseUrl: az.url, vmName: 'arch-test-vm' });
  await waitUntil(() => notices.length === 1, 'notice');
  const after = Date.now();
  expect(notices[0]!.deadline.getTime()).toBeGreaterThanOrEqual(before + 30_000);
  expect(notices[0]!.deadline.getTime()).toBeLessThanOrEqual(after + 30_000);
});

test('survives 5xx, malformed JSON, dropped connections and timeouts; still one notice and one ack', async () => {
  const az = await fake();
  const eventId = az.scheduleEvent();
  az.injectFault({ kind: 'http500', pathIncludes: EVENTS, method: 'GET' });
  az.injectFault({ kind: 'malformed', pathIncludes: EVENTS, method: 'GET' });
  az.injectFault({ kind: 'drop', pathIncludes: EVENTS, method: 'GET' });
  az.injectFault({ kind: 'slow', pathIncludes: EVENTS, method: 'GET', delayMs: 3000 });
  const { notices, log } = watch({ baseUrl: az.url, vmName: 'arch-test-vm', requestTimeoutMs: 300 });

  await waitUntil(() => az.acks.length === 1, 'acknowledged', 20_000);
  expect(az.pendingFaults()).toBe(0);
  expect(log.events('cloud.watch.poll_failed')).toHaveLength(4);
  await morePolls(az);
  expect(notices).toHaveLength(1);
  expect(notices[0]!.eventId).toBe(eventId);
  expect(az.acks).toHaveLength(1);
});

test('a failing onNotice is not acknowledged; it is retried, then acknowledged once', async () => {
  const az = await fake();
  az.scheduleEvent();
  let calls = 0;
  let acksWhenRetried = -1;
  const { log } = watch({ baseUrl: az.url, vmName: 'arch-test-vm' }, async () => {
    calls += 1;
    if (calls === 1) throw new Error('drain could not start');
    acksWhenRetried = az.acks.length;
  });
  await waitUntil(() => az.acks.length >= 1, 'acknowledged');
  await morePolls(az);
  expect(calls).toBe(2);
  expect(acksWhenRetried).toBe(0); // the failed attempt was not acknowledged
  expect(az.acks).toHaveLength(1);
  expect(log.events('cloud.notice.handler_failed')).toHaveLength(1);
});

test('a failed acknowledgement is retried without redelivering the notice', async () => {
  const az = await fake();
  az.scheduleEvent();
  az.injectFault({ kind: 'http500', pathIncludes: EVENTS, method: 'POST', times: 2 });
  const { notices, log } = watch({ baseUrl: az.url, vmName: 'arch-test-vm' });
  await waitUntil(() => az.acks.length === 1, 'acknowledged after retries');
  expect(az.pendingFaults()).toBe(0);
  expect(log.events('cloud.azure.ack_failed')).toHaveLength(2);
  await morePolls(az);
  expect(notices).toHaveLength(1);
  expect(az.acks).toHaveLength(1);
});

test('acknowledge() can be called directly and reports failures', async () => {
  const az = await fake();
  const id = az.scheduleEvent();
  const { logger } = captureLogger();
  const watcher = new AzureNoticeWatcher({ baseUrl: az.url, logger, vmName: 'arch-test-vm' });
  await watcher.acknowledge(id);
  expect(az.acks.map((a) => a.eventId)).toEqual([id]);
  await expect(watcher.acknowledge('NO-SUCH-EVENT')).rejects.toThrow(/HTTP 400/);
  await watcher.stop(); // never started: still fine
});
