/**
 * A batch job as Node.js users write them, for ARCH's workload tests: the
 * Node twin of python-job.py, run by the host's node in a container
 * (NODE_IMAGE in images.ts runs this file as compiled to dist/).
 *
 * Its progress lives in memory (a running sum it checks against a closed
 * form), and it prints one line per step: "nodejob <step> <mode> ok|FAIL
 * [what failed]". It appends "start" to $NODEJOB_STATE/starts (default
 * /state) when it starts, so a restored job (which does not start again) is
 * told from a fresh one. libuv does its work through an epoll loop, an
 * eventfd per loop (every worker thread's and the thread pool's wake-ups), a
 * signal pipe, timers on the monotonic clock and a thread pool for files;
 * every mode leans on some of them.
 *
 * NODEJOB_MODE picks how the work is spread:
 *   workers   a pool of worker_threads adding their shares into a SharedArrayBuffer
 *             with Atomics, each reporting through its MessagePort
 *   children  child_process.fork workers answering over Node's IPC channel (a socketpair
 *             carrying JSON), and a short child process each step (execFile: SIGCHLD
 *             reaches the job through libuv's signal pipe); a step counts only when each
 *             forked worker answered its share and the short child printed the step
 *   io        paces its steps with setTimeout and watches the monotonic clock as a stall
 *             watchdog does (a step counts only when less than 3 s passed since the step
 *             before), writes each step's file with fs.promises (libuv's thread pool),
 *             waits until an fs.watch (inotify) on that directory reports it, signals
 *             itself (SIGUSR2 to its own handler) and checks that a setInterval heartbeat
 *             kept beating since the step before
 */
