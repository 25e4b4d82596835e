import { ApplicationFailure, CancelledFailure, WorkflowFailedError } from '@temporalio/client';
import { FailureType } from '../../contract/failures.js';
import type { MigrateInput, MigrateResult } from '../../contract/types.js';
import { fail, StubCluster, untilCancelled } from '../support/workflow-env.js';
import {
  checkpoint,
  described,
  happyMove,
  IMAGE,
  offer,
  received,
  restored,
  spec,
  withStubs,
} from '../support/workflow-fixtures.js';

/**
 * migrateContainer's decisions, with stub activities on a real (dev) Temporal
 * server: which node is asked for what, in which order, and what the
 * workflow answers — on success, on a failure at each step, on
 * compensation and on cancellation. The real-cluster tests
 * (test/integration/temporal-migrate, temporal-compensation) stay.
 */
let wf: StubCluster;

beforeAll(async () => {
  wf = await StubCluster.start(['from', 'to']);
});

afterAll(async () => {
  await wf?.stop();
});

/** The failure's innermost ApplicationFailure (type and message are what callers see). */
function appFailure(err: Error): ApplicationFailure {
  expect(err).toBeInstanceOf(WorkflowFailedError);
  const cause = (err as WorkflowFailedError).cause;
  expect(cause).toBeInstanceOf(ApplicationFailure);
  return cause as ApplicationFailure;
}

/** Nodes named after their role, so that a call sequence reads "from:checkpointContainer". */
function setup(id = 'job-1', from = 'from', to = 'to') {
  const s = spec(id);
  const input: MigrateInput = { namespace: 'default', id, from, to, nodeStartTimeoutMs: 2_000, restoreAttempts: 1 };
  return { from, to, s, input };
}

test('success: preflight on both nodes, checkpoint, transfer with the offer, restore, withdraw, clean up', async () => {
  const { from, to, s, input } = setup();
  const r = await wf.run<MigrateResult>('migrateContainer', input, happyMove(s, from, to));
  if (!r.ok) throw r.error;
  expect(r.value).toMatchObject({ outcome: 'migrated', runningOn: to, from, to, namespace: 'default', id: 'job-1' });
  expect(r.value.checkpoint).toEqual({ sizeBytes: 4096, mode: 'local', transferred: 'copied' });
  const phases = r.value.phases.map((p) => p.phase);
  expect(phases.slice(0, 2).sort()).toEqual(['check-target', 'describe']);
  expect(phases.slice(2)).toEqual(['checkpoint', 'transfer', 'restore', 'cleanup']);
  // describe and check-target run in parallel: both precede the checkpoint, in either order.
  const seq = wf.sequence();
  expect(seq.slice(0, 2).sort()).toEqual(['from:describeContainer', 'to:checkTarget']);
  expect(seq.slice(2)).toEqual([
    'from:checkpointContainer',
    'to:receiveCheckpoint',
    // The offer is withdrawn as soon as the bytes are on the target, beside the restore.
    ...(seq.indexOf('from:withdrawOffer') < seq.indexOf('to:restoreContainer')
      ? ['from:withdrawOffer', 'to:restoreContainer']
      : ['to:restoreContainer', 'from:withdrawOffer']),
    'from:cleanupSource',
  ]);
  const [ck] = wf.callsOf('checkpointContainer');
  expect(ck!.input).toMatchObject({ ref: { namespace: 'default', id: 'job-1' }, leaveRunning: false, offer: true });
  const [rc] = wf.callsOf('receiveCheckpoint');
  expect(rc!.input).toEqual({
    spec: s,
    expected: { manifestSha256: 'sha-job-1', node: from, createdAt: '2026-01-01T00:00:00.000Z' },
    offer: offer('ck-token'),
  });
  expect(wf.callsOf('withdrawOffer')[0]!.input).toEqual({ token: 'ck-token' });
  expect(wf.callsOf('restoreContainer')[0]!.input).toEqual({
    spec: s,
    expected: { manifestSha256: 'sha-job-1', node: from, createdAt: '2026-01-01T00:00:00.000Z' },
  });
  // The offer is gone already: cleanup does not name it again, and removes the copied checkpoint.
  const cleanup = wf.callsOf('cleanupSource')[0]!.input as { removeCheckpoint: boolean; offerToken?: string };
  expect(cleanup.removeCheckpoint).toBe(true);
  expect(cleanup.offerToken).toBeUndefined();
});

