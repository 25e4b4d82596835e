/**
 * arch-cli demo: README's "two local nodes, one migration" in one command.
 * node-a is this host's containerd (or a local one when none answers),
 * node-b a second containerd with its own root, runc root and cgroup parent;
 * a Temporal dev server and one arch-worker per node; the counter job runs
 * on node-a through arch-runc, moves to node-b and back while its count is
 * printed, then stays (or everything goes with --cleanup).
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@temporalio/client';
import { ensureImage, findBusybox } from '../../core/busybox-image.js';
import { Containerd } from '../../core/containerd.js';
import { ArchInputError } from '../../contract/errors.js';
import { requireAllowedRoot } from '../../core/host-dirs.js';
import { validateContainerId } from '../../contract/ids.js';
import { startLocalContainerd } from '../../core/local-node.js';
import { refOf, type ProcessRef } from '../../core/processes.js';
import { isReachable } from '../../temporal/connection.js';
import { startDevServer } from '../../temporal/dev-server.js';
import type { MigrateResult } from '../../contract/types.js';
import { startWorkerProcess } from '../../worker/process.js';
import { startMigration } from '../commands/migrate.js';
import { connect } from '../connect.js';
import type { CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';
import { DEMO_IMAGE_REF, demoImageArchive, demoLogFile, fileSize, firstCount, lastCount } from './image.js';
import { DEFAULT_RUN_DIR } from './defaults.js';
import { readDemoState, teardown, writeDemoState, type DemoNode, type DemoState } from './state.js';

export const DEMO_NAMESPACE = 'arch-demo';
/** This file is <repo>/dist/cli/demo/run.js; the worker restores with the same wrapper (worker/run.ts). */
const ARCH_RUNC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/arch-runc');
const NODE_A = 'node-a';
const NODE_B = 'node-b';

export interface DemoOptions {
  stateDir: string;
  runDir: string;
  temporalPort: number;
  uiPort: number;
  containerdAddress: string;
  /** node-a gets a containerd of its own too (not the host's). */
  ownNodeA: boolean;
  id: string;
  /** Seconds the count is shown on each node. */
  watch: number;
  cleanup: boolean;
  stop: boolean;
}

/** Ctrl-C: the flow stops at its next await and everything this run started is stopped. */
class Interrupted extends Error {
  constructor() {
    super('interrupted');
  }
}

const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