import { execFile, fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';

const MODE = process.env.NODEJOB_MODE ?? 'workers';
const STATE = process.env.NODEJOB_STATE ?? '/state';
const STEP = 16;
const SHARES = 3;

interface Share {
  from: number;
  to: number;
}

function sumOfSquares({ from, to }: Share): number {
  let s = 0;
  for (let x = from; x < to; x++) s += x * x;
  return s;
}

/** Sum of squares 0..n-1. */
const expected = (n: number): number => ((n - 1) * n * (2 * n - 1)) / 6;

/** Step n's numbers, cut into `parts` shares. */
function shares(n: number, parts: number): Share[] {
  const from = (n - 1) * STEP;
  const cut = (i: number) => from + Math.floor((STEP * i) / parts);
  return Array.from({ length: parts }, (_, i) => ({ from: cut(i), to: cut(i + 1) }));
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** One step of work: its part of the running sum, and what failed besides ('' when nothing). */
type Step = (n: number) => Promise<{ part: number; failed: string }>;

/** workers: each thread adds its share into the shared total, then says it is done. */
function workersMode(): Step {
  const total = new BigInt64Array(new SharedArrayBuffer(8));
  const pool = Array.from({ length: SHARES }, () => {
    const w = new Worker(new URL(import.meta.url), { workerData: { total } });
    w.unref();
    return w;
  });
  return async (n) => {
    const before = Atomics.load(total, 0);
    const parts = shares(n, SHARES);
    await Promise.all(
      pool.map(
        (w, i) =>
          new Promise<void>((resolve, reject) => {
            w.once('message', () => resolve());
            w.once('error', reject);
            w.postMessage(parts[i]);
          }),
      ),
    );
    return { part: Number(Atomics.load(total, 0) - before), failed: '' };
  };
}

function workerThread(): void {
  const { total } = workerData as { total: BigInt64Array };
  parentPort!.on('message', (share: Share) => {
    Atomics.add(total, 0, BigInt(sumOfSquares(share)));
    parentPort!.postMessage('done');
  });
}

/** children: forked workers answer their shares over IPC; a short child per step. */
function childrenMode(): Step {
  const children: ChildProcess[] = Array.from({ length: SHARES }, () =>
    fork(process.argv[1]!, [], { env: { ...process.env, NODEJOB_ROLE: 'child' } }),
  );
  const ask = (c: ChildProcess, share: Share) =>
    new Promise<number>((resolve, reject) => {
      c.once('message', (m) => resolve((m as { sum: number }).sum));
      c.once('exit', (code) => reject(new Error(`forked worker ${c.pid} exited (${code})`)));
      c.send(share);
    });
  const shortChild = (n: number) =>
    new Promise<string>((resolve) =>
      execFile('/bin/sh', ['-c', `echo step ${n}`], (err, stdout) => resolve(err ? String(err) : stdout.trim())),
    );
  return async (n) => {
    const parts = shares(n, SHARES);
    const [sums, said] = await Promise.all([Promise.all(children.map((c, i) => ask(c, parts[i]!))), shortChild(n)]);
    for (const c of children) c.removeAllListeners('exit');
    return { part: sums.reduce((a, b) => a + b, 0), failed: said === `step ${n}` ? '' : `short child said ${said}` };
  };
}

function forkedWorker(): void {
  process.on('message', (share: Share) => process.send!({ sum: sumOfSquares(share) }));
  process.on('disconnect', () => process.exit(0));
}

/** io: timers, the thread pool, inotify and a signal, each checked every step. */
function ioMode(): Step {
  const dir = `${STATE}/io`;
  fs.mkdirSync(dir, { recursive: true });
  const seen = new Set<string>();
  fs.watch(dir, (_event, name) => {
    if (name) seen.add(String(name));
  });
  let signals = 0;
  process.on('SIGUSR2', () => signals++);
  let beats = 0;
  setInterval(() => beats++, 20);
  let last = performance.now();
  return async (n) => {
    const failed: string[] = [];
    const now = performance.now();
    if (now - last >= 3000) failed.push(`monotonic gap ${((now - last) / 1000).toFixed(1)} s`);
    last = now;
    const name = `step-${n}`;
    await fsp.writeFile(`${dir}/${name}`, `${n}\n`);
    const beatsBefore = beats;
    const signalsBefore = signals;
    process.kill(process.pid, 'SIGUSR2');
    for (let i = 0; i < 100 && (!seen.has(name) || signals === signalsBefore || beats === beatsBefore); i++)
      await sleep(20);
    if (!seen.has(name)) failed.push('fs.watch did not report the write');
    if (signals === signalsBefore) failed.push('SIGUSR2 not handled');
    if (beats === beatsBefore) failed.push('heartbeat stopped');
    if ((await fsp.readFile(`${dir}/${name}`, 'utf8')) !== `${n}\n`) failed.push('step file differs');
    await fsp.rm(`${dir}/step-${n - 1}`, { force: true });
    seen.delete(`step-${n - 1}`);
    return { part: sumOfSquares({ from: (n - 1) * STEP, to: n * STEP }), failed: failed.join('; ') };
  };
}

async function main(): Promise<void> {
  fs.mkdirSync(STATE, { recursive: true });
  fs.appendFileSync(`${STATE}/starts`, 'start\n');
  console.log(`nodejob start ${MODE}`);
  const modes: Record<string, () => Step> = { workers: workersMode, children: childrenMode, io: ioMode };
  const make = modes[MODE];
  if (!make) throw new Error(`NODEJOB_MODE=${MODE}: expected one of ${Object.keys(modes).join(', ')}`);
  const step = make();
  let total = 0;
  for (let n = 1; ; n++) {
    const { part, failed } = await step(n);
    total += part;
    const why = [total === expected(n * STEP) ? '' : `sum ${total} is not ${expected(n * STEP)}`, failed]
      .filter(Boolean)
      .join('; ');
    console.log(`nodejob ${n} ${MODE} ${why ? `FAIL ${why}` : 'ok'}`);
    await fsp.writeFile(`${STATE}/count.tmp`, `${n}\n`);
    await fsp.rename(`${STATE}/count.tmp`, `${STATE}/count`);
    await sleep(200);
  }
}

if (!isMainThread) workerThread();
else if (process.env.NODEJOB_ROLE === 'child') forkedWorker();
else await main();
