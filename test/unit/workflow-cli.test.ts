import { checkTimeZone, parseCalendar } from '../../cli/calendar.js';
import { drainExitCode, formatDrain } from '../../cli/commands/drain.js';
import { formatWatch } from '../../cli/commands/reclaim.js';
import { EXIT } from '../../cli/exit-codes.js';
import { exitCodeFor } from '../../cli/follow.js';
import { parseDeadline } from '../../cli/time.js';
import { ArchInputError } from '../../contract/errors.js';
import { FailureType } from '../../contract/failures.js';
import { recordOf } from '../../temporal/reclaim-drain.js';
import { drainCounts } from '../../workflows/drain-outcomes.js';
import type { DrainOutcome, DrainResult, ReclaimRecord, ReclaimWatchState } from '../../contract/types.js';
import { parseDurationMs, parseHostPort } from '../../core/option-parsers.js';

describe('calendars', () => {
  test.each([
    ['0 22 * * 1-5', '0 22 * * 1-5'],
    ['*/15 * * * *', '*/15 * * * *'],
    ['30 6 1,15 jan-mar mon', '30 6 1,15 1-3 1'],
    ['22:00', '0 22 * * *'],
    ['6:05', '5 6 * * *'],
    ['mon-fri 22:00', '0 22 * * 1-5'],
    ['weekends 08:30', '30 8 * * 0,6'],
    ['  sat,sun   7:00 ', '0 7 * * 6,0'],
  ])('%s → %s', (input, cron) => {
    expect(parseCalendar(input)).toBe(cron);
  });

  test.each([
    ['61 22 * * *', /minute "61" is not in 0-59/],
    ['0 24 * * *', /hour "24" is not in 0-23/],
    ['25:00', /hour "25" is not in 0-23/],
    ['0 22 * * 8', /day of week "8" is not in 0-7/],
    ['0 22 * * funday', /day of week "funday"/],
    ['0 22 32 * *', /day of month "32"/],
    ['0 22 * 13 *', /month "13"/],
    ['0 22 * *', /neither a 5-field cron expression/],
    ['every night', /neither a 5-field cron expression/],
    ['0 5-2 * * *', /runs backwards/],
    ['*/0 * * * *', /step "0" is not a positive number/],
  ])('refuses %s', (input, why) => {
    expect(() => parseCalendar(input, '--pause')).toThrow(ArchInputError);
    expect(() => parseCalendar(input, '--pause')).toThrow(why);
  });

  test('time zones', () => {
    expect(checkTimeZone('Europe/Paris')).toBe('Europe/Paris');
    expect(checkTimeZone('UTC')).toBe('UTC');
    expect(() => checkTimeZone('Mars/Olympus')).toThrow(/is not a time zone/);
  });
});

describe('durations, addresses, deadlines', () => {
  test('durations', () => {
    expect(parseDurationMs('90s', 'x')).toBe(90_000);
    expect(parseDurationMs('2m', 'x')).toBe(120_000);
    expect(parseDurationMs('1h30m', 'x')).toBe(5_400_000);
    expect(parseDurationMs('500ms', 'x')).toBe(500);
    expect(parseDurationMs('3', 'x')).toBe(3000);
    expect(() => parseDurationMs('soon', '--deadline')).toThrow(/--deadline "soon": not a duration/);
    expect(() => parseDurationMs('5s extra', 'x')).toThrow();
  });
  test('host:port', () => {
    expect(parseHostPort('127.0.0.1:0', 'x')).toEqual({ host: '127.0.0.1', port: 0 });
    expect(parseHostPort('[::1]:7244', 'x')).toEqual({ host: '::1', port: 7244 });
    expect(parseHostPort(':7244', 'x')).toEqual({ host: '', port: 7244 });
    expect(() => parseHostPort('nohost', 'x')).toThrow(/not HOST:PORT/);
    expect(() => parseHostPort('h:99999', 'x')).toThrow();
  });
  test('deadlines', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(parseDeadline('2m', '--deadline', now)).toBe('2026-01-01T00:02:00.000Z');
    expect(parseDeadline('2026-01-01T12:00:00Z')).toBe('2026-01-01T12:00:00.000Z');
    expect(() => parseDeadline('tomorrow')).toThrow(ArchInputError);
  });
});

test('failure types map to exit codes scripts can rely on', () => {
  expect(exitCodeFor(FailureType.input)).toBe(EXIT.input);
  expect(exitCodeFor(FailureType.containerNotFound)).toBe(EXIT.input);
  expect(exitCodeFor(FailureType.notArchEnabled)).toBe(EXIT.input);
  expect(exitCodeFor(FailureType.nodeUnavailable)).toBe(EXIT.unavailable);
  expect(exitCodeFor(FailureType.compensated)).toBe(EXIT.compensated);
  expect(exitCodeFor(FailureType.migrationFailed)).toBe(EXIT.failed);
  expect(exitCodeFor(undefined)).toBe(EXIT.failed);
});

