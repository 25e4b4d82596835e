import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { workflowIds } from '../../contract/names.js';
import type { ReclaimWatchState } from '../../contract/types.js';
import { readLogLines } from '../support/arch-env.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { FakeAwsImds, FakeAzureImds, FakeGcpMetadata, unusedPort } from '../support/fake-metadata.js';
import { runCli, runningOn, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';

/**
 * Cloud reclaim notices through a real arch-worker process (loopback fake
 * metadata services, real Temporal, real containerd nodes): the worker
 * survives whatever the metadata service does, and one notice makes exactly
 * one reclaim signal, whose drain moves the node's containers to B.
 */
let cluster: TestCluster;
const A = 'cn-a';
const B = 'cn-b';

beforeAll(async () => {
  await cleanupStaleNodes();
  cluster = await startCluster('notices', [A, B]);
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

const watchId = workflowIds.reclaimWatch(A);

/** Restart A's worker watching a (fake) metadata service. */
async function watchingWorker(
  provider: string,
  url: string,
): Promise<{ alive: () => boolean; events: (name: string) => Record<string, unknown>[] }> {
  const old = cluster.workers[A]!;
  await old.stop();
  // The log file is shared by every worker A had: only this one's lines count.
  const skip = readLogLines(old.archLog).length;
  const worker = await cluster.startWorker(A, ['--reclaim-targets', B], {
    ARCH_CLOUD_PROVIDER: provider,
    ARCH_METADATA_URL: url,
    ARCH_NOTICE_POLL_MS: '100',
  });
  let exited = false;
  void worker.exited.then(() => (exited = true));
  return {
    alive: () => !exited,
    events: (name) =>
      readLogLines(worker.archLog)
        .slice(skip)
        .filter((l) => l.event === name),
  };
}

/** The worker answers Temporal: `arch-cli ls --node A` runs A's activities. */
async function answers(): Promise<void> {
  const r = await runCli(cluster, ['--json', 'ls', '--node', A]);
  expect(r.code).toBe(0);
}

/** The reclaim watcher's running execution, or undefined if none runs. */
async function runningWatcher(client: Client): Promise<{ runId: string } | undefined> {
  try {
    const d = await client.workflow.getHandle(watchId).describe();
    return d.status.name === 'RUNNING' ? { runId: d.runId } : undefined;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
}

/** `reclaim` signals in the watcher's current run. */
async function reclaimSignals(client: Client): Promise<number> {
  const h = await client.workflow.getHandle(watchId).fetchHistory();
  return (h.events ?? []).filter((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'reclaim').length;
}

/** The running watcher (not a terminated earlier one) has finished a drain for this notice. */
async function drained(client: Client, reason: RegExp): Promise<ReclaimWatchState> {
  return waitUntil(
    'the drain for the notice to finish',
    async () => {
      if (!(await runningWatcher(client))) return undefined;
      const s = await client.workflow.getHandle(watchId).query<ReclaimWatchState>('state');
      return s.history.length > 0 && s.status === 'watching' && reason.test(s.history[0]!.reason ?? '') ? s : undefined;
    },
    120_000,
    250,
  );
}

/** After many more polls still one signal, one drain, nothing pending. */
async function exactlyOne(client: Client, morePolls: () => Promise<void>): Promise<ReclaimWatchState> {
  await morePolls();
  const s = await client.workflow.getHandle(watchId).query<ReclaimWatchState>('state');
  expect(s.history).toHaveLength(1);
  expect(s.pending).toBe(0);
  expect(s.status).toBe('watching');
  expect(s.history[0]).toMatchObject({ status: 'completed', migrated: 1, failed: 0 });
  expect(await reclaimSignals(client)).toBe(1);
  return s;
}

/**
 * The drained container runs on B; on timeout the error carries the drain's
 * own result (outcome and error per container) so a failure says why (what
 * the nodes logged is printed beside it: test/support/after-failure).
 */
async function movedToB(client: Client, s: ReclaimWatchState, id: string): Promise<void> {
  try {
    await waitUntil(
      `${id} on B`,
      async () => ((await runningOn(cluster, id)).join() === B ? true : undefined),
      60_000,
      250,
    );
  } catch (err) {
    const drainId = s.history[0]!.drainWorkflowId;
    const result = await client.workflow
      .getHandle(drainId)
      .result()
      .catch((e: unknown) => `drain failed: ${(e as Error).message}`);
    throw new Error(
      `${(err as Error).message}; running on [${(await runningOn(cluster, id)).join()}]; watcher record ${JSON.stringify(s.history[0])}; drain ${drainId} result ${JSON.stringify(result)}`,
    );
  }
}

test('AWS: refused connections, 500s, malformed JSON, timeouts, a dropped connection and a revoked token never stop the worker; then one notice → one signal → the drain', async () => {
  const client = cluster.temporal.client;
  const port = await unusedPort();
  const { alive, events } = await watchingWorker('aws', `http://127.0.0.1:${port}`);
  await cluster.runCounter(A, 'aws1');
  const before = await cluster.waitCount(A, 'aws1', 3);

  // Nothing listens yet: connection refused, logged and retried.
  await waitUntil(
    'refused polls logged',
    () => (events('cloud.watch.poll_failed').length >= 2 ? true : undefined),
    30_000,
  );
  await answers();

  const imds = await FakeAwsImds.start({ port });
  try {
    await waitUntil(
      'the watcher to reach the metadata service',
      () => (imds.countStatus(404) > 0 ? true : undefined),
      30_000,
    );
    imds.injectFault({ kind: 'http500', method: 'PUT', pathIncludes: '/latest/api/token' });
    imds.injectFault({ kind: 'malformed', pathIncludes: 'instance-action', times: 2 });
    imds.injectFault({ kind: 'slow', pathIncludes: 'instance-action', delayMs: 4000 }); // past the 2 s request timeout
    imds.injectFault({ kind: 'http500', pathIncludes: 'instance-action' });
    imds.injectFault({ kind: 'drop', pathIncludes: 'rebalance' });
    // The token PUT fault only hits when a token is needed: revoke the current one (as an IMDS restart would).
    imds.revokeTokens();
    await waitUntil('every fault served', () => (imds.pendingFaults() === 0 ? true : undefined), 90_000, 100);
    const served = imds.requests.length;
    await waitUntil(
      'a clean poll after the faults',
      () =>
        imds.requests.slice(served).some((r) => r.path.endsWith('instance-action') && r.status === 404)
          ? true
          : undefined,
      30_000,
    );
    // An expired/revoked token: 401, a fresh token, and polling goes on.
    const tokens = imds.tokensIssued;
    const afterRevoke = imds.requests.length;
    imds.revokeTokens();
    await waitUntil(
      'a poll with a fresh token',
      () =>
        imds.tokensIssued > tokens &&
        imds.requests.slice(afterRevoke).some((r) => r.path.endsWith('instance-action') && r.status === 404)
          ? true
          : undefined,
      30_000,
    );
    expect(imds.countStatus(401)).toBeGreaterThan(0);
    expect(imds.countStatus('dropped')).toBe(1);
    expect(events('cloud.watch.poll_failed').length).toBeGreaterThan(2);
    expect(events('cloud.watch.recovered').length).toBeGreaterThan(0);

    // Still alive and serving; no fault was taken for a notice.
    expect(alive()).toBe(true);
    await answers();
    expect(await runningWatcher(client)).toBeUndefined();

    imds.scheduleNotice({
      action: 'terminate',
      time: new Date(Date.now() + 120_000).toISOString().replace(/\.\d+Z$/, 'Z'),
    });
    const s = await drained(client, /^aws termination/);
    await movedToB(client, s, 'aws1');
    await cluster.waitCount(B, 'aws1', before + 2);
    await exactlyOne(client, async () => {
      const n = imds.requests.length;
      await waitUntil(
        '20 more polls',
        () =>
          imds.requests.slice(n).filter((r) => r.path.endsWith('instance-action') && r.status === 200).length >= 20
            ? true
            : undefined,
        30_000,
      );
    });
    expect(events('cloud.notice.delivered')).toHaveLength(1);
    expect(alive()).toBe(true);
  } finally {
    await imds.close();
    await client.workflow
      .getHandle(watchId)
      .terminate('test done')
      .catch(() => undefined);
  }
});

test('GCP: preempted=TRUE through the worker → one signal → the drain', async () => {
  const client = cluster.temporal.client;
  const gcp = await FakeGcpMetadata.start();
  try {
    // The first answers are bad (before the watcher settles into its hanging GET).
    gcp.injectFault({ kind: 'malformed', pathIncludes: 'preempted' });
    gcp.injectFault({ kind: 'http500', pathIncludes: 'preempted' });
    const { alive, events } = await watchingWorker('gcp', gcp.url);
    await cluster.runCounter(A, 'gcp1');
    const before = await cluster.waitCount(A, 'gcp1', 3);
    await waitUntil(
      'faults served and the watcher waiting for a change',
      () => (gcp.pendingFaults() === 0 && gcp.hangingCount > 0 ? true : undefined),
      60_000,
      100,
    );
    expect(events('cloud.watch.poll_failed').length).toBeGreaterThanOrEqual(2);
    expect(await runningWatcher(client)).toBeUndefined();

    gcp.setPreempted(true);
    const s = await drained(client, /^gcp preemption/);
    await movedToB(client, s, 'gcp1');
    await cluster.waitCount(B, 'gcp1', before + 2);
    await exactlyOne(client, async () => {
      const n = gcp.requests.length;
      await waitUntil('20 more polls', () => (gcp.requests.length - n >= 20 ? true : undefined), 30_000);
    });
    expect(events('cloud.notice.delivered')).toHaveLength(1);
    expect(alive()).toBe(true);
  } finally {
    await gcp.close();
    await client.workflow
      .getHandle(watchId)
      .terminate('test done')
      .catch(() => undefined);
  }
});

test('Azure: a Preempt event for this VM through the worker → one signal → the drain, acknowledged once it started', async () => {
  const client = cluster.temporal.client;
  const azure = await FakeAzureImds.start({ vmName: 'cn-a-vm' });
  try {
    const { alive, events } = await watchingWorker('azure', azure.url);
    await cluster.runCounter(A, 'az1');
    const before = await cluster.waitCount(A, 'az1', 3);
    // Another VM's eviction and a malformed document: nothing to do.
    azure.scheduleEvent({ Resources: ['some-other-vm'] });
    azure.injectFault({ kind: 'malformed', pathIncludes: 'scheduledevents' });
    await waitUntil(
      "the other VM's event seen and ignored",
      () => (events('cloud.azure.event_ignored').length > 0 && azure.pendingFaults() === 0 ? true : undefined),
      60_000,
      100,
    );
    expect(await runningWatcher(client)).toBeUndefined();
    expect(azure.acks).toEqual([]);
    expect(events('cloud.watch.poll_failed').length).toBeGreaterThan(0);

    const eventId = azure.scheduleEvent();
    const s = await drained(client, /^azure preemption/);
    await movedToB(client, s, 'az1');
    await cluster.waitCount(B, 'az1', before + 2);
    await exactlyOne(client, async () => {
      const n = azure.requests.length;
      await waitUntil('20 more polls', () => (azure.requests.length - n >= 20 ? true : undefined), 30_000);
    });
    // Acknowledged exactly once, for our event, and only after the drain had started.
    expect(azure.acks.map((a) => a.eventId)).toEqual([eventId]);
    const drainStart = (await client.workflow.getHandle(s.history[0]!.drainWorkflowId).describe()).startTime.getTime();
    expect(azure.acks[0]!.at).toBeGreaterThanOrEqual(drainStart);
    expect(azure.events.find((e) => e.EventId === eventId)?.EventStatus).toBe('Started');
    expect(events('cloud.notice.delivered')).toHaveLength(1);
    expect(alive()).toBe(true);
  } finally {
    await azure.close();
    await client.workflow
      .getHandle(watchId)
      .terminate('test done')
      .catch(() => undefined);
  }
});
