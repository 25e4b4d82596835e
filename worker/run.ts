/**
 * One node's worker process: an activity-only worker on the node's queue
 * (arch-node-<node>) and a workflow worker on the shared `arch` queue, plus
 * the transfer server other nodes pull checkpoints from, the cloud notice
 * watcher and the exit recorder (worker/exits.ts). The exit recorder starts
 * first and a worker that cannot reach Temporal waits for it rather than
 * exiting (connectWhenReachable): what the node does on its own goes on.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { createActivities } from '../activities/index.js';
import { Containerd } from '../core/containerd.js';
import { createLogger, type Logger } from '../core/log.js';
import type { Settings } from '../core/settings.js';
import { connectionOptions, targetPayloads, temporalTarget } from '../temporal/connection.js';
import { describeProtection, workerDataConverter } from '../temporal/data-converter.js';
import { nodeTaskQueue, WORKFLOW_TASK_QUEUE } from '../contract/names.js';
import { loadTransferTls, TransferServer } from '../core/transfer.js';
import { sdkLogger } from './logger.js';
import { startExitRecorder } from './exits.js';
import { startNoticeWatcher, type NoticeOptions } from './notices.js';
import { startProtect } from './protect.js';
import { nodeThroughputFile } from '../core/drain-plan.js';
import { livenessSettings, type LivenessSettings } from '../core/liveness-settings.js';
import { ownNodeNames } from '../core/lease.js';
import { startLiveness } from './liveness.js';
import { installSpawner, uninstallSpawner } from '../core/spawner.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../contract/errors.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The checkout: this file is <repo>/dist/worker/run.js. */
export const REPO_DIR = path.resolve(here, '../..');
export const WORKFLOW_BUNDLE = path.resolve(here, '../workflow-bundle.js');

export interface NodeWorkerOptions {
  node: string;
  settings: Settings;
  containerdAddress: string;
  ctr?: string;
  namespaces?: string[];
  cgroupParent?: string;
  archRunc?: string;
  transferListen: { host: string; port: number };
  transferAdvertise?: string;
  logDir?: string;
  stateDir: string;
  /** Time in-flight activities (a checkpoint) get to finish after SIGTERM. */
  shutdownGraceMs: number;
  workflows: boolean;
  verifyStableMs?: number;
  maxConcurrentActivities?: number;
  /** Install SIGINT/SIGTERM handlers that shut the workers down (default true). */
  handleSignals?: boolean;
  /** Where a cloud reclaim notice sends this node's containers (ARCH_CLOUD_PROVIDER). */
  reclaimTargets?: string[];
  /** ARCH_NODE_DEAD_AFTER / ARCH_FENCE_AFTER (default: from the node's settings). */
  liveness?: LivenessSettings;
}

export interface RunningWorker {
  node: string;
  transferUrl: string;
  log: Logger;
  /** Resolves when both workers have stopped. */
  done: Promise<void>;
  shutdown(): void;
}

let runtimeInstalled = false;

/** arch-runc records jobs under its own node name: one that is not this worker's is a setup error, said loudly. */
function warnOnOtherName(settings: Settings, log: Logger, node: string): void {
  for (const name of ownNodeNames(settings))
    if (name !== node)
      log.warn(
        { phase: 'start', node, runcNodeName: name, field: 'ARCH_NODE_NAME' },
        `arch-runc on this node records its jobs as node "${name}", this worker is "${node}". Fix: set ARCH_NODE_NAME=${node} in ${settings.configFile}`,
      );
}

