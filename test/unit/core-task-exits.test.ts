import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseTaskExit } from '../../core/containerd.js';
import {
  announceExitRecorder,
  ARCH_STATE_FILE,
  CHECKPOINT_LOCK_FILE,
  awaitRecordedExit,
  EXIT_FILE,
  EXIT_RECORDER_FILE,
  KILLED_FILE,
  recordedExit,
  recordExit,
  removeLeftStateDir,
} from '../../core/shim-state.js';

/**
 * Exit codes for delete: containerd's /tasks/exit events as `ctr events`
 * prints them, and the record arch-runc's delete reads.
 */
describe('parseTaskExit', () => {
  const at = '2026-11-28 20:00:00.123456789 +0000 UTC';

  test('an init exit with its code', () => {
    expect(
      parseTaskExit(
        `${at} default /tasks/exit {"container_id":"job-1","id":"job-1","pid":4242,"exit_status":3,"exited_at":"2026-11-28T20:00:00.1Z"}`,
      ),
    ).toEqual({
      namespace: 'default',
      containerId: 'job-1',
      execId: 'job-1',
      pid: 4242,
      exitStatus: 3,
      exitedAt: '2026-11-28T20:00:00.1Z',
    });
  });

  test('exit_status is left out of the JSON when it is 0', () => {
    expect(
      parseTaskExit(
        `${at} k8s.io /tasks/exit {"container_id":"c","id":"c","pid":7,"exited_at":"2026-11-28T20:00:00Z"}`,
      ),
    ).toMatchObject({ namespace: 'k8s.io', exitStatus: 0 });
  });

  test('an exec process keeps its own id', () => {
    expect(
      parseTaskExit(`${at} default /tasks/exit {"container_id":"c","id":"exec-1","pid":8,"exit_status":1}`),
    ).toMatchObject({ containerId: 'c', execId: 'exec-1', exitStatus: 1 });
  });

  test.each([
    `${at} default /tasks/start {"container_id":"c","pid":7}`,
    `${at} default /tasks/exit not-json`,
    `${at} default /tasks/exit {"id":"c"}`,
    'default /tasks/exit {"container_id":"c","id":"c"}',
    '',
  ])('not a task exit: %j', (line) => {
    expect(parseTaskExit(line)).toBeUndefined();
  });
});

describe('recordExit / recordedExit', () => {
  let root: string;
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-exit-'));
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  test('recorded for a container arch-runc created, and read back', async () => {
    fs.mkdirSync(path.join(root, 'job-1'));
    fs.writeFileSync(path.join(root, 'job-1', ARCH_STATE_FILE), '{}');
    expect(await recordedExit(root, 'job-1')).toBeUndefined();
    expect(await recordExit(root, 'job-1', { exitStatus: 3, exitedAt: 'then' })).toBe(true);
    expect(await recordedExit(root, 'job-1')).toEqual({ exitStatus: 3, exitedAt: 'then' });
    expect(fs.readdirSync(path.join(root, 'job-1')).sort()).toEqual([ARCH_STATE_FILE, EXIT_FILE].sort());
  });

  test('not recorded for other containers (no ARCH state), nor for unknown ones', async () => {
    fs.mkdirSync(path.join(root, 'plain'));
    expect(await recordExit(root, 'plain', { exitStatus: 1 })).toBe(false);
    expect(await recordExit(root, 'missing', { exitStatus: 1 })).toBe(false);
    expect(fs.readdirSync(path.join(root, 'plain'))).toEqual([]);
  });

  test('a damaged record reads as none', async () => {
    fs.mkdirSync(path.join(root, 'job-2'));
    fs.writeFileSync(path.join(root, 'job-2', EXIT_FILE), '{"exitStatus":"x"}');
    expect(await recordedExit(root, 'job-2')).toBeUndefined();
    fs.writeFileSync(path.join(root, 'job-2', EXIT_FILE), 'garbage');
    expect(await recordedExit(root, 'job-2')).toBeUndefined();
  });
});