describe('containers not expected to fit', () => {
  const result: DrainResult = {
    node: 'a',
    targets: [],
    deadline: '2026-01-01T00:00:20.000Z',
    containers: [
      {
        namespace: 'default',
        id: 'mid',
        outcome: 'checkpointed',
        expectedToFit: true,
        checkpointedInTime: true,
        checkpointMs: 900,
        sizeBytes: 64 << 20,
      },
      {
        namespace: 'default',
        id: 'big',
        outcome: 'skipped',
        expectedToFit: false,
        checkpointedInTime: false,
        runningOn: 'a',
        error: 'not started: not expected to finish before the deadline',
      },
    ],
    plan: {
      parallelism: 2,
      budgetMs: 18_000,
      plannedAt: '2026-01-01T00:00:00.000Z',
      throughputBytesPerSec: 10 << 20,
      notExpectedToFit: ['default/big'],
    },
    withinDeadline: false,
    checkpointPhaseMs: 1000,
    totalMs: 1100,
  };

  test('drain output names them, per container and in a line of their own; the exit code says not all made it', () => {
    const text = formatDrain(result);
    expect(text).toContain('not expected to fit: default/big');
    expect(text).toMatch(/default\/big +skipped +a .* NO +NO /);
    expect(text).toMatch(/default\/mid +checkpointed .* yes +yes /);
    expect(drainExitCode(result)).toBe(EXIT.failed);
    expect(
      formatDrain({
        ...result,
        containers: [result.containers[0]!],
        plan: { ...result.plan, notExpectedToFit: [] },
        withinDeadline: true,
      }),
    ).not.toContain('not expected to fit');
    expect(drainExitCode({ ...result, containers: [result.containers[0]!], withinDeadline: true })).toBe(EXIT.ok);
  });

  test('one count for the drain, the reclaim record and the exit code: back on the drained node is not moved', () => {
    const c = (outcome: DrainOutcome) => ({ outcome });
    expect(drainCounts([c('migrated'), c('migrated'), c('compensated')])).toEqual({
      migrated: 2,
      checkpointed: 0,
      leftToManager: 0,
      failed: 1,
      skipped: 0,
    });
    expect(drainCounts([c('checkpointed'), c('skipped'), c('checkpoint-failed'), c('restore-failed')])).toEqual({
      migrated: 0,
      checkpointed: 1,
      leftToManager: 0,
      failed: 3,
      skipped: 1,
    });
    // Left for Docker or Kubernetes to create again is what a drain must do with it: not a failure.
    expect(drainCounts([c('migrated'), c('left-to-manager')])).toEqual({
      migrated: 1,
      checkpointed: 0,
      leftToManager: 1,
      failed: 0,
      skipped: 0,
    });
    expect(drainCounts([])).toEqual({ migrated: 0, checkpointed: 0, leftToManager: 0, failed: 0, skipped: 0 });
    const back = {
      ...result,
      withinDeadline: true,
      containers: [{ ...result.containers[0]!, outcome: 'compensated' as const, runningOn: 'a' }],
    };
    expect(drainExitCode(back)).toBe(EXIT.failed);
  });

  test("the reclaim watcher's status shows them; a signal finds its own record", () => {
    const rec: ReclaimRecord = {
      receivedAt: '2026-01-01T00:00:00.000Z',
      deadline: '2026-01-01T00:00:20.000Z',
      reason: 'spot',
      drainWorkflowId: 'arch-drain-a-1',
      status: 'completed',
      migrated: 0,
      failed: 1,
      skipped: 1,
      notExpectedToFit: ['default/big'],
      withinDeadline: false,
    };
    const older: ReclaimRecord = {
      ...rec,
      deadline: '2025-12-31T00:00:00.000Z',
      drainWorkflowId: 'arch-drain-a-0',
      notExpectedToFit: undefined,
    };
    const state: ReclaimWatchState = {
      node: 'a',
      targets: [],
      status: 'watching',
      history: [older, rec],
      pending: 0,
      runsSinceStart: 2,
    };
    expect(formatWatch(state)).toContain('not expected to fit: default/big');
    expect(recordOf(state, { deadline: '2026-01-01T00:00:20Z', reason: 'spot' })?.drainWorkflowId).toBe(
      'arch-drain-a-1',
    );
    expect(recordOf(state, { deadline: '2026-01-01T00:00:20Z', reason: 'other' })).toBeUndefined();
    expect(
      recordOf(
        { ...state, history: [older], current: { ...rec, status: 'running' } },
        { deadline: rec.deadline, reason: 'spot' },
      )?.status,
    ).toBe('running');
  });
});
