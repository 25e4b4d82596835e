import proto from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import * as workflows from '../../workflows/index.js';
import { recordedHistories, startedType, testCodec } from '../support/histories.js';
import { inJestDataConverter, installQuietRuntime, workflowBundle } from '../support/workflow-env.js';

/**
 * Safe upgrades: every history recorded from a real run
 * (test/fixtures/histories, scripts/record-histories.ts) is replayed against
 * today's workflow code. A change that makes a workflow issue other commands
 * for the same events (an activity moved, added or removed, a timer, a
 * child) fails here: the running workflows of a cluster (the reclaim
 * watchers live for as long as their nodes) would fail the same way after
 * an upgrade. A change on purpose goes behind patched() and gets a new
 * recording (README: "Workflow tests and replay").
 */
const histories = recordedHistories();
installQuietRuntime();
const { EventType } = proto.temporal.api.enums.v1;

test('a history is kept for every workflow type the workers register', () => {
  const registered = Object.keys(workflows).filter(
    (k) => typeof (workflows as Record<string, unknown>)[k] === 'function',
  );
  expect([...new Set(histories.map((h) => h.workflowType))].sort()).toEqual(expect.arrayContaining(registered.sort()));
  // The reclaim watcher's history holds a notice (signal) and the drain it started.
  const watch = histories.find((h) => h.workflowType === 'nodeReclaimWatch')!;
  const types = new Set(watch.history.events!.map((e) => e.eventType));
  expect(types.has(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)).toBe(true);
  expect(types.has(EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)).toBe(true);
  expect(types.has(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW)).toBe(true);
});

test.each(histories.map((h) => [h.file, h] as const))('%s replays against the current workflow code', async (_f, h) => {
  expect(startedType(h.history)).toBe(h.workflowType);
  // Throws DeterminismViolationError (or any other replay failure) when the code diverged.
  await Worker.runReplayHistory(
    {
      workflowBundle: await workflowBundle(),
      dataConverter: inJestDataConverter({ codec: testCodec() }),
      replayName: h.file,
    },
    h.history,
    h.file,
  );
});