export async function startNodeWorker(o: NodeWorkerOptions): Promise<RunningWorker> {
  const settings: Settings = { ...o.settings, nodeName: o.node };
  const log = createLogger(settings, 'arch-worker');
  if (!runtimeInstalled) {
    // Signals are handled below, not by the SDK: its handler removes itself on
    // the first signal, and execa's exit hook (signal-exit) then finds itself
    // the only listener and re-raises the signal, killing the process in the
    // middle of a checkpoint.
    Runtime.install({ logger: sdkLogger(log.child({ component: 'temporal-sdk' })), shutdownSignals: [] });
    runtimeInstalled = true;
  }
  // ctr and runc calls leave the worker's thread through a small helper process (core/spawner.ts).
  installSpawner();
  if (o.workflows && !fs.existsSync(WORKFLOW_BUNDLE)) {
    throw new Error(`workflow bundle ${WORKFLOW_BUNDLE} is missing: run \`npm run build\` in ${REPO_DIR}`);
  }
  fs.mkdirSync(o.stateDir, { recursive: true });
  const target = temporalTarget(settings);
  // Before anything listens: a key that cannot be used, or none for a remote Temporal, stops the worker here.
  const payloads = targetPayloads(target, process.env, 'worker');
  const liveness = o.liveness ?? livenessSettings({ ...process.env, ARCH_CONFIG: settings.configFile });
  const tls = loadTransferTls(settings);
  const transfer = new TransferServer({
    host: o.transferListen.host,
    port: o.transferListen.port,
    advertiseHost: o.transferAdvertise,
    tls: tls.server,
    log,
  });
  const transferUrl = await transfer.start();
  if (payloads.codec)
    log.info(
      { phase: 'start', payloadKey: payloads.codec.keyId, payloadKeySource: payloads.source },
      describeProtection(payloads),
    );
  else log.warn({ phase: 'start', payloadEncryption: false }, describeProtection(payloads));
  const dataConverter = workerDataConverter(payloads);
  // The node's own duties come first: they need containerd, not Temporal. Exit codes
  // decide whether a crashed job keeps its checkpoint, whether Temporal is up or not.
  const exits = await startExitRecorder({
    containerd: new Containerd({ address: o.containerdAddress, ctr: o.ctr }),
    settings,
    log,
  });
  const noticeOptions: NoticeOptions = {
    node: o.node,
    targets: o.reclaimTargets ?? [],
    ctx: { settings, log },
    target,
    payloads,
    throughputFile: nodeThroughputFile(o.stateDir, o.node),
  };
  let connection: NativeConnection | undefined;
  try {
    connection = await connectWhenReachable(o, target, log, () => startNoticeWatcher(noticeOptions));
    const identity = `${o.node}@${os.hostname()}:${process.pid}`;
    const activities = createActivities({
      node: o.node,
      ctx: { settings, log },
      containerdAddress: o.containerdAddress,
      ctr: o.ctr,
      cgroupParent: o.cgroupParent,
      archRunc: o.archRunc ?? path.join(REPO_DIR, 'bin', 'arch-runc'),
      namespaces: o.namespaces,
      transfer,
      transferCa: tls.ca,
      logDir: o.logDir,
      stateDir: o.stateDir,
      verifyStableMs: o.verifyStableMs ?? 1000,
      // Until the target starts fetching (offerTtlFor adds the transfer's own time).
      offerTtlMs: 5 * 60_000,
    });
    const workers: Worker[] = [
      await Worker.create({
        connection,
        namespace: target.namespace,
        taskQueue: nodeTaskQueue(o.node),
        identity,
        activities,
        dataConverter,
        shutdownGraceTime: o.shutdownGraceMs,
        maxConcurrentActivityTaskExecutions: o.maxConcurrentActivities ?? 8,
      }),
    ];
    if (o.workflows) {
      workers.push(
        await Worker.create({
          connection,
          namespace: target.namespace,
          taskQueue: WORKFLOW_TASK_QUEUE,
          identity,
          workflowBundle: { codePath: WORKFLOW_BUNDLE },
          dataConverter,
          // A killed worker's sticky workflows move to another worker after this.
          stickyQueueScheduleToStartTimeout: '3s',
        }),
      );
    }
    const conn = connection;
    const runs = workers.map((w) => w.run());
    // Only once the workers poll: a notice must find someone to drain the node.
    const notices = await startNoticeWatcher(noticeOptions);
    const protect = startProtect({ node: o.node, ctx: { settings, log }, target, payloads });
    // Once the workers poll: a node that reports alive can take recoveries.
    warnOnOtherName(settings, log, o.node);
    const alive = startLiveness({
      node: o.node,
      ctx: { settings, log },
      liveness,
      target,
      payloads,
      containerdAddress: o.containerdAddress,
      ctr: o.ctr,
      namespaces: o.namespaces,
    });
    const done = (async () => {
      try {
        await Promise.all(runs);
      } finally {
        protect.stop();
        await alive.stop().catch(() => undefined);
        await exits.stop().catch(() => undefined);
        await notices?.stop().catch(() => undefined);
        await transfer.stop().catch(() => undefined);
        await conn.close().catch(() => undefined);
        uninstallSpawner();
        log.info({ phase: 'shutdown' }, 'worker stopped');
      }
    })();
    log.info(
      {
        phase: 'start',
        taskQueues: [nodeTaskQueue(o.node), ...(o.workflows ? [WORKFLOW_TASK_QUEUE] : [])],
        temporal: target.address,
        namespace: target.namespace,
        transferUrl,
        containerd: o.containerdAddress,
        runcRoot: settings.runcRootBase,
      },
      'worker running',
    );
    const shutdown = () => {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    };
    if (o.handleSignals !== false) {
      let signalled = 0;
      const onSignal = (sig: NodeJS.Signals) => {
        signalled++;
        log.info(
          { phase: 'shutdown', signal: sig, graceMs: o.shutdownGraceMs },
          signalled === 1
            ? 'stopping: no new work; in-flight activities may finish'
            : 'already stopping; waiting for in-flight activities (SIGKILL to abort them)',
        );
        shutdown();
      };
      // These listeners stay for the life of the process (see the Runtime.install comment).
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGQUIT'] as const) process.on(sig, onSignal);
    }
    return { node: o.node, transferUrl, log, done, shutdown };
  } catch (err) {
    await exits.stop().catch(() => undefined);
    await transfer.stop().catch(() => undefined);
    await connection?.close().catch(() => undefined);
    throw err;
  }
}

