import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { ARCH_RUNC_BIN } from './arch-node.js';

/**
 * Calling arch-runc and the real runc the same way, and comparing what they
 * did: exit code, signal, stdout, stderr (tests of arch-runc's runc
 * compatibility, with ARCH off and on).
 */
export interface CallResult {
  exitCode: number | undefined;
  signal: string | undefined;
  stdout: string;
  stderr: string;
}

export interface CallOptions {
  input?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  /**
   * stdout/stderr go to files, read after exit: for `create` and `run -d`,
   * whose container inherits (and keeps open) runc's stdio.
   */
  files?: boolean;
  /**
   * stdin, stdout and stderr are /dev/null, so only the exit is compared:
   * for `run -d` and `restore -d` of a container that will be checkpointed
   * (CRIU cannot dump a descriptor of a file outside the container's mounts).
   */
  devNull?: boolean;
  /** Descriptors of this process handed to the call as 3, 4, ... (--preserve-fds, --status-fd); implies `files`. */
  fds?: number[];
}

export type Call = (bin: string, args: string[], opts?: CallOptions) => Promise<CallResult>;

/**
 * A caller: arch-runc gets `archEnv()` (its settings file) on top of this
 * process's environment; `files` calls write below `outDir()`.
 */
export function runcCaller(archEnv: () => Record<string, string>, outDir: () => string): Call {
  let seq = 0;
  return async (bin, args, opts = {}) => {
    const env = { ...(bin === ARCH_RUNC_BIN ? archEnv() : {}), ...opts.env };
    if (opts.files || opts.fds || opts.devNull)
      return callWithFiles(bin, args, env, path.join(outDir(), `call-${++seq}`), opts);
    const r = await execa(bin, args, {
      reject: false,
      input: opts.input,
      stdin: opts.input === undefined ? 'ignore' : undefined,
      env,
      timeout: opts.timeoutMs ?? 30_000,
      stripFinalNewline: false,
    });
    return { exitCode: r.exitCode, signal: r.signal, stdout: String(r.stdout), stderr: String(r.stderr) };
  };
}

async function callWithFiles(
  bin: string,
  args: string[],
  env: Record<string, string>,
  base: string,
  opts: CallOptions,
): Promise<CallResult> {
  // Plain fds (not pipes that a library drains): the container may keep them.
  const out = fs.openSync(opts.devNull ? '/dev/null' : `${base}.out`, 'w');
  const err = fs.openSync(opts.devNull ? '/dev/null' : `${base}.err`, 'w');
  try {
    const p = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ['ignore', out, err, ...(opts.fds ?? [])] });
    const end = await Promise.race([
      new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
        p.on('exit', (code, signal) => res({ code, signal })),
      ),
      // Unref'd: a timer left after the race must not keep jest's process alive.
      sleep(opts.timeoutMs ?? 30_000, undefined, { ref: false }).then(() => undefined),
    ]);
    if (!end) {
      p.kill('SIGKILL');
      throw new Error(`${bin} ${args.join(' ')}: no exit within the timeout`);
    }
    const text = (ext: string) => (opts.devNull ? '' : fs.readFileSync(`${base}.${ext}`, 'utf8'));
    return {
      exitCode: end.code ?? undefined,
      signal: end.signal ?? undefined,
      stdout: text('out'),
      stderr: text('err'),
    };
  } finally {
    fs.closeSync(out);
    fs.closeSync(err);
  }
}

/** runc's logrus lines carry a timestamp; `ids` (from → to) maps what differs by design (ids, roots, bundles). */
export function norm(s: string, ids: [string, string][] = []): string {
  let out = s.replace(/time="[^"]*"/g, 'time=T');
  for (const [from, to] of ids) out = out.split(from).join(to);
  return out;
}

/** Same exit, signal and output, after `ids` are mapped in a's output. */
export function expectSame(a: CallResult, r: CallResult, ids: [string, string][] = []): void {
  expect({ ...a, stdout: norm(a.stdout, ids), stderr: norm(a.stderr, ids) }).toEqual({
    ...r,
    stdout: norm(r.stdout),
    stderr: norm(r.stderr),
  });
}
