import { setTimeout as sleep } from 'node:timers/promises';
import { CommandError, runCommand, type RunResult } from '../../core/run-command.js';
import { currentSpawner, installSpawner, uninstallSpawner } from '../../core/spawner.js';

/**
 * The spawn helper (core/spawner.ts): once installed, runCommand's programs
 * are started by a small helper process instead of this one, and read
 * exactly as when this process starts them itself: output, exit codes,
 * signals, timeouts, aborts, the environment, the errors. Real programs
 * (sh, sleep), a real helper process.
 */
afterEach(() => uninstallSpawner());

/** The parent of the program that ran: which process started it. */
const parentOf = async () => Number((await runCommand('sh', ['-c', 'echo $PPID'])).stdout);

const comparable = (r: RunResult) => ({ ...r });

test('installed, the programs are the helper’s children; before and after, this process’s', async () => {
  expect(await parentOf()).toBe(process.pid);
  const s = installSpawner();
  expect(s.pid).toBeGreaterThan(0);
  expect(await parentOf()).toBe(s.pid);
  uninstallSpawner();
  expect(await parentOf()).toBe(process.pid);
});

test('output, exit codes, stderr and the error message read the same through the helper', async () => {
  const cases: [string, string[]][] = [
    ['sh', ['-c', 'printf "out\\nline 2\\n"; printf "warn\\n" >&2']],
    ['sh', ['-c', 'echo said; echo "no such thing" >&2; exit 3']],
    ['sh', ['-c', 'kill -USR1 $$']],
    ['/nonexistent/program', ['x']],
  ];
  const run = (file: string, args: string[]) =>
    runCommand(file, args, { reject: false, env: { ARCH_SPAWNER_TEST: 'v' } }).then(comparable);
  const fails = (file: string, args: string[]) =>
    runCommand(file, args).then(
      () => 'resolved',
      (e: unknown) => (e instanceof CommandError ? e.message : String(e)),
    );
  const direct = [];
  for (const [f, a] of cases) direct.push({ r: await run(f, a), e: await fails(f, a) });
  installSpawner();
  const helped = [];
  for (const [f, a] of cases) helped.push({ r: await run(f, a), e: await fails(f, a) });
  expect(helped).toEqual(direct);
  expect(direct[1]!.r).toMatchObject({ exitCode: 3, stdout: 'said', stderr: 'no such thing' });
  expect(direct[2]!.r).toMatchObject({ exitCode: null, signal: 'SIGUSR1' });
  expect(direct[3]!.e).toMatch(/^Command failed: \/nonexistent\/program x: spawn \/nonexistent\/program ENOENT/);
});

test('the environment is this process’s plus opts.env, exactly', async () => {
  installSpawner();
  process.env.ARCH_SPAWNER_LATE = 'set after the helper started';
  try {
    const r = await runCommand('sh', ['-c', 'echo "$ARCH_SPAWNER_LATE|$ARCH_SPAWNER_ADDED|${HOME:-none}"'], {
      env: { ARCH_SPAWNER_ADDED: 'added' },
    });
    expect(r.stdout).toBe(`set after the helper started|added|${process.env.HOME ?? 'none'}`);
  } finally {
    delete process.env.ARCH_SPAWNER_LATE;
  }
});

test('timeout, abort and the forced kill reach the program through the helper', async () => {
  installSpawner();
  const t = await runCommand('sleep', ['5'], { timeoutMs: 100, reject: false });
  expect(t).toMatchObject({ exitCode: null, signal: 'SIGTERM', timedOut: true });

  const ac = new AbortController();
  let spawned = false;
  // Ignores SIGTERM; what it leaves behind when killed is one sleep of 50 ms.
  const stubborn = runCommand('sh', ['-c', 'trap "" TERM; while :; do sleep 0.05; done'], {
    signal: ac.signal,
    forceKillAfterMs: 200,
    reject: false,
    onSpawn: () => (spawned = true),
  });
  await sleep(200);
  expect(spawned).toBe(true);
  const t0 = Date.now();
  ac.abort();
  const r = await stubborn;
  expect(r).toMatchObject({ exitCode: null, signal: 'SIGKILL', timedOut: false });
  expect(Date.now() - t0).toBeLessThan(4_000);
});

test('many calls at once each get their own answer', async () => {
  installSpawner();
  const rs = await Promise.all(
    Array.from({ length: 12 }, (_, i) =>
      runCommand('sh', ['-c', `sleep 0.0${i % 5}; echo ${i}; exit ${i % 3}`], { reject: false }),
    ),
  );
  expect(rs.map((r) => [r.stdout, r.exitCode])).toEqual(Array.from({ length: 12 }, (_, i) => [String(i), i % 3]));
});

test('signals to the helper (a Ctrl-C of the process group) do not end it; if it dies, calls in flight fail and later ones run here', async () => {
  const s = installSpawner();
  expect(await parentOf()).toBe(s.pid); // running, its handlers in place (a signal in its first ms ends it: calls then run here)
  process.kill(s.pid!, 'SIGINT');
  process.kill(s.pid!, 'SIGTERM');
  await sleep(100);
  expect(await parentOf()).toBe(s.pid);

  const inFlight = runCommand('sleep', ['1']).then(
    () => 'resolved',
    (e: unknown) => String(e),
  );
  await sleep(100);
  process.kill(s.pid!, 'SIGKILL');
  expect(await inFlight).toMatch(/Command failed: sleep 1: the spawn helper exited \(SIGKILL\)/);
  expect(currentSpawner()).toBeUndefined();
  expect(await parentOf()).toBe(process.pid);
});
