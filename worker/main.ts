/**
 * arch-worker --node NAME [--containerd-address SOCK] [-n|--namespace NS]...
 *             [--temporal-namespace NS]
 *             [--runc-root DIR] [--transfer-listen HOST:PORT] ...
 *
 * One per node. SIGTERM/SIGINT: stop polling, let in-flight activities (a
 * checkpoint above all) finish within --shutdown-grace, then exit 0.
 */
import { InvalidArgumentError } from 'commander';
import { ArchInputError, errorMessage } from '../contract/errors.js';
import { loadSettings } from '../core/settings.js';
import { workerOptionsFrom, workerProgram, type WorkerFlags } from './options.js';
import { startNodeWorker, StoppedBeforeConnected } from './run.js';
import { forgetMallocTunables } from '../core/malloc-tunables.js';

async function main(argv: string[]): Promise<number> {
  forgetMallocTunables(); // what the worker starts gets the environment it was given
  const settings = loadSettings();
  const program = workerProgram(settings);
  program.parse(argv, { from: 'user' });
  const worker = await startNodeWorker(workerOptionsFrom(program.opts<WorkerFlags>(), settings));
  // Tests and supervisors wait for this line on stdout to know the worker polls.
  process.stdout.write(
    `${JSON.stringify({ event: 'ready', node: worker.node, pid: process.pid, transferUrl: worker.transferUrl })}\n`,
  );
  await worker.done;
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof StoppedBeforeConnected) process.exit(0); // SIGTERM while waiting for Temporal
    const e = err as { code?: string; exitCode?: number };
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) process.exit(e.exitCode === 0 ? 0 : 2);
    process.stderr.write(`arch-worker: ${errorMessage(err)}\n`);
    process.exit(err instanceof InvalidArgumentError || err instanceof ArchInputError ? 2 : 1);
  },
);
