/**
 * The spawn helper's process (core/spawner.ts says why it exists): starts
 * the programs its parent asks for and sends back what they said. Loads
 * nothing but node:child_process, so that its own forks stay cheap.
 *
 * Messages (IPC, advanced serialization):
 *   in:  { type: 'run', id, file, args, env } | { type: 'kill', id, signal }
 *   out: { type: 'spawn', id, pid } then one of
 *        { type: 'exit', id, code, signal, stdout, stderr } (Buffers) or
 *        { type: 'error', id, message } (the program could not be started).
 * Its parent gone (the channel closed), it exits; programs still running
 * carry on, as they would have without it. Signals do not end it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { SpawnerReply, SpawnerRequest } from './spawner.js';

const children = new Map<number, ChildProcess>();

function reply(m: SpawnerReply): void {
  process.send?.(m);
}

function run(id: number, file: string, args: string[], env: NodeJS.ProcessEnv): void {
  let settled = false;
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.set(id, child);
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => err.push(b));
  child.on('spawn', () => reply({ type: 'spawn', id, pid: child.pid ?? 0 }));
  child.on('error', (e) => {
    if (settled) return;
    settled = true;
    children.delete(id);
    reply({ type: 'error', id, message: e.message });
  });
  child.on('close', (code, signal) => {
    if (settled) return;
    settled = true;
    children.delete(id);
    reply({ type: 'exit', id, code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err) });
  });
}

process.on('message', (m: SpawnerRequest) => {
  if (m.type === 'kill') children.get(m.id)?.kill(m.signal);
  else run(m.id, m.file, m.args, m.env);
});
process.on('disconnect', () => process.exit(0));
// A Ctrl-C or a SIGTERM to the worker's process group is the worker's to handle (it lets a checkpoint
// in flight finish): the helper lives exactly as long as its channel. Its programs get default handlers.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGQUIT', 'SIGHUP'] as const) process.on(sig, () => undefined);
