import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { FailureType } from '../../contract/failures.js';
import type { ContainerRef, ContainerSummary, PauseInput, PauseResult } from '../../contract/types.js';
import { formatPause } from '../../cli/commands/pause.js';
import { fail, StubCluster, type Stubs } from '../support/workflow-env.js';
import { checkpoint, described, restored, spec, summary } from '../support/workflow-fixtures.js';

/**
 * pauseContainers / resumeContainers / listNodeContainers with stub
 * activities: what is selected, what each container gets, how one failure
 * is reported without stopping the others, and a node without a worker.
 * The real-cluster test (temporal-schedule) stays.
 */
let wf: StubCluster;
const N = 'n1';

beforeAll(async () => {
  wf = await StubCluster.start([N]);
});

afterAll(async () => {
  await wf?.stop();
});

const ids = (calls: { input: unknown }[]) =>
  calls.map(
    (c) =>
      (c.input as { ref?: ContainerRef; spec?: ContainerRef; id?: string }).ref?.id ??
      (c.input as { spec?: ContainerRef }).spec?.id ??
      (c.input as ContainerRef).id,
  );

function nodeStubs(over: Stubs[string] = {}): Stubs {
  return {
    [N]: {
      selectContainers: () => [summary('a'), summary('b')],
      selectPaused: () => [summary('a', { status: 'STOPPED' })],
      describeContainer: (ref: ContainerRef) => described(spec(ref.id)),
      checkpointContainer: (i: { ref: ContainerRef }) => checkpoint(spec(i.ref.id), N, { sizeBytes: 1000 }),
      restoreContainer: (i: { spec: ReturnType<typeof spec> }) => restored(i.spec, N),
      listContainers: () => [summary('a'), summary('b', { status: 'STOPPED' })],
      ...over,
    },
  };
}

test('pause: the selector picks running containers; each is described and checkpointed in place, never offered', async () => {
  const input: PauseInput = { node: N, selector: { namespace: 'default', ids: ['a', 'b'] }, parallelism: 1 };
  const r = await wf.run<PauseResult>('pauseContainers', input, nodeStubs());
  if (!r.ok) throw r.error;
  expect(r.value.containers.map((c) => [c.id, c.outcome, c.sizeBytes])).toEqual([
    ['a', 'paused', 1000],
    ['b', 'paused', 1000],
  ]);
  expect(wf.calls[0]).toMatchObject({
    activity: 'selectContainers',
    input: { selector: { namespace: 'default', ids: ['a', 'b'] }, runningOnly: true },
  });
  expect(wf.sequence().slice(1)).toEqual([
    `${N}:describeContainer`,
    `${N}:checkpointContainer`,
    `${N}:describeContainer`,
    `${N}:checkpointContainer`,
  ]);
  for (const c of wf.callsOf('checkpointContainer'))
    expect(c.input).toMatchObject({ leaveRunning: false, offer: false });
});

test('pause: one checkpoint fails, the other container is still paused, and the failure says why', async () => {
  const r = await wf.run<PauseResult>(
    'pauseContainers',
    { node: N, parallelism: 2 },
    nodeStubs({
      checkpointContainer: (i: { ref: ContainerRef }) =>
        i.ref.id === 'a' ? fail('CheckpointFailed', 'criu: no space') : checkpoint(spec(i.ref.id), N),
    }),
  );
  if (!r.ok) throw r.error;
  expect(r.value.containers.map((c) => `${c.id}:${c.outcome}`)).toEqual(['a:failed', 'b:paused']);
  expect(r.value.containers[0]!.error).toContain('criu: no space');
});

test('resume: paused containers are described and restored where they are, without an expected checkpoint', async () => {
  const r = await wf.run<PauseResult>('resumeContainers', { node: N, selector: { ids: ['a'] } }, nodeStubs());
  if (!r.ok) throw r.error;
  expect(r.value).toMatchObject({ node: N, action: 'resume', containers: [{ id: 'a', outcome: 'resumed' }] });
  expect(wf.sequence()).toEqual([`${N}:selectPaused`, `${N}:describeContainer`, `${N}:restoreContainer`]);
  expect(wf.calls[0]!.input).toEqual({ selector: { ids: ['a'] } });
  expect(wf.callsOf('restoreContainer')[0]!.input).toEqual({ spec: spec('a') });
  expect(ids(wf.callsOf('restoreContainer'))).toEqual(['a']);
});