export async function runDemo(o: DemoOptions, ctx: CliContext): Promise<void> {
  const stateDir = path.resolve(o.stateDir);
  const runDir = path.resolve(o.runDir);
  const checkpoints = path.join(stateDir, 'checkpoints');
  validateContainerId(o.id, '--id');
  if (process.getuid?.() !== 0)
    throw new ArchInputError('user', 'the demo runs containers and CRIU', 'run it as root (sudo arch-cli demo)');

  const previous = readDemoState(runDir);
  if (previous) {
    say(`cleaning up the previous demo (started ${previous.startedAt}, state ${path.join(runDir, 'demo.json')})`);
    const left = await teardown(previous, (l) => say(`  ${l}`));
    if (left.length)
      throw new CliError(`the previous demo could not be cleaned up completely; left: ${left.join('; ')}`, EXIT.failed);
  }
  if (o.stop) {
    if (!previous) say(`no demo to stop (no ${path.join(runDir, 'demo.json')})`);
    else say('✔ the previous demo is stopped and its files removed');
    return;
  }
  // Checked before anything starts: arch-runc would refuse the job's checkpoint path at its first checkpoint.
  requireAllowedRoot(checkpoints, ctx.settings.allowedRoots, '--state-dir');

  const s: DemoState = {
    version: 1,
    owner: refOf(process.pid)!,
    startedAt: new Date().toISOString(),
    runDir,
    stateDir,
    namespace: DEMO_NAMESPACE,
    id: o.id,
    image: DEMO_IMAGE_REF,
    nodes: [],
    workers: [],
  };

  // Ctrl-C: main.ts's default handler exits at once ("the operation continues
  // in Temporal"); here the demo owns what runs, so it stops it first.
  let interrupted = false;
  let onInterrupt: (() => void) | undefined;
  const interruptedP = new Promise<never>((_, reject) => {
    onInterrupt = () => reject(new Interrupted());
  });
  interruptedP.catch(() => undefined);
  process.removeAllListeners('SIGINT');
  process.removeAllListeners('SIGTERM');
  const handler = (): void => {
    if (interrupted) {
      say('\n(cleaning up; please wait)');
      return;
    }
    interrupted = true;
    say('\ninterrupted: stopping what the demo started');
    onInterrupt?.();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  const until = <T>(p: Promise<T>): Promise<T> => Promise.race([p, interruptedP]);
  const pause = (ms: number): Promise<void> => until(new Promise((r) => setTimeout(r, ms)));

  let client: Client | undefined;
  let failed: string | undefined;
  try {
    fs.mkdirSync(stateDir, { recursive: true });
    fs.mkdirSync(checkpoints, { recursive: true });
    await writeDemoState(s);

    // 1. The image, from the host's busybox.
    const image = await until(demoImageArchive(path.join(stateDir, 'images')));
    say(`✔ built the counter image ${image.ref} from ${findBusybox()} (no registry)`);

    // 2. Nodes.
    const host = new Containerd({ address: o.containerdAddress, namespace: DEMO_NAMESPACE });
    const nodeFor = async (name: string, borrow: boolean): Promise<DemoNode> => {
      const logDir = path.join(stateDir, 'logs', name);
      if (borrow) {
        const n: DemoNode = {
          name,
          address: o.containerdAddress,
          runcRoot: ctx.settings.runcRootBase,
          logDir,
        };
        s.nodes.push(n);
        await writeDemoState(s);
        say(`✔ ${name} is this host's containerd (${o.containerdAddress})`);
        return n;
      }
      const dir = path.join(runDir, name);
      // Two demos (another --run-dir) must not share cgroups.
      const cgroupParent =
        runDir === path.resolve(DEFAULT_RUN_DIR) ? `/arch-demo-${name}` : `/arch-demo-${path.basename(runDir)}-${name}`;
      // Recorded before it starts: an interrupted start is still cleaned up.
      const n: DemoNode = {
        name,
        address: path.join(dir, 'c.sock'),
        runcRoot: path.join(dir, 'runc'),
        cgroupParent,
        logDir,
        local: { dir },
      };
      s.nodes.push(n);
      await writeDemoState(s);
      const local = await until(startLocalContainerd({ name, dir, cgroupParent, detached: true }));
      n.address = local.address;
      n.local = { dir, process: refOf(local.pid) };
      await writeDemoState(s);
      say(`✔ started ${name} (containerd pid ${local.pid}, socket ${local.address}, cgroup parent ${cgroupParent})`);
      return n;
    };
    const hostAnswers = !o.ownNodeA && (await until(host.ping(3_000).catch(() => false)));
    if (!o.ownNodeA && !hostAnswers)
      say(`  no containerd answers at ${o.containerdAddress}: node-a gets a containerd of its own too`);
    const a = await nodeFor(NODE_A, hostAnswers);
    const b = await nodeFor(NODE_B, false);
    const cdOf = (n: DemoNode) =>
      new Containerd({
        address: n.address,
        namespace: DEMO_NAMESPACE,
        runcRoot: n.runcRoot,
        cgroupParent: n.cgroupParent,
      });
    for (const n of [a, b]) {
      n.imageImported = await until(ensureImage(cdOf(n), image));
      await writeDemoState(s);
    }
    say(`✔ imported the image on ${NODE_A} and ${NODE_B} (containerd namespace ${DEMO_NAMESPACE})`);

    // 3. Temporal.
    const address = `127.0.0.1:${o.temporalPort}`;
    if (await until(isReachable({ address, namespace: 'default' }, 1000)))
      throw new CliError(
        `a Temporal server already answers at ${address}; the demo starts its own. Fix: pass --temporal-port (and --ui-port), or stop that server`,
        EXIT.input,
      );
    const server = await until(
      startDevServer({
        temporalCli: ctx.settings.temporalCli,
        ip: '127.0.0.1',
        port: o.temporalPort,
        uiPort: o.uiPort,
        dbFile: path.join(stateDir, 'temporal', 'temporal.sqlite'),
        logFile: path.join(stateDir, 'temporal', 'temporal.log'),
        detached: true,
      }),
    );
    s.temporal = { address: server.address, uiUrl: server.uiUrl, process: refOf(server.pid)! };
    await writeDemoState(s);
    say(`✔ started the Temporal dev server on ${server.address} (pid ${server.pid}, UI ${server.uiUrl})`);

    // 4. One worker per node.
    for (const n of [a, b]) {
      const workerDir = path.join(stateDir, 'workers', n.name);
      const args = [
        '--node',
        n.name,
        '--containerd-address',
        n.address,
        '--namespace',
        DEMO_NAMESPACE,
        '--runc-root',
        n.runcRoot,
        ...(n.cgroupParent ? ['--cgroup-parent', n.cgroupParent] : []),
        '--transfer-listen',
        '127.0.0.1:0',
        '--state-dir',
        path.join(workerDir, 'state'),
        '--log-dir',
        n.logDir,
        '--shutdown-grace',
        '10s',
      ];
      const w = await until(
        startWorkerProcess({
          args,
          env: {
            ...process.env,
            TEMPORAL_ADDRESS: server.address,
            TEMPORAL_NAMESPACE: 'default',
            ARCH_NODE_NAME: n.name,
            ARCH_LOG_FILE: path.join(workerDir, 'worker.log'),
          },
          outFile: path.join(workerDir, 'worker.out'),
          detached: true,
        }),
      );
      const ref: ProcessRef | undefined = refOf(w.pid);
      if (ref) s.workers.push({ node: n.name, process: ref, outFile: path.join(workerDir, 'worker.out') });
      await writeDemoState(s);
      say(`✔ started the worker of ${n.name} (pid ${w.pid}, log ${path.join(workerDir, 'worker.log')})`);
    }
    client = await until(connect(ctx.settings, { address: server.address, temporalNamespace: 'default' }));

    // 5. The job, on node-a, with ARCH.
    const job = `${DEMO_NAMESPACE}/${o.id}`;
    const logA = demoLogFile(a.logDir, DEMO_NAMESPACE, o.id);
    fs.mkdirSync(path.dirname(logA), { recursive: true });
    s.jobStarted = true;
    await writeDemoState(s);
    await until(
      cdOf(a).run({
        image: image.ref,
        id: o.id,
        env: ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${checkpoints}`],
        runcBinary: ARCH_RUNC,
        logFile: logA,
        detach: true,
      }),
    );
    await until(cdOf(a).waitStatus(o.id, 'RUNNING', 15_000));
    say(`✔ started job ${job} on ${NODE_A} through arch-runc (ARCH_ENABLE=1, checkpoints in ${checkpoints})`);

    let last = 0;
    /** Print the count each second for `seconds`; returns the last one seen. */
    const watch = async (n: DemoNode, from: number, seconds: number): Promise<void> => {
      const log = demoLogFile(n.logDir, DEMO_NAMESPACE, o.id);
      for (let i = 0; i < seconds; i++) {
        await pause(1000);
        const c = lastCount(log, from);
        if (c !== undefined && c !== last) {
          say(`  count ${c} on ${n.name}`);
          last = c;
        }
      }
    };
    await watch(a, 0, o.watch);

    // Where the running job prints: its node's log, from this offset.
    let printsAt = 0;
    const migrate = async (from: DemoNode, to: DemoNode): Promise<void> => {
      const fromLog = demoLogFile(from.logDir, DEMO_NAMESPACE, o.id);
      const fromOffset = printsAt;
      const log = demoLogFile(to.logDir, DEMO_NAMESPACE, o.id);
      const offset = fileSize(log);
      say(`→ migrating ${job} to ${to.name}… (checkpoint on ${from.name}, restore on ${to.name})`);
      const handle = await until(
        startMigration(client!, { namespace: DEMO_NAMESPACE, id: o.id, from: from.name, to: to.name }),
      );
      const r = (await until(handle.result())) as MigrateResult;
      if (r.outcome !== 'migrated') {
        failed = `${job} was not migrated to ${to.name}; it runs on ${r.runningOn} again (see the Temporal UI)`;
        throw new CliError(failed, EXIT.compensated);
      }
      const restoreMs = r.phases.find((p) => p.phase === 'restore' && p.node === to.name)?.ms;
      printsAt = offset;
      // The last count the job printed on the source before its checkpoint (it ran on while the migration began).
      const atCheckpoint = lastCount(fromLog, fromOffset) ?? last;
      // The first count the restored process prints on the target.
      let first: number | undefined;
      for (let i = 0; i < 50 && first === undefined; i++) {
        await pause(100);
        first = firstCount(log, offset);
      }
      const timing = `${restoreMs === undefined ? '' : `restored on ${to.name} in ${secs(restoreMs)}, `}migration ${secs(r.totalMs)}`;
      if (first === undefined) {
        failed = `${job} runs on ${to.name} but printed no count within 5 s`;
        say(`✘ ${failed}`);
      } else if (first <= last) {
        failed = `the count went from ${last} back to ${first} on ${to.name}: the job started fresh instead of being restored`;
        say(`✘ ${timing}; ${failed}`);
      } else {
        say(`✔ ${timing}; count continues at ${first} (its last on ${from.name}: ${atCheckpoint})`);
        last = first;
      }
      await watch(to, offset, o.watch);
    };
    await migrate(a, b);
    await migrate(b, a);

    if (o.cleanup) {
      say('cleaning up (--cleanup):');
      await client.connection.close().catch(() => undefined);
      client = undefined;
      const left = await teardown(s, (l) => say(`  ${l}`));
      if (left.length) throw new CliError(`clean-up left: ${left.join('; ')}`, EXIT.failed);
      say('✔ nothing of the demo is left running');
    } else {
      say(
        [
          '',
          `The job keeps running on ${NODE_A}; the nodes, their workers and the dev server too.`,
          `  Temporal UI: ${server.uiUrl}  (search ArchContainer="${job}")`,
          `  Move it again: TEMPORAL_ADDRESS=${server.address} arch-cli migrate ${job} --from ${NODE_A} --to ${NODE_B} --wait`,
          `  Stop everything: arch-cli demo --stop${runDir === path.resolve(DEFAULT_RUN_DIR) ? '' : ` --run-dir ${runDir}`}`,
        ].join('\n'),
      );
    }
  } catch (err) {
    // What failed is printed by arch-cli's error report, after the clean-up.
    await client?.connection.close().catch(() => undefined);
    client = undefined;
    say('stopping what the demo started:');
    const left = await teardown(s, (l) => say(`  ${l}`), { keepFiles: !(err instanceof Interrupted) });
    say(left.length ? `left: ${left.join('; ')}` : '✔ nothing of the demo is left running');
    if (!(err instanceof Interrupted))
      say(
        `  logs kept in ${path.join(stateDir, 'workers')} and ${path.join(stateDir, 'logs')} (the next arch-cli demo, or --stop, removes them)`,
      );
    if (err instanceof Interrupted) throw new CliError('interrupted', EXIT.interrupted);
    throw err;
  } finally {
    await client?.connection.close().catch(() => undefined);
  }
  if (failed) throw new CliError(failed, EXIT.failed);
}
