/** The node worker's command-line options, shared by arch-worker and `arch-cli dev`. */
import { Command, InvalidArgumentError, Option } from 'commander';
import { validateNamespace } from '../contract/ids.js';
import { requireAbsolutePath } from '../core/paths.js';
import type { Settings } from '../core/settings.js';
import { isValidNodeName, NODE_NAME_RULE } from '../contract/names.js';
import { parseDurationMs, parseHostPort } from '../core/option-parsers.js';
import type { NodeWorkerOptions } from './run.js';

export interface WorkerFlags {
  node: string;
  /** arch-worker only: `arch-cli dev` has the global --temporal-namespace. */
  temporalNamespace?: string;
  containerdAddress: string;
  namespace?: string[];
  runcRoot: string;
  cgroupParent?: string;
  ctr: string;
  archRunc?: string;
  transferListen: string;
  transferAdvertise?: string;
  logDir?: string;
  stateDir: string;
  shutdownGrace: string;
  verifyStable: string;
  workflows: boolean;
  reclaimTargets?: string;
}

/**
 * `transferListen`: dev mode (one host) keeps the transfer server on loopback.
 * `temporalNamespace`: add --temporal-namespace (arch-worker; `arch-cli dev`
 * has it as a global option). -n/--namespace is always containerd's, as in ctr.
 */
export function addWorkerOptions(
  cmd: Command,
  settings: Settings,
  defaults: { transferListen?: string; temporalNamespace?: boolean } = {},
): Command {
  if (defaults.temporalNamespace)
    cmd.option('--temporal-namespace <ns>', 'Temporal namespace (default $TEMPORAL_NAMESPACE or default)');
  return cmd
    .option('--node <name>', "this node's name (task queue arch-node-<name>)", settings.nodeName)
    .option('--containerd-address <sock>', "containerd's socket", '/run/containerd/containerd.sock')
    .option('-n, --namespace <ns...>', 'containerd namespaces to manage, repeatable (default: all)')
    .option('--runc-root <dir>', 'base of the per-namespace runc roots containerd uses', settings.runcRootBase)
    .option('--cgroup-parent <path>', 'cgroup parent for containers restored here')
    .option('--ctr <path>', 'ctr binary', 'ctr')
    .option('--arch-runc <path>', 'runc wrapper restored containers are created with (default: <repo>/bin/arch-runc)')
    .option(
      '--transfer-listen <host:port>',
      'address of the checkpoint transfer server (other nodes fetch checkpoints from it)',
      defaults.transferListen ?? '0.0.0.0:0',
    )
    .option('--transfer-advertise <host>', 'host name other nodes use for this node (default: the hostname)')
    .option('--log-dir <dir>', 'stdout/stderr of restored containers go to <dir>/<ns>/<id>.log')
    .option('--state-dir <dir>', 'worker state (image exports, throughput history)', '/var/lib/arch/worker')
    .addOption(
      new Option('--shutdown-grace <duration>', 'time in-flight activities (a checkpoint) get after SIGTERM').default(
        '120s',
      ),
    )
    .option('--verify-stable <duration>', 'a restored container must stay up this long', '1s')
    .option('--no-workflows', "only run this node's activities (no workflow worker)")
    .option(
      '--reclaim-targets <nodes>',
      "nodes a cloud reclaim notice (ARCH_CLOUD_PROVIDER) moves this node's containers to, comma-separated (default: checkpoint only)",
    );
}

/** arch-worker's command line. */
export function workerProgram(settings: Settings): Command {
  return addWorkerOptions(
    new Command('arch-worker').description(
      "Run this node's ARCH worker: activities on arch-node-<node>, workflows on arch",
    ),
    settings,
    { temporalNamespace: true },
  ).exitOverride();
}

export function workerOptionsFrom(o: WorkerFlags, settings: Settings): NodeWorkerOptions {
  if (!isValidNodeName(o.node)) throw new InvalidArgumentError(`--node "${o.node}": use ${NODE_NAME_RULE}`);
  const runcRoot = requireAbsolutePath(o.runcRoot, '--runc-root');
  return {
    node: o.node,
    settings: {
      ...settings,
      runcRootBase: runcRoot,
      // The worker's own root is searched first, with any other ARCH_RUNC_ROOT entries (and the discovered ones).
      runcRoots: [runcRoot, ...settings.runcRoots.filter((r) => r !== runcRoot)],
      temporalNamespace: o.temporalNamespace ?? settings.temporalNamespace,
    },
    containerdAddress: o.containerdAddress,
    ctr: o.ctr,
    namespaces: o.namespace?.map((ns) => validateNamespace(ns, '--namespace')),
    cgroupParent: o.cgroupParent,
    archRunc: o.archRunc,
    transferListen: parseHostPort(o.transferListen, '--transfer-listen'),
    transferAdvertise: o.transferAdvertise,
    logDir: o.logDir ? requireAbsolutePath(o.logDir, '--log-dir') : undefined,
    stateDir: requireAbsolutePath(o.stateDir, '--state-dir'),
    shutdownGraceMs: parseDurationMs(o.shutdownGrace, '--shutdown-grace'),
    verifyStableMs: parseDurationMs(o.verifyStable, '--verify-stable'),
    workflows: o.workflows,
    reclaimTargets: o.reclaimTargets
      ? o.reclaimTargets.split(',').map((n) => {
          const t = n.trim();
          if (!isValidNodeName(t))
            throw new InvalidArgumentError(`--reclaim-targets: "${t}" is not a node name (${NODE_NAME_RULE})`);
          return t;
        })
      : undefined,
  };
}