test('shared storage: no transfer at all, the target restores the same directory', async () => {
  const { from, to, input } = setup();
  const s = spec('job-1', { mode: 'shared' });
  const stubs = withStubs(happyMove(s, from, to), {
    [from]: { checkpointContainer: () => checkpoint(s, from, { mode: 'shared' }) },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  if (!r.ok) throw r.error;
  expect(r.value.checkpoint.transferred).toBe('present');
  expect(wf.sequence().slice(2)).toEqual(['from:checkpointContainer', 'to:restoreContainer', 'from:cleanupSource']);
  expect(wf.callsOf('checkpointContainer')[0]!.input).toMatchObject({ offer: false });
  expect(wf.callsOf('cleanupSource')[0]!.input).toMatchObject({ removeCheckpoint: false });
});

test('image missing on the target: shipped (offer, import, withdraw) before anything stops', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), { [to]: { checkTarget: () => ({ images: [] }) } });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  if (!r.ok) throw r.error;
  const seq = wf.sequence();
  expect(seq.slice(2, 6)).toEqual([
    'from:offerImage',
    'to:ensureImage',
    'from:withdrawOffer',
    'from:checkpointContainer',
  ]);
  expect(wf.callsOf('ensureImage')[0]!.input).toEqual({
    namespace: 'default',
    image: IMAGE,
    offer: { ...offer('img-token'), ms: 1 },
  });
  expect(wf.callsOf('withdrawOffer')[0]!.input).toEqual({ token: 'img-token' });
});

test('failure before the checkpoint (container not running): refused, nothing stopped, nothing compensated', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), { [from]: { describeContainer: () => described(s, 'STOPPED') } });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  expect(r.ok).toBe(false);
  const f = appFailure((r as { error: Error }).error);
  expect(f.type).toBe(FailureType.containerNotRunning);
  expect(f.message).toContain('is STOPPED on node');
  expect(wf.callsOf('checkpointContainer')).toHaveLength(0);
  expect(wf.callsOf('restoreContainer')).toHaveLength(0);
});

test('target refuses in preflight: the failure names the target node, no checkpoint', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), {
    [to]: { checkTarget: () => fail(FailureType.input, 'already runs on node x') },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  const f = appFailure((r as { error: Error }).error);
  expect(f.type).toBe(FailureType.input);
  expect(f.message).toBe(`checking target for default/job-1 on node ${to} failed: already runs on node x`);
  expect(wf.callsOf('checkpointContainer')).toHaveLength(0);
});

test.each([
  ['kubernetes', 'Kubernetes', /drain the node or delete the pod/],
  ['docker', 'Docker', /docker run/],
])(
  'a container %s manages is refused in preflight, naming it and the way to move it: no checkpoint',
  async (manager, who, how) => {
    const { from, to, s, input } = setup();
    const stubs = withStubs(happyMove(s, from, to), {
      [from]: { describeContainer: () => ({ ...described(s), manager }) },
    });
    const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
    const f = appFailure((r as { error: Error }).error);
    expect(f.type).toBe(FailureType.input);
    expect(f.nonRetryable).toBe(true);
    expect(f.message).toMatch(new RegExp(`^default/job-1 is managed by ${who}: .*Fix: `));
    expect(f.message).toMatch(how);
    expect(wf.callsOf('checkpointContainer')).toHaveLength(0);
    expect(wf.callsOf('offerImage')).toHaveLength(0);
    expect(wf.callsOf('describeContainer')).toHaveLength(1);
  },
);

