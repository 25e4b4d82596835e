import { setTimeout as sleep } from 'node:timers/promises';
import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { FailureType } from '../../contract/failures.js';
import type {
  ContainerRef,
  DrainInput,
  DrainResult,
  ReclaimWatchInput,
  ReclaimWatchState,
} from '../../contract/types.js';
import { drainExitCode, formatDrain } from '../../cli/commands/drain.js';
import { EXIT } from '../../cli/exit-codes.js';
import { drainCounts } from '../../workflows/drain-outcomes.js';
import { fail, StubCluster, type Stubs } from '../support/workflow-env.js';
import {
  checkpoint,
  described,
  IMAGE,
  offer,
  plan,
  received,
  restored,
  spec,
  withStubs,
} from '../support/workflow-fixtures.js';

/**
 * drainNode's and nodeReclaimWatch's decisions with stub activities: the
 * plan's order and what does not fit the deadline, which target restores
 * what, compensation when no target can, and the watcher turning notices
 * into drains (earliest deadline first) across continue-as-new. The
 * real-cluster tests (temporal-drain-deadline, temporal-reclaim) stay.
 */
let wf: StubCluster;
const NODE = 'node';

beforeAll(async () => {
  wf = await StubCluster.start([NODE, 't1', 't2']);
});

afterAll(async () => {
  await wf?.stop();
});

const idOf = (input: unknown): string =>
  (input as { ref?: ContainerRef; spec?: ContainerRef; id?: string }).ref?.id ??
  (input as { spec?: ContainerRef }).spec?.id ??
  (input as { id: string }).id;

/** The drained node checkpoints whatever it is asked; targets have the image and restore. */
function drainStubs(planned = plan(['a', 'b'])): Stubs {
  const target = (node: string) => ({
    checkTarget: () => ({ images: [IMAGE] }),
    receiveCheckpoint: () => received('copied'),
    restoreContainer: (i: { spec: ReturnType<typeof spec> }) => restored(i.spec, node),
  });
  return {
    [NODE]: {
      planDrain: () => planned,
      describeContainer: (ref: ContainerRef) => described(spec(ref.id)),
      checkpointContainer: (i: { ref: ContainerRef }) =>
        checkpoint(spec(i.ref.id), NODE, { offer: offer(`tok-${i.ref.id}`) }),
      offerCheckpoint: (i: { ref: ContainerRef }) => offer(`tok2-${i.ref.id}`),
      withdrawOffer: () => true,
      cleanupSource: () => ({ removedContainer: true, removedCheckpoint: true, ms: 1 }),
      restoreContainer: (i: { spec: ReturnType<typeof spec> }) => restored(i.spec, NODE),
    },
    t1: target('t1'),
    t2: target('t2'),
  };
}

const inMs = (ms: number): string => new Date(Date.now() + ms).toISOString();

function drainInput(o: Partial<DrainInput> = {}): DrainInput {
  return {
    node: NODE,
    targets: ['t1', 't2'],
    deadline: inMs(60_000),
    nodeStartTimeoutMs: 2_000,
    restoreAttempts: 1,
    ...o,
  };
}

const outcomes = (r: DrainResult) => r.containers.map((c) => `${c.id}:${c.outcome}${c.target ? `@${c.target}` : ''}`);

test('plan first, then every container checkpointed, then restored round-robin on the targets', async () => {
  const input = drainInput({ parallelism: 3, selector: { namespace: 'default' } });
  const r = await wf.run<DrainResult>('drainNode', input, drainStubs());
  if (!r.ok) throw r.error;
  expect(outcomes(r.value)).toEqual(['a:migrated@t1', 'b:migrated@t2']);
  expect(r.value.withinDeadline).toBe(true);
  expect(wf.calls[0]).toMatchObject({
    node: NODE,
    activity: 'planDrain',
    input: { deadline: input.deadline, maxParallel: 3, selector: { namespace: 'default' } },
  });
  // Every checkpoint before any restore: what the node had is safe first.
  const seq = wf.sequence();
  const lastCheckpoint = seq.lastIndexOf(`${NODE}:checkpointContainer`);
  expect(seq.indexOf('t1:receiveCheckpoint')).toBeGreaterThan(lastCheckpoint);
  expect(seq.indexOf('t2:receiveCheckpoint')).toBeGreaterThan(lastCheckpoint);
  // Local storage with targets: each checkpoint is offered, and the target fetches with that offer.
  for (const c of wf.callsOf('checkpointContainer')) expect(c.input).toMatchObject({ offer: true });
  expect(wf.callsOf('receiveCheckpoint', 't1')[0]!.input).toMatchObject({ offer: offer('tok-a') });
  expect(wf.callsOf('receiveCheckpoint', 't2')[0]!.input).toMatchObject({ offer: offer('tok-b') });
  expect(
    wf
      .callsOf('cleanupSource', NODE)
      .map((c) => idOf(c.input))
      .sort(),
  ).toEqual(['a', 'b']);
});