test('pause: a Kubernetes container from the listing is checkpointed and stopped like the others, reported as left to it', async () => {
  const r = await wf.run<PauseResult>(
    'pauseContainers',
    { node: N, parallelism: 1 },
    nodeStubs({ selectContainers: () => [summary('a'), summary('k', { manager: 'kubernetes' })] }),
  );
  if (!r.ok) throw r.error;
  expect(r.value.containers.map((c) => [c.id, c.outcome, c.manager])).toEqual([
    ['a', 'paused', undefined],
    ['k', 'paused', 'kubernetes'],
  ]);
  expect(r.value.containers[1]!.note).toBe('checkpointed; left to Kubernetes to recreate');
  expect(ids(wf.callsOf('checkpointContainer'))).toEqual(['a', 'k']);
  for (const c of wf.callsOf('checkpointContainer')) expect(c.input).toMatchObject({ leaveRunning: false });
  expect(formatPause(r.value)).toContain('left to Kubernetes to recreate');
});

test('resume: a Docker container is not created again, and says why; the plain one is restored', async () => {
  const r = await wf.run<PauseResult>(
    'resumeContainers',
    { node: N, parallelism: 1 },
    nodeStubs({
      selectPaused: () => [summary('a', { status: 'STOPPED' }), summary('d', { status: 'STOPPED' })],
      describeContainer: (ref: ContainerRef) => ({
        ...described(spec(ref.id), 'STOPPED'),
        manager: ref.id === 'd' ? 'docker' : 'containerd',
      }),
    }),
  );
  if (!r.ok) throw r.error;
  expect(r.value.containers.map((c) => [c.id, c.outcome, c.manager])).toEqual([
    ['a', 'resumed', undefined],
    ['d', 'skipped', 'docker'],
  ]);
  expect(r.value.containers[1]!.note).toMatch(/^not created: Docker creates it/);
  expect(ids(wf.callsOf('restoreContainer'))).toEqual(['a']);
});

test('pause on a node without a worker: NodeUnavailable, nothing selected', async () => {
  const r = await wf.run<PauseResult>('pauseContainers', { node: 'gone', nodeStartTimeoutMs: 1_000 }, {});
  const f = (r as unknown as { error: WorkflowFailedError }).error.cause as ApplicationFailure;
  expect(f.type).toBe(FailureType.nodeUnavailable);
  expect(f.message).toMatch(/^node gone did not answer within 1 s: no arch-worker polls task queue arch-node-gone/);
  expect(wf.calls).toHaveLength(0);
});

test('list: the node answers with its containers, for the namespaces asked', async () => {
  const r = await wf.run<ContainerSummary[]>('listNodeContainers', { node: N, namespaces: ['default'] }, nodeStubs());
  if (!r.ok) throw r.error;
  expect(r.value.map((c) => `${c.id}:${c.status}`)).toEqual(['a:RUNNING', 'b:STOPPED']);
  expect(wf.calls).toEqual([
    expect.objectContaining({ node: N, activity: 'listContainers', input: { namespaces: ['default'] } }),
  ]);
});

test('list: a failing node is reported with the node named; a bad node name is refused', async () => {
  const r = await wf.run<ContainerSummary[]>(
    'listNodeContainers',
    { node: N },
    nodeStubs({ listContainers: () => fail('Boom', 'containerd down') }),
  );
  const f = (r as unknown as { error: WorkflowFailedError }).error.cause as ApplicationFailure;
  expect(f.type).toBe('Boom');
  expect(f.message).toBe(`listing containers on ${N} failed: containerd down`);
  const bad = await wf.run<ContainerSummary[]>('listNodeContainers', { node: 'bad name' }, {});
  const g = (bad as unknown as { error: WorkflowFailedError }).error.cause as ApplicationFailure;
  expect(g.type).toBe(FailureType.input);
  expect(g.message).toMatch(/^node: "bad name" is not a node name\. Fix: use letters, digits/);
});