/** How often a worker that cannot reach Temporal tries again (a notice's deadline is 30 s on some clouds). */
const RECONNECT_MS = 5000;

/**
 * Connect to Temporal, waiting as long as it takes: a node whose worker
 * starts while Temporal is down (its server restarting, the network not
 * up yet after a boot) must not be left without its node-local duties.
 * Meanwhile exit codes are recorded, and a reclaim notice checkpoints the
 * node's containers locally (`whileWaiting` starts that watcher; it is
 * stopped once connected, the regular one starting when the workers poll).
 * SIGINT/SIGTERM end the wait (the process exits 0).
 */
async function connectWhenReachable(
  o: NodeWorkerOptions,
  target: ReturnType<typeof temporalTarget>,
  log: Logger,
  whileWaiting: () => Promise<{ stop(): Promise<void> | void } | undefined>,
): Promise<NativeConnection> {
  let interim: { stop(): Promise<void> | void } | undefined;
  let stopping = false;
  const onSignal = () => void (stopping = true);
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        const connection = await NativeConnection.connect(connectionOptions(target));
        if (attempt > 1) log.info({ phase: 'start', temporal: target.address, attempt }, 'Temporal reached');
        return connection;
      } catch (err) {
        if (attempt === 1) {
          log.error(
            { phase: 'start', temporal: target.address, err: errorMessage(err), retryMs: RECONNECT_MS },
            `cannot reach Temporal at ${target.address}: trying again every ${RECONNECT_MS / 1000} s. Meanwhile exit codes are recorded and a reclaim notice checkpoints this node's containers locally. Fix: start Temporal, or set TEMPORAL_ADDRESS (and its TLS settings) in ${o.settings.configFile}`,
          );
          if (o.handleSignals !== false) for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, onSignal);
          interim = await whileWaiting().catch((e: unknown) => {
            log.warn(
              { phase: 'start', err: errorMessage(e) },
              'reclaim notices are not watched until Temporal is reached',
            );
            return undefined;
          });
        } else if (attempt % 12 === 0) {
          log.warn(
            { phase: 'start', temporal: target.address, err: errorMessage(err), attempt },
            'Temporal still unreachable',
          );
        }
      }
      for (let waited = 0; waited < RECONNECT_MS && !stopping; waited += 100) await sleep(100);
      if (stopping) {
        log.info({ phase: 'shutdown' }, 'stopped before Temporal was reached');
        throw new StoppedBeforeConnected();
      }
    }
  } finally {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.off(sig, onSignal);
    await interim?.stop();
  }
}

/** A signal ended the wait for Temporal: not a failure (arch-worker exits 0). */
export class StoppedBeforeConnected extends Error {
  constructor() {
    super('stopped before Temporal was reached');
  }
}
