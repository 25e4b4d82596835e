import { setTimeout as sleep } from 'node:timers/promises';
import { WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import type { ContainerRef, ProtectedContainer, ProtectWatchInput, ProtectWatchState } from '../../contract/types.js';
import { StubCluster, type Stubs } from '../support/workflow-env.js';
import { checkpoint, spec, summary } from '../support/workflow-fixtures.js';

/**
 * nodeProtect with stub activities: which containers get periodic
 * checkpoints, at what pace, how many at once, what `protect` changes and
 * that it survives continueAsNew. Timers are real (the dev server): the
 * intervals are the 5 s minimum, so each test takes seconds.
 */
let wf: StubCluster;
const N = 'n1';

beforeAll(async () => {
  wf = await StubCluster.start([N]);
});

afterAll(async () => {
  await wf?.stop();
});

interface Timed {
  id: string;
  start: number;
  end?: number;
}

/** Stubs for a node running `listed`; each checkpoint takes `ms` and is recorded with its times. */
function node(listed: () => ReturnType<typeof summary>[], ms = 200, taken: Timed[] = []): Stubs {
  return {
    [N]: {
      listContainers: () => listed(),
      checkpointContainer: async (i: { ref: ContainerRef; leaveRunning?: boolean }) => {
        if (!i.leaveRunning) throw new Error('a periodic checkpoint must leave the container running');
        const t: Timed = { id: i.ref.id, start: Date.now() };
        taken.push(t);
        await sleep(ms);
        t.end = Date.now();
        return checkpoint(spec(i.ref.id), N, { sizeBytes: 4096, freezeMs: 12 });
      },
    },
  };
}

async function until<T>(what: string, f: () => T | undefined | Promise<T | undefined>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Run nodeProtect with these stubs; `during` tests it, then it is terminated (it never ends by itself). */
async function protect(input: Partial<ProtectWatchInput>, stubs: Stubs, during: (h: WorkflowHandle) => Promise<void>) {
  const r = await wf.run('nodeProtect', { node: N, discoverEveryMs: 500, ...input }, stubs, {
    during: async (h) => {
      try {
        await during(h);
      } finally {
        await h.terminate('test over').catch(() => undefined);
      }
    },
  });
  expect(r.ok).toBe(false); // terminated
}

const state = (h: WorkflowHandle) => h.query<ProtectWatchState>('protectState');

test('a container with an interval is checkpointed at that pace, left running; one without is not touched', async () => {
  const taken: Timed[] = [];
  const listed = () => [summary('paced', { checkpointIntervalMs: 5000 }), summary('plain')];
  await protect({ jitter: 0 }, node(listed, 200, taken), async (h) => {
    await until('three checkpoints of paced', () => taken.length >= 3, 40_000);
    const s = await state(h);
    const paced = s.containers.find((c) => c.id === 'paced')!;
    expect(paced).toMatchObject({ intervalMs: 5000, source: 'container', taken: expect.any(Number) as number });
    expect(paced.last).toMatchObject({ ok: true, freezeMs: 12, sizeBytes: 4096 });
    expect(s.containers.find((c) => c.id === 'plain')?.intervalMs).toBeUndefined();
  });
  expect(taken.every((t) => t.id === 'paced')).toBe(true);
  for (let i = 1; i < taken.length; i++) {
    const gap = taken[i]!.start - taken[i - 1]!.start;
    expect(gap).toBeGreaterThanOrEqual(4900); // never faster than its interval
  }
  expect(wf.callsOf('checkpointContainer').every((c) => (c.input as { leaveRunning: boolean }).leaveRunning)).toBe(
    true,
  );
}, 60_000);

test('at most maxConcurrent checkpoints at once on the node, and one that overruns its interval is not stacked', async () => {
  const taken: Timed[] = [];
  // Each checkpoint takes longer than the 5 s interval.
  const listed = () => ['a', 'b', 'c'].map((id) => summary(id, { checkpointIntervalMs: 5000 }));
  await protect({ settings: { maxConcurrent: 2 } }, node(listed, 6000, taken), async () => {
    await until('five checkpoints', () => taken.filter((t) => t.end).length >= 5, 50_000);
  });
  const events = taken.flatMap((t) => [
    { at: t.start, d: +1 },
    { at: t.end ?? Infinity, d: -1 },
  ]);
  events.sort((x, y) => x.at - y.at || x.d - y.d);
  let now = 0;
  let max = 0;
  for (const e of events) max = Math.max(max, (now += e.d));
  expect(max).toBe(2);
  for (const id of ['a', 'b', 'c']) {
    const mine = taken.filter((t) => t.id === id);
    for (let i = 1; i < mine.length; i++) expect(mine[i]!.start).toBeGreaterThanOrEqual(mine[i - 1]!.end!);
  }
}, 70_000);

test('protect: --every starts checkpoints of a container without an interval, --off stops them; bad input is refused', async () => {
  const taken: Timed[] = [];
  const listed = () => [summary('job', { checkpointIntervalMs: undefined })];
  await protect({ jitter: 0 }, node(listed, 100, taken), async (h) => {
    await until('job listed', async () => (await state(h)).containers.some((c) => c.id === 'job'));
    const on = await h.executeUpdate<ProtectedContainer, [unknown]>('protect', {
      args: [{ namespace: 'default', id: 'job', intervalMs: 5000 }],
    });
    expect(on).toMatchObject({ id: 'job', intervalMs: 5000, source: 'protect' });
    await until('two checkpoints after protect --every', () => taken.length >= 2, 30_000);
    const off = await h.executeUpdate<ProtectedContainer, [unknown]>('protect', {
      args: [{ namespace: 'default', id: 'job', intervalMs: 0 }],
    });
    expect(off).toMatchObject({ id: 'job', source: 'off' });
    expect(off.intervalMs).toBeUndefined();
    await until('no checkpoint in flight', async () => (await state(h)).running === 0);
    const n = taken.length;
    await sleep(7000); // more than the interval it had
    expect(taken.length).toBe(n);

    await expect(
      h.executeUpdate('protect', { args: [{ namespace: 'default', id: 'job', intervalMs: 1000 }] }),
    ).rejects.toThrow(WorkflowUpdateFailedError);
    const unknown = await h
      .executeUpdate('protect', { args: [{ namespace: 'default', id: 'nope', intervalMs: 5000 }] })
      .then(
        () => undefined,
        (e: Error) => e,
      );
    expect(unknown).toBeInstanceOf(WorkflowUpdateFailedError);
    expect(String((unknown as WorkflowUpdateFailedError).cause?.message)).toMatch(
      /default\/nope is not an ARCH container on node n1\. Fix:/,
    );
  });
}, 60_000);

test('a protect choice and the last checkpoint survive continueAsNew', async () => {
  const taken: Timed[] = [];
  const listed = () => [summary('job', { checkpointIntervalMs: 3_600_000 })];
  await protect({ maxRoundsPerRun: 4, jitter: 0 }, node(listed, 100, taken), async (h) => {
    await until('job listed', async () => (await state(h)).containers.some((c) => c.id === 'job'));
    await h.executeUpdate('protect', { args: [{ namespace: 'default', id: 'job', intervalMs: 5000 }] });
    const firstRun = (await h.describe()).runId;
    await until('a new run', async () => ((await h.describe()).runId !== firstRun ? true : undefined), 30_000);
    await until('a checkpoint', () => taken.length >= 1, 30_000);
    const afterCheckpoint = (await h.describe()).runId;
    await until('a run after the checkpoint', async () =>
      (await h.describe()).runId !== afterCheckpoint ? true : undefined,
    );
    const later = wf.client.workflow.getHandle(h.workflowId);
    const job = await until('job in the new run', async () =>
      (await state(later)).containers.find((c) => c.id === 'job'),
    );
    expect(job.taken).toBeGreaterThanOrEqual(1);
    expect(job.last).toMatchObject({ ok: true, freezeMs: 12 });
    expect(job).toMatchObject({ intervalMs: 5000, source: 'protect' });
  });
}, 60_000);