describe('awaitRecordedExit: a delete right after the exit waits for the worker', () => {
  let base: string;
  let root: string;
  beforeEach(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-exit-wait-'));
    root = path.join(base, 'default');
    fs.mkdirSync(path.join(root, 'job'), { recursive: true });
    fs.writeFileSync(path.join(root, 'job', ARCH_STATE_FILE), '{}');
  });
  afterEach(() => fs.rmSync(base, { recursive: true, force: true }));

  test('no recorder announced: nothing to wait for', async () => {
    expect(await awaitRecordedExit(root, 'job', 5_000)).toEqual({ exit: undefined, waitedMs: 0 });
  });

  test('a recorder that died (stale pid): nothing to wait for', async () => {
    fs.writeFileSync(path.join(base, EXIT_RECORDER_FILE), '2147483646');
    expect(await awaitRecordedExit(root, 'job', 5_000)).toEqual({ exit: undefined, waitedMs: 0 });
  });

  test('already recorded: no wait', async () => {
    await announceExitRecorder(base);
    await recordExit(root, 'job', { exitStatus: 0 });
    expect(await awaitRecordedExit(root, 'job', 5_000)).toEqual({ exit: { exitStatus: 0 }, waitedMs: 0 });
  });

  test('a live recorder writes the exit late: delete gets it', async () => {
    const undo = await announceExitRecorder(base);
    expect(fs.readFileSync(path.join(base, EXIT_RECORDER_FILE), 'utf8')).toBe(String(process.pid));
    setTimeout(() => void recordExit(root, 'job', { exitStatus: 3 }), 150);
    const r = await awaitRecordedExit(root, 'job', 5_000);
    expect(r.exit).toEqual({ exitStatus: 3 });
    expect(r.waitedMs).toBeGreaterThan(0);
    await undo();
    expect(fs.existsSync(path.join(base, EXIT_RECORDER_FILE))).toBe(false);
  });

  test('a live recorder that never writes: the wait ends at its bound with no exit', async () => {
    await announceExitRecorder(base);
    const r = await awaitRecordedExit(root, 'job', 100);
    expect(r.exit).toBeUndefined();
    expect(r.waitedMs).toBeGreaterThanOrEqual(100);
  });

  test("undo leaves a newer recorder's announcement alone; the base dir is created when missing", async () => {
    const fresh = path.join(base, 'not-yet');
    const undo = await announceExitRecorder(fresh);
    fs.writeFileSync(path.join(fresh, EXIT_RECORDER_FILE), '1'); // another worker since
    await undo();
    expect(fs.readFileSync(path.join(fresh, EXIT_RECORDER_FILE), 'utf8')).toBe('1');
  });
});

describe('removeLeftStateDir: a state dir runc could not remove because an ARCH file landed in it', () => {
  let root: string;
  const dir = (id: string, files: string[]) => {
    fs.mkdirSync(path.join(root, id));
    for (const f of files) fs.writeFileSync(path.join(root, id, f), '{}');
  };
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-left-'));
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  test("only ARCH's files (and one still being written) left: removed", async () => {
    dir('job', [ARCH_STATE_FILE, EXIT_FILE, `${EXIT_FILE}.4242.tmp`, KILLED_FILE, CHECKPOINT_LOCK_FILE]);
    expect(await removeLeftStateDir(root, 'job')).toBe(true);
    expect(fs.existsSync(path.join(root, 'job'))).toBe(false);
  });

  test("runc's state (a container that exists), runc's other files, an empty dir (a create under way): kept", async () => {
    dir('live', [ARCH_STATE_FILE, 'state.json']);
    dir('fifo', [ARCH_STATE_FILE, 'exec.fifo']);
    dir('empty', []);
    dir('other', [`${ARCH_STATE_FILE}.tmp`]);
    dir('nested', []);
    fs.mkdirSync(path.join(root, 'nested', EXIT_FILE));
    for (const id of ['live', 'fifo', 'empty', 'other', 'nested']) {
      expect(await removeLeftStateDir(root, id)).toBe(false);
      expect(fs.existsSync(path.join(root, id))).toBe(true);
    }
    expect(fs.readdirSync(path.join(root, 'live')).sort()).toEqual([ARCH_STATE_FILE, 'state.json']);
  });

  test('a missing dir, or a symlink in its place, is left alone', async () => {
    expect(await removeLeftStateDir(root, 'missing')).toBe(false);
    const target = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-left-target-'));
    try {
      fs.writeFileSync(path.join(target, ARCH_STATE_FILE), '{}');
      fs.symlinkSync(target, path.join(root, 'link'));
      expect(await removeLeftStateDir(root, 'link')).toBe(false);
      expect(fs.readdirSync(target)).toEqual([ARCH_STATE_FILE]);
    } finally {
      fs.rmSync(target, { recursive: true, force: true });
    }
  });
});
