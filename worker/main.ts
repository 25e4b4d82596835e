/**
 * arch-worker --node NAME [--containerd-address SOCK] [--namespace NS]...
 *             [--runc-root DIR] [--transfer-listen HOST:PORT] ...
 *
 * One per node. SIGTERM/SIGINT: stop polling, let in-flight activities (a
 * checkpoint above all) finish within --shutdown-grace, then exit 0.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { errorMessage } from '../core/errors.js';
import { requireAbsolutePath } from '../core/paths.js';
import { loadSettings } from '../core/settings.js';
import { isValidNodeName, NODE_NAME_RULE } from '../core/temporal/names.js';
import { parseDurationMs, parseHostPort } from './args.js';
import { startNodeWorker } from './run.js';

async function main(argv: string[]): Promise<number> {
  const settings = loadSettings();
  const program = new Command('arch-worker')
    .description("Run this node's ARCH worker: activities on arch-node-<node>, workflows on arch")
    .option('--node <name>', 'this node\'s name (task queue arch-node-<name>)', settings.nodeName)
    .option('--containerd-address <sock>', "containerd's socket", '/run/containerd/containerd.sock')
    .option('--namespace <ns...>', 'containerd namespaces to manage (default: all)')
    .option('--runc-root <dir>', 'base of the per-namespace runc roots containerd uses', settings.runcRootBase)
    .option('--cgroup-parent <path>', 'cgroup parent for containers restored here')
    .option('--ctr <path>', 'ctr binary', 'ctr')
    .option('--arch-runc <path>', 'runc wrapper restored containers are created with (default: <repo>/bin/arch-runc)')
    .option('--transfer-listen <host:port>', 'address of the checkpoint transfer server', '0.0.0.0:0')
    .option('--transfer-advertise <host>', 'host name other nodes use for this node (default: the hostname)')
    .option('--log-dir <dir>', 'stdout/stderr of restored containers go to <dir>/<ns>/<id>.log')
    .option('--state-dir <dir>', 'worker state (image exports, throughput history)', '/var/lib/arch/worker')
    .addOption(new Option('--shutdown-grace <duration>', 'time in-flight activities get after SIGTERM').default('120s'))
    .option('--verify-stable <duration>', 'a restored container must stay up this long', '1s')
    .option('--no-workflows', 'only run this node\'s activities (no workflow worker)')
    .exitOverride();
  program.parse(argv, { from: 'user' });
  const o = program.opts<{
    node: string; containerdAddress: string; namespace?: string[]; runcRoot: string; cgroupParent?: string; ctr: string; archRunc?: string;
    transferListen: string; transferAdvertise?: string; logDir?: string; stateDir: string; shutdownGrace: string; verifyStable: string; workflows: boolean;
  }>();
  if (!isValidNodeName(o.node)) throw new InvalidArgumentError(`--node "${o.node}": use ${NODE_NAME_RULE}`);
  const worker = await startNodeWorker({
    node: o.node,
    settings: { ...settings, runcRootBase: requireAbsolutePath(o.runcRoot, '--runc-root') },
    containerdAddress: o.containerdAddress,
    ctr: o.ctr,
    namespaces: o.namespace,
    cgroupParent: o.cgroupParent,
    archRunc: o.archRunc,
    transferListen: parseHostPort(o.transferListen, '--transfer-listen'),
    transferAdvertise: o.transferAdvertise,
    logDir: o.logDir ? requireAbsolutePath(o.logDir, '--log-dir') : undefined,
    stateDir: requireAbsolutePath(o.stateDir, '--state-dir'),
    shutdownGraceMs: parseDurationMs(o.shutdownGrace, '--shutdown-grace'),
    verifyStableMs: parseDurationMs(o.verifyStable, '--verify-stable'),
    workflows: o.workflows,
  });
  // Tests and supervisors wait for this line on stdout to know the worker polls.
  process.stdout.write(`${JSON.stringify({ event: 'ready', node: o.node, pid: process.pid, transferUrl: worker.transferUrl })}\n`);
  await worker.done;
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    const e = err as { code?: string; exitCode?: number };
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) process.exit(e.exitCode === 0 ? 0 : 2);
    process.stderr.write(`arch-worker: ${errorMessage(err)}\n`);
    process.exit(err instanceof InvalidArgumentError ? 2 : 1);
  },
);
