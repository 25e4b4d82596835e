import { execa } from 'execa';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { GATE_FILE, GATE_SCRIPT, SealGate } from '../../core/seal-gate.js';

/**
 * bin/arch-criu-gate as CRIU runs it (its environment: the action, the image
 * directory as /proc/<pid>/fd/<n>), against a SealGate of this process: CRIU
 * goes on only on "ok", never while the page images are still being
 * decrypted, and not at all when the restore is refused or the gate's
 * owner is gone.
 */
let tmp: string;
let n = 0;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-gate-unit-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const fresh = (): string => fs.mkdtempSync(path.join(tmp, `g${n++}-`));

/** The script, started as CRIU would with `dir` as its image directory (through an open fd, as CRIU names it). */
function criuRuns(dir: string, action = 'post-setup-namespaces') {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  const p = execa(GATE_SCRIPT, [], {
    reject: false,
    env: { CRTOOLS_SCRIPT_ACTION: action, CRTOOLS_IMAGE_DIR: `/proc/${process.pid}/fd/${fd}` },
    timeout: 20_000,
  });
  void p.finally(() => fs.closeSync(fd));
  let done = false;
  void p.finally(() => (done = true));
  return { exit: p.then((r) => r.exitCode), done: () => done };
}

test('the script is installed and executable', async () => {
  expect(await SealGate.script()).toBe(GATE_SCRIPT);
});

test('CRIU waits at post-setup-namespaces until the gate opens, then goes on', async () => {
  const dir = fresh();
  const gate = await SealGate.close(dir);
  const criu = criuRuns(dir);
  await sleep(300);
  expect(criu.done()).toBe(false);
  gate.open(true);
  expect(await criu.exit).toBe(0);
  gate.release();
});

test('CRIU runs the script twice per action (it reads its configuration twice): the second run goes on too', async () => {
  const dir = fresh();
  const gate = await SealGate.close(dir);
  const first = criuRuns(dir);
  await sleep(100);
  gate.open(true);
  expect(await first.exit).toBe(0);
  expect(await criuRuns(dir).exit).toBe(0);
  gate.release();
});

test('a verdict given before CRIU arrives is kept for it', async () => {
  const dir = fresh();
  const gate = await SealGate.close(dir);
  gate.open(true);
  expect(await criuRuns(dir).exit).toBe(0);
  gate.release();
});

test('a refused gate makes the action fail (CRIU aborts the restore)', async () => {
  const dir = fresh();
  const gate = await SealGate.close(dir);
  const criu = criuRuns(dir);
  await sleep(100);
  gate.open(false);
  gate.open(true); // only the first verdict counts
  expect(await criu.exit).toBe(1);
  gate.release();
});

test('a gate released without a verdict (its owner gone) fails the action, never leaves it waiting', async () => {
  const dir = fresh();
  const gate = await SealGate.close(dir);
  const criu = criuRuns(dir);
  await sleep(100);
  gate.release();
  expect(await criu.exit).toBe(1);
});

test('a gate whose owner is dead fails at once', async () => {
  const dir = fresh();
  const gate = await SealGate.close(dir);
  const dead = await execa('sh', ['-c', 'echo $$']);
  fs.writeFileSync(path.join(dir, `${GATE_FILE}.pid`), `${dead.stdout.trim()}\n`);
  expect(await criuRuns(dir).exit).toBe(1);
  gate.release();
});

test('other actions, and restores without a gate, go straight on', async () => {
  const dir = fresh();
  expect(await criuRuns(dir).exit).toBe(0);
  const gate = await SealGate.close(dir);
  for (const action of ['pre-restore', 'setup-namespaces', 'post-restore', 'network-unlock'])
    expect(await criuRuns(dir, action).exit).toBe(0);
  gate.release();
});
