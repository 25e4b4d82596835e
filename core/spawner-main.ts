/**
 * The spawn helper's process (core/spawner.ts says why it exists): starts
 * the programs its parent asks for (with run-command.ts's launcher) and
 * sends back what they said. Loads nothing else, so that its own forks
 * stay cheap.
 *
 * Messages (IPC, advanced serialization):
 *   in:  { type: 'run', id, file, args, env } | { type: 'kill', id, signal }
 *   out: { type: 'spawn', id, pid } then one of
 *        { type: 'exit', id, code, signal, stdout, stderr } (Buffers) or
 *        { type: 'error', id, message } (the program could not be started).
 * Its parent gone (the channel closed), it exits; programs still running
 * carry on, as they would have without it. Signals do not end it.
 */
import { launchHere } from './run-command.js';
import type { Launched, SpawnerReply, SpawnerRequest } from './spawner.js';

const children = new Map<number, Launched>();

function reply(m: SpawnerReply): void {
  process.send?.(m);
}

function run(id: number, file: string, args: string[], env: NodeJS.ProcessEnv): void {
  children.set(
    id,
    launchHere(file, args, env, 'pipe', {
      spawn: (pid) => reply({ type: 'spawn', id, pid }),
      error: (message) => {
        children.delete(id);
        reply({ type: 'error', id, message });
      },
      close: (code, signal, stdout, stderr) => {
        children.delete(id);
        reply({ type: 'exit', id, code, signal, stdout, stderr });
      },
    }),
  );
}

process.on('message', (m: SpawnerRequest) => {
  if (m.type === 'kill') children.get(m.id)?.kill(m.signal);
  else run(m.id, m.file, m.args, m.env);
});
process.on('disconnect', () => process.exit(0));
// A Ctrl-C or a SIGTERM to the worker's process group is the worker's to handle (it lets a checkpoint
// in flight finish): the helper lives exactly as long as its channel. Its programs get default handlers.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGQUIT', 'SIGHUP'] as const) process.on(sig, () => undefined);
