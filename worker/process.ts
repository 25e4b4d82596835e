/**
 * Start `bin/arch-worker` as a child process and wait until it polls (its
 * "ready" line). Used by `arch-cli demo` (one worker per local node, left
 * running when the demo leaves its nodes up) and by the tests' clusters.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

/** This file is <repo>/dist/worker/process.js (not from run.js: that would load the Temporal worker into the caller). */
export const ARCH_WORKER_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/arch-worker');

export interface WorkerProcessOptions {
  /** arch-worker's arguments (--node, --containerd-address, ...). */
  args: string[];
  env: NodeJS.ProcessEnv;
  /** stdout and stderr of the worker (appended). */
  outFile: string;
  /** Command prefix that execs the worker, e.g. nsenter into a node's mount namespace. */
  wrap?: string[];
  /**
   * A process group of its own, left running when this process exits.
   * Otherwise its stdout is a pipe through this process (copied to outFile),
   * so a worker whose parent died goes too (its next write fails).
   */
  detached?: boolean;
  readyTimeoutMs?: number;
}

export interface WorkerProcess {
  pid: number;
  transferUrl: string;
  /** Exit code (null: killed by a signal). */
  exited: Promise<number | null>;
}

function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** The worker's "ready" line in its output so far (written once it polls). */
function readyLine(file: string, from: number): { transferUrl?: string } | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').slice(from);
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    if (!line.includes('"ready"')) continue;
    try {
      const ev = JSON.parse(line) as { event?: string; transferUrl?: string };
      if (ev.event === 'ready') return ev;
    } catch {
      // a partial line, or not JSON
    }
  }
  return undefined;
}

export async function startWorkerProcess(o: WorkerProcessOptions): Promise<WorkerProcess> {
  fs.mkdirSync(path.dirname(o.outFile), { recursive: true });
  const out = fs.openSync(o.outFile, 'a');
  // Only what this worker writes counts: the file may hold an earlier run's ready line.
  const from = fs.fstatSync(out).size;
  const [cmd, ...argv] = [...(o.wrap ?? []), ARCH_WORKER_BIN, ...o.args];
  const child = spawn(cmd!, argv, {
    env: o.env,
    stdio: ['ignore', o.detached ? out : 'pipe', out],
    detached: !!o.detached,
  });
  child.stdout?.on('data', (chunk: Buffer) => fs.appendFileSync(o.outFile, chunk));
  fs.closeSync(out);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
  let gone = false;
  void exited.then(() => (gone = true));
  if (o.detached) child.unref();
  const timeoutMs = o.readyTimeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ready = readyLine(o.outFile, from);
    if (ready) return { pid: child.pid!, transferUrl: ready.transferUrl ?? '', exited };
    if (gone) throw new Error(`arch-worker exited before it was ready:\n${tail(o.outFile)}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`arch-worker not ready within ${timeoutMs} ms; see ${o.outFile}:\n${tail(o.outFile)}`);
    }
    await sleep(50);
  }
}