test("a target whose CPU lacks instructions the source's has is refused in preflight, naming them: no checkpoint", async () => {
  const { from, to, s, input } = setup();
  const intel = { arch: 'x64', features: ['avx2', 'avx512bw', 'avx512f', 'sse2'] };
  const amd = { arch: 'x64', features: ['avx2', 'sha_ni', 'sse2'] };
  const stubs = withStubs(happyMove(s, from, to), {
    [from]: { describeContainer: () => ({ ...described(s), cpu: intel }) },
    [to]: { checkTarget: () => ({ images: [s.image], staleContainer: false, cpu: amd }) },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  const f = appFailure((r as { error: Error }).error);
  expect(f.type).toBe(FailureType.input);
  expect(f.message).toBe(
    `default/job-1 cannot move from node ${from} to node ${to}: ${to}'s CPU lacks avx512bw, avx512f; the job's processes chose their instructions when they started on ${from} and would die there (SIGILL). Fix: pick a target whose CPU has them`,
  );
  expect(wf.callsOf('checkpointContainer')).toHaveLength(0);
  // The other way round (more instructions on the target), and where a node did not say, it moves.
  for (const [a, b] of [
    [amd, { ...amd, features: [...amd.features, 'avx512f'] }],
    [intel, undefined],
  ] as const) {
    const ok = await wf.run<MigrateResult>(
      'migrateContainer',
      input,
      withStubs(happyMove(s, from, to), {
        [from]: { describeContainer: () => ({ ...described(s), cpu: a }) },
        [to]: { checkTarget: () => ({ images: [s.image], staleContainer: false, ...(b ? { cpu: b } : {}) }) },
      }),
    );
    if (!ok.ok) throw ok.error;
    expect(ok.value.outcome).toBe('migrated');
  }
});

test('a plain containerd container (manager "containerd") moves as before', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), {
    [from]: { describeContainer: () => ({ ...described(s), manager: 'containerd' }) },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  if (!r.ok) throw r.error;
  expect(r.value.outcome).toBe('migrated');
});

test('target node has no worker: NodeUnavailable after nodeStartTimeoutMs, source untouched', async () => {
  const { from, to, s, input } = setup('job-1', 'from', 'gone');
  const stubs = happyMove(s, from, to);
  delete stubs[to];
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  const f = appFailure((r as { error: Error }).error);
  expect(f.type).toBe(FailureType.nodeUnavailable);
  expect(f.message).toContain(`node ${to} did not answer within 2 s`);
  expect(wf.calls.map((c) => c.activity)).toEqual(['describeContainer']);
});

test('checkpoint fails: not compensated (the container kept running), the error says so', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), {
    [from]: { checkpointContainer: () => fail('CheckpointFailed', 'criu dump: no space left') },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  const f = appFailure((r as { error: Error }).error);
  expect(f.type).toBe('CheckpointFailed');
  expect(f.message).toBe(
    `checkpoint of default/job-1 (the container keeps running there) on node ${from} failed: criu dump: no space left`,
  );
  expect(wf.callsOf('restoreContainer')).toHaveLength(0);
  expect(wf.callsOf('removeContainer')).toHaveLength(0);
});

test('a retryable checkpoint failure is retried by the activity policy; the second attempt moves it', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), {
    [from]: {
      checkpointContainer: (_i, call) =>
        call.attempt === 1
          ? fail('Transient', 'containerd busy', false)
          : checkpoint(s, from, { offer: offer('ck-token') }),
    },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  if (!r.ok) throw r.error;
  expect(r.value.outcome).toBe('migrated');
  expect(wf.callsOf('checkpointContainer').map((c) => c.attempt)).toEqual([1, 2]);
  // A retry carries the same notBefore, so it can recognise its predecessor's checkpoint.
  const [a, b] = wf.callsOf('checkpointContainer');
  expect((b!.input as { notBefore: string }).notBefore).toBe((a!.input as { notBefore: string }).notBefore);
});

test('transfer fails: compensation removes any copy on the target, restores on the source, fails as MigrationCompensated', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), {
    [to]: { receiveCheckpoint: () => fail('TransferFailed', 'digest mismatch') },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  const f = appFailure((r as { error: Error }).error);
  expect(f.type).toBe(FailureType.compensated);
  expect(f.message).toBe(`default/job-1 could not move to ${to} (digest mismatch); it runs again on ${from}`);
  const result = f.details?.[0] as MigrateResult;
  expect(result).toMatchObject({ outcome: 'compensated', runningOn: from });
  expect(wf.sequence().slice(2)).toEqual([
    'from:checkpointContainer',
    'to:receiveCheckpoint',
    'from:withdrawOffer',
    'to:removeContainer',
    'from:restoreContainer',
  ]);
  expect(wf.callsOf('withdrawOffer')[0]!.input).toEqual({ token: 'ck-token' });
  expect(wf.callsOf('restoreContainer', from)[0]!.input).toEqual({
    spec: s,
    expected: { manifestSha256: 'sha-job-1', node: from, createdAt: '2026-01-01T00:00:00.000Z' },
  });
  expect(wf.callsOf('cleanupSource')).toHaveLength(0);
});

test('offer gone during transfer: the source offers again and the target fetches with the new offer', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), {
    [to]: {
      receiveCheckpoint: (i: { offer: { token: string } }) =>
        i.offer.token === 'ck-token' ? fail(FailureType.offerGone, 'worker restarted') : received('copied'),
    },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  if (!r.ok) throw r.error;
  expect(wf.sequence().slice(2, 6)).toEqual([
    'from:checkpointContainer',
    'to:receiveCheckpoint',
    'from:offerCheckpoint',
    'to:receiveCheckpoint',
  ]);
  expect(wf.callsOf('offerCheckpoint')[0]!.input).toEqual({
    ref: { namespace: 'default', id: 'job-1' },
    dir: '/var/lib/arch/default/job-1/ck-1',
    manifestSha256: 'sha-job-1',
  });
  expect((wf.callsOf('receiveCheckpoint')[1]!.input as { offer: unknown }).offer).toEqual(offer('ck-token-2'));
  // The second offer is the one withdrawn.
  expect(wf.callsOf('withdrawOffer').map((c) => c.input)).toEqual([{ token: 'ck-token-2' }]);
});