test('not expected to fit and no time left for it: skipped, never frozen, and reported', async () => {
  const stubs = drainStubs(plan(['a'], [{ id: 'big', estimatedMs: 10 * 60_000 }]));
  const r = await wf.run<DrainResult>('drainNode', drainInput(), stubs);
  if (!r.ok) throw r.error;
  expect(outcomes(r.value)).toEqual(['a:migrated@t1', 'big:skipped']);
  const big = r.value.containers[1]!;
  expect(big).toMatchObject({ runningOn: NODE, checkpointedInTime: false, expectedToFit: false });
  expect(big.error).toMatch(/^not started: not expected to finish before the deadline \(needs about 600\.0 s/);
  expect(r.value.plan.notExpectedToFit).toEqual(['default/big']);
  expect(r.value.withinDeadline).toBe(false);
  expect(wf.callsOf('checkpointContainer').map((c) => idOf(c.input))).toEqual(['a']);
  expect(wf.callsOf('describeContainer').map((c) => idOf(c.input))).toEqual(['a']);
});

test('not expected to fit but time left when a lane frees: tried last, after every container that fits', async () => {
  const stubs = drainStubs(plan(['a', 'b'], [{ id: 'late', estimatedMs: 500 }]));
  const r = await wf.run<DrainResult>('drainNode', drainInput({ targets: [] }), stubs);
  if (!r.ok) throw r.error;
  expect(outcomes(r.value)).toEqual(['a:checkpointed', 'b:checkpointed', 'late:checkpointed']);
  expect(wf.callsOf('checkpointContainer').map((c) => idOf(c.input))).toEqual(['a', 'b', 'late']);
  // Checkpoint only: nothing will be fetched, so nothing is offered.
  for (const c of wf.callsOf('checkpointContainer')) expect(c.input).toMatchObject({ offer: false });
  expect(wf.calls.filter((c) => c.node !== NODE)).toEqual([]);
});

test('a checkpoint that ends after the deadline is not "in time"', async () => {
  const stubs = withStubs(drainStubs(plan(['slow'])), {
    [NODE]: {
      checkpointContainer: async (i: { ref: ContainerRef }) => {
        await sleep(2_500);
        return checkpoint(spec(i.ref.id), NODE);
      },
    },
  });
  const r = await wf.run<DrainResult>('drainNode', drainInput({ targets: [], deadline: inMs(1_500) }), stubs);
  if (!r.ok) throw r.error;
  expect(r.value.containers[0]).toMatchObject({ id: 'slow', outcome: 'checkpointed', checkpointedInTime: false });
  expect(r.value.withinDeadline).toBe(false);
});

test('a checkpoint that fails is reported, and the others still move', async () => {
  const stubs = withStubs(drainStubs(), {
    [NODE]: {
      checkpointContainer: (i: { ref: ContainerRef }) =>
        i.ref.id === 'a'
          ? fail('CheckpointFailed', 'criu: dump failed')
          : checkpoint(spec(i.ref.id), NODE, { offer: offer(`tok-${i.ref.id}`) }),
    },
  });
  const r = await wf.run<DrainResult>('drainNode', drainInput(), stubs);
  if (!r.ok) throw r.error;
  expect(outcomes(r.value)).toEqual(['a:checkpoint-failed', 'b:migrated@t1']);
  expect(r.value.containers[0]!.error).toContain('criu: dump failed');
});

test('first target fails: the next one restores it', async () => {
  const stubs = withStubs(drainStubs(plan(['a'])), {
    t1: { restoreContainer: () => fail(FailureType.restoreFellBack, 'started fresh') },
  });
  const r = await wf.run<DrainResult>('drainNode', drainInput(), stubs);
  if (!r.ok) throw r.error;
  expect(outcomes(r.value)).toEqual(['a:migrated@t2']);
  // t1's offer was withdrawn once its bytes were there: t2 fetches with a new one.
  // The withdrawal runs beside the restore: either may start first.
  const seq = wf.sequence().slice(3);
  for (const i of [2, 7]) seq.splice(i, 2, ...seq.slice(i, i + 2).sort());
  expect(seq).toEqual([
    't1:checkTarget',
    't1:receiveCheckpoint',
    'node:withdrawOffer',
    't1:restoreContainer',
    't2:checkTarget',
    'node:offerCheckpoint',
    't2:receiveCheckpoint',
    'node:withdrawOffer',
    't2:restoreContainer',
    'node:cleanupSource',
  ]);
  expect(wf.callsOf('receiveCheckpoint', 't2')[0]!.input).toMatchObject({ offer: offer('tok2-a') });
});

test("a target whose CPU lacks the job's instructions is passed over before anything is sent: the next one restores it", async () => {
  const stubs = withStubs(drainStubs(plan(['a'])), {
    [NODE]: {
      describeContainer: (ref: ContainerRef) => ({
        ...described(spec(ref.id)),
        cpu: { arch: 'x64', features: ['avx2', 'avx512f'] },
      }),
    },
    t1: { checkTarget: () => ({ images: [IMAGE], cpu: { arch: 'x64', features: ['avx2'] } }) },
    t2: { checkTarget: () => ({ images: [IMAGE], cpu: { arch: 'x64', features: ['avx2', 'avx512f', 'sha_ni'] } }) },
  });
  const r = await wf.run<DrainResult>('drainNode', drainInput(), stubs);
  if (!r.ok) throw r.error;
  expect(outcomes(r.value)).toEqual(['a:migrated@t2']);
  expect(wf.callsOf('receiveCheckpoint', 't1')).toHaveLength(0);
  expect(wf.callsOf('restoreContainer', 't1')).toHaveLength(0);
});

test('no target restores it, node still there: compensated, running on the node again', async () => {
  const broken = { restoreContainer: () => fail(FailureType.restoreFellBack, 'started fresh') };
  const stubs = withStubs(drainStubs(plan(['a'])), {
    t1: { ...broken, removeContainer: () => ({ removed: true }) },
    t2: broken,
  });
  const r = await wf.run<DrainResult>('drainNode', drainInput(), stubs);
  if (!r.ok) throw r.error;
  expect(r.value.containers[0]).toMatchObject({ id: 'a', outcome: 'compensated', runningOn: NODE, target: 't1' });
  expect(r.value.containers[0]!.error).toMatch(
    /^no target could restore it \(t1: .*; t2: .*\); it runs again on node$/,
  );
  // After both targets failed: the first target's copy removed, then restored where it was.
  expect(wf.sequence().slice(-2)).toEqual(['t1:removeContainer', 'node:restoreContainer']);
  expect(wf.callsOf('restoreContainer').map((c) => c.node)).toEqual(['t1', 't2', NODE]);
  expect(wf.callsOf('restoreContainer', NODE)[0]!.input).toMatchObject({
    expected: { manifestSha256: 'sha-a', node: NODE },
  });
});

test('no target restores it and the deadline has passed: not restored on the node, the checkpoint kept', async () => {
  const broken = { restoreContainer: () => fail(FailureType.restoreFellBack, 'started fresh') };
  const stubs = withStubs(drainStubs(plan(['a'])), { t1: broken, t2: broken });
  const r = await wf.run<DrainResult>('drainNode', drainInput({ deadline: inMs(-1_000) }), stubs);
  if (!r.ok) throw r.error;
  expect(r.value.containers[0]).toMatchObject({ id: 'a', outcome: 'restore-failed', checkpointedInTime: false });
  expect(r.value.containers[0]!.error).toMatch(/The checkpoint is kept on node's storage$/);
  expect(wf.callsOf('restoreContainer', NODE)).toHaveLength(0);
  expect(wf.callsOf('removeContainer')).toHaveLength(0);
});

test('the plan cannot be made: the drain fails, saying so, nothing checkpointed', async () => {
  const stubs = withStubs(drainStubs(), { [NODE]: { planDrain: () => fail('Boom', 'containerd down') } });
  const r = await wf.run<DrainResult>('drainNode', drainInput(), stubs);
  expect(r.ok).toBe(false);
  const f = (r as unknown as { error: WorkflowFailedError }).error.cause as ApplicationFailure;
  expect(f.type).toBe('Boom');
  expect(f.message).toBe('planning the drain of node failed: containerd down');
  expect(wf.calls.map((c) => c.activity)).toEqual(['planDrain']);
});

test('a Kubernetes container: checkpointed and stopped in time like the others, never transferred or restored', async () => {
  const stubs = withStubs(drainStubs(), {
    [NODE]: {
      describeContainer: (ref: ContainerRef) => ({
        ...described(spec(ref.id)),
        manager: ref.id === 'b' ? 'kubernetes' : 'containerd',
      }),
    },
  });
  const r = await wf.run<DrainResult>('drainNode', drainInput(), stubs);
  if (!r.ok) throw r.error;
  expect(outcomes(r.value)).toEqual(['a:migrated@t1', 'b:left-to-manager']);
  expect(r.value.containers[1]).toMatchObject({ manager: 'kubernetes', checkpointedInTime: true, sizeBytes: 4096 });
  expect(r.value.containers[1]!.runningOn).toBeUndefined();
  expect(r.value.withinDeadline).toBe(true);
  // Checkpointed (and so stopped: leaveRunning false) like a plain one, but not offered: no one fetches it.
  const byId = new Map(wf.callsOf('checkpointContainer').map((c) => [idOf(c.input), c.input]));
  expect(byId.get('b')).toMatchObject({ leaveRunning: false, offer: false });
  expect(byId.get('a')).toMatchObject({ leaveRunning: false, offer: true });
  // Nothing for it on a target, and its stopped record stays on the node for Kubernetes.
  const forB = wf.calls.filter((c) => c.activity !== 'planDrain' && idOf(c.input) === 'b').map((c) => c.activity);
  expect(forB).toEqual(['describeContainer', 'checkpointContainer']);
  expect(wf.calls.filter((c) => c.node !== NODE).map((c) => idOf(c.input))).not.toContain('b');
  expect(drainCounts(r.value.containers)).toMatchObject({ migrated: 1, leftToManager: 1, failed: 0 });
  expect(formatDrain(r.value)).toContain('checkpointed; left to Kubernetes to recreate');
  expect(drainExitCode(r.value)).toBe(EXIT.ok);
});

test('targets include the drained node: refused at once', async () => {
  const r = await wf.run<DrainResult>('drainNode', drainInput({ targets: ['t1', NODE] }), {});
  const f = (r as unknown as { error: WorkflowFailedError }).error.cause as ApplicationFailure;
  expect(f.type).toBe(FailureType.input);
  expect(f.message).toBe('targets include the drained node node. Fix: restore on other nodes');
  expect(wf.calls).toHaveLength(0);
});

// ---- the reclaim watcher ----------------------------------------------------

/** Run a watcher, do `during` with it, then terminate it (it never ends by itself). */
async function watch(
  input: ReclaimWatchInput,
  stubs: Stubs,
  during: (id: string, firstRunId: string) => Promise<void>,
) {
  const workflowId = `watch-${Math.random().toString(16).slice(2, 8)}`;
  const r = await wf.run('nodeReclaimWatch', input, stubs, {
    workflowId,
    during: async (h) => {
      try {
        await during(workflowId, (await h.describe()).runId);
      } finally {
        await wf.client.workflow.getHandle(workflowId).terminate('test done');
      }
    },
  });
  expect(r.ok).toBe(false);
}

async function stateWhen(id: string, ok: (s: ReclaimWatchState) => boolean): Promise<ReclaimWatchState> {
  for (let i = 0; i < 100; i++) {
    const s = await wf.client.workflow
      .getHandle(id)
      .query<ReclaimWatchState>('state')
      .catch(() => undefined);
    if (s && ok(s)) return s;
    await sleep(100);
  }
  throw new Error('the watcher did not reach the expected state');
}

test('reclaim notice: a drain of the node to the targets by the notice deadline, recorded; continue-as-new keeps it', async () => {
  const deadline = inMs(60_000);
  const stubs = drainStubs(plan(['a']));
  await watch({ node: NODE, targets: ['t1'], maxDrainsPerRun: 1 }, stubs, async (id, firstRunId) => {
    await wf.client.workflow.getHandle(id).signal('reclaim', { deadline, reason: 'spot notice' });
    // The first run ends after its one drain; the next one (no drain of its own yet) carries the record.
    const s = await stateWhen(id, (x) => x.history.length === 1 && x.runsSinceStart === 0);
    expect((await wf.client.workflow.getHandle(id, firstRunId).describe()).status.name).toBe('CONTINUED_AS_NEW');
    expect(s.status).toBe('watching');
    expect(s.history[0]).toMatchObject({
      deadline,
      reason: 'spot notice',
      status: 'completed',
      migrated: 1,
      failed: 0,
      skipped: 0,
      withinDeadline: true,
    });
    expect(s.history[0]!.drainWorkflowId).toMatch(/^arch-drain-node-[0-9a-f]{8}$/);
    const drain = (await wf.client.workflow.getHandle(s.history[0]!.drainWorkflowId).result()) as DrainResult;
    expect(drain).toMatchObject({ node: NODE, targets: ['t1'], deadline, reason: 'spot notice' });
  });
  expect(wf.callsOf('planDrain').map((c) => (c.input as { deadline: string }).deadline)).toEqual([deadline]);
  expect(wf.callsOf('restoreContainer').map((c) => c.node)).toEqual(['t1']);
});

test('several notices while idle: drained earliest deadline first; a malformed deadline gets the default lead time', async () => {
  const early = inMs(60_000);
  const later = inMs(120_000);
  const stubs = drainStubs(plan([]));
  await watch(
    {
      node: NODE,
      targets: ['t1'],
      defaultDeadlineSec: 3600,
      pending: [
        { deadline: 'not a time', reason: 'bad' },
        { deadline: later },
        { deadline: early, targets: ['t2', NODE] },
      ],
    },
    stubs,
    async (id) => {
      const s = await stateWhen(id, (x) => x.history.length === 3 && x.status === 'watching');
      expect(s.history.map((h) => h.status)).toEqual(['completed', 'completed', 'completed']);
      // A notice's own targets win (the node itself left out); the others drain to the watcher's.
      const targets = await Promise.all(
        s.history.map(
          async (h) => ((await wf.client.workflow.getHandle(h.drainWorkflowId).result()) as DrainResult).targets,
        ),
      );
      expect(targets).toEqual([['t2'], ['t1'], ['t1']]);
      expect(s.history.map((h) => h.reason)).toEqual([undefined, undefined, 'bad']);
    },
  );
  const planned = wf.callsOf('planDrain').map((c) => Date.parse((c.input as { deadline: string }).deadline));
  expect(planned.slice(0, 2)).toEqual([Date.parse(early), Date.parse(later)]);
  // The default lead time counts from receipt: about an hour from now.
  expect(planned[2]! - Date.now()).toBeGreaterThan(3500_000);
  expect(planned[2]! - Date.now()).toBeLessThanOrEqual(3600_000);
});

test('a drain that fails is recorded as failed, and the watcher keeps watching', async () => {
  const stubs = withStubs(drainStubs(), { [NODE]: { planDrain: () => fail('Boom', 'containerd down') } });
  await watch({ node: NODE, targets: ['t1'] }, stubs, async (id) => {
    await wf.client.workflow.getHandle(id).signal('reclaim', { reason: 'maintenance' });
    const s = await stateWhen(id, (x) => x.history.length === 1 && x.status === 'watching');
    expect(s.history[0]).toMatchObject({ status: 'failed', reason: 'maintenance' });
    expect(s.history[0]!.error).toContain('containerd down');
    expect(s.runsSinceStart).toBe(1);
  });
});
