/**
 * arch-cli demo: two local nodes, a Temporal dev server, a counter job
 * moved node-a → node-b → node-a while its count is printed. The work is in
 * cli/demo/ and is loaded only when the command runs (it pulls in the
 * Temporal client, containerd and image code).
 */
import { Command, InvalidArgumentError } from 'commander';
import type { CliContext } from '../context.js';
import { DEFAULT_RUN_DIR, DEFAULT_STATE_DIR } from '../demo/defaults.js';

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError(`"${v}" is not a port (1-65535)`);
  return n;
}

function seconds(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 600)
    throw new InvalidArgumentError(`"${v}" is not a number of seconds (1-600)`);
  return n;
}

export function registerDemo(program: Command, ctx: CliContext): void {
  program
    .command('demo')
    .description(
      'start a second local node, a Temporal dev server and a worker per node, run a counter with ARCH on node-a, migrate it to node-b and back while printing its count; leaves it running (or --cleanup)',
    )
    .option('--cleanup', 'stop and remove everything the demo started once it is done')
    .option('--stop', 'only stop a previous demo that was left running (and remove its files)')
    .option(
      '--state-dir <dir>',
      'checkpoints, logs, worker state, dev server database (under ARCH_ALLOWED_ROOTS)',
      DEFAULT_STATE_DIR,
    )
    .option(
      '--run-dir <dir>',
      "node-b's containerd (socket, state) and the demo's record of what it started",
      DEFAULT_RUN_DIR,
    )
    .option('--temporal-port <port>', "port of the demo's Temporal dev server (127.0.0.1)", port, 7233)
    .option('--ui-port <port>', 'port of the Temporal UI', port, 8233)
    .option(
      '--containerd-address <sock>',
      "node-a's containerd (this host's); when none answers there, node-a gets a containerd of its own",
      '/run/containerd/containerd.sock',
    )
    .option('--own-node-a', "give node-a a containerd of its own too, instead of this host's")
    .option('--id <id>', 'container id of the job (containerd namespace arch-demo)', 'counter')
    .option('--watch <seconds>', 'how long the count is shown on each node', seconds, 3)
    .action(
      async (o: {
        cleanup?: boolean;
        stop?: boolean;
        stateDir: string;
        runDir: string;
        temporalPort: number;
        uiPort: number;
        containerdAddress: string;
        ownNodeA?: boolean;
        id: string;
        watch: number;
      }) => {
        const { runDemo } = await import('../demo/run.js');
        await runDemo({ ...o, cleanup: !!o.cleanup, stop: !!o.stop, ownNodeA: !!o.ownNodeA }, ctx);
      },
    );
}