test('restore fails on the target and on the source: MigrationFailed names the kept checkpoint', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), {
    [to]: { restoreContainer: () => fail(FailureType.restoreFellBack, 'started fresh') },
    [from]: { restoreContainer: () => fail(FailureType.restoreFellBack, 'started fresh too') },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  const f = appFailure((r as { error: Error }).error);
  expect(f.type).toBe(FailureType.migrationFailed);
  expect(f.message).toContain(`restore failed on ${to} (started fresh) and again on ${from} (started fresh too)`);
  expect(f.details?.[0]).toEqual({ checkpointDir: '/var/lib/arch/default/job-1/ck-1', node: from });
  // One attempt each (restoreAttempts: 1); the target's copy was removed before the source restored.
  expect(
    wf.calls
      .filter((c) => c.activity === 'restoreContainer' || c.activity === 'removeContainer')
      .map((c) => `${c.node}:${c.activity}`),
  ).toEqual(['to:restoreContainer', 'to:removeContainer', 'from:restoreContainer']);
});

test('restore attempts follow restoreAttempts: two failures then success on the target', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), {
    [to]: {
      restoreContainer: (_i, call) => (call.attempt < 3 ? fail('Transient', 'not up yet', false) : restored(s, to)),
    },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', { ...input, restoreAttempts: 3 }, stubs);
  if (!r.ok) throw r.error;
  expect(r.value.outcome).toBe('migrated');
  expect(wf.callsOf('restoreContainer', to).map((c) => c.attempt)).toEqual([1, 2, 3]);
  expect(wf.callsOf('restoreContainer', from)).toHaveLength(0);
});

test('cleanup failure after a good move: still migrated, the error reported', async () => {
  const { from, to, s, input } = setup();
  const stubs = withStubs(happyMove(s, from, to), {
    [from]: { cleanupSource: () => fail('CleanupFailed', 'ctr rm: busy') },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs);
  if (!r.ok) throw r.error;
  expect(r.value).toMatchObject({ outcome: 'migrated', runningOn: to, cleanupError: 'ctr rm: busy' });
});

test('bad input fails at once, naming the field, without any activity', async () => {
  const { from } = setup();
  const r = await wf.run<MigrateResult>('migrateContainer', { namespace: 'default', id: 'job-1', from, to: from }, {});
  const f = appFailure((r as { error: Error }).error);
  expect(f.type).toBe(FailureType.input);
  expect(f.message).toBe(`from and to are both "${from}". Fix: pass two different nodes`);
  expect(wf.calls).toHaveLength(0);
});

test('cancelled during the transfer: compensates on the source, then ends cancelled', async () => {
  const { from, to, s, input } = setup();
  let transferring!: () => void;
  const started = new Promise<void>((r) => (transferring = r));
  const stubs = withStubs(happyMove(s, from, to), {
    [to]: {
      receiveCheckpoint: () => {
        transferring();
        return untilCancelled();
      },
    },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs, {
    during: async (h) => {
      await started;
      await h.cancel();
    },
  });
  expect(r.ok).toBe(false);
  const err = (r as { error: Error }).error as WorkflowFailedError;
  expect(err).toBeInstanceOf(WorkflowFailedError);
  expect(err.cause).toBeInstanceOf(CancelledFailure);
  expect(wf.sequence().slice(2)).toEqual([
    'from:checkpointContainer',
    'to:receiveCheckpoint',
    'from:withdrawOffer',
    'to:removeContainer',
    'from:restoreContainer',
  ]);
});

test('cancelled during the checkpoint: waits for it, and a checkpoint that finished anyway is restored on the source', async () => {
  const { from, to, s, input } = setup();
  let checkpointing!: () => void;
  const started = new Promise<void>((r) => (checkpointing = r));
  const stubs = withStubs(happyMove(s, from, to), {
    [from]: {
      checkpointContainer: async () => {
        checkpointing();
        // The dump is past the point of no return: it completes despite the cancellation.
        await untilCancelled().catch(() => undefined);
        return checkpoint(s, from, { offer: offer('ck-token') });
      },
    },
  });
  const r = await wf.run<MigrateResult>('migrateContainer', input, stubs, {
    during: async (h) => {
      await started;
      await h.cancel();
    },
  });
  expect(r.ok).toBe(false);
  expect(((r as { error: Error }).error as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
  expect(wf.sequence().slice(2)).toEqual([
    'from:checkpointContainer',
    'from:withdrawOffer',
    'to:removeContainer',
    'from:restoreContainer',
  ]);
});
