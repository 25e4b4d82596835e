import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { startDevServer, type DevServer } from '../../temporal/dev-server.js';
import { startWorkerProcess } from '../../worker/process.js';
import { clientDataConverter, payloadProtection } from '../../temporal/data-converter.js';
import { settingsVars } from '../../core/settings.js';
import { nodeTaskQueue, WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import { workflowOverhead, type Overhead } from '../../temporal/history.js';
import { attributePairs } from '../../contract/search-attributes.js';
import type { MigrateInput, MigrateResult, ReclaimWatchState } from '../../contract/types.js';
import { readLogLines, writeArchConfig } from './arch-env.js';
import type { DiagnosableCluster } from './failure-environment.js';
import { startNode, type TestNode } from './containerd-node.js';
import { COUNTER_FILES, ensureTestImage, REPO_ROOT, testWorkDir } from './images.js';
import { migrateContainer } from '../../workflows/index.js';

/**
 * Real Temporal for tests: the installed Temporal CLI dev server on random
 * loopback ports (never a download), and real `arch-worker` processes, one
 * per test node. Jest only ever holds a @temporalio/client; the workers'
 * native core runs in their own processes. Everything started here is
 * tracked and stopped by stopAllTemporal(), by pid, including after a
 * failed test.
 */

export const TEMPORAL_CLI = process.env.ARCH_TEMPORAL_CLI ?? '/opt/arch/bin/temporal';

export interface TestTemporal {
  server: DevServer;
  address: string;
  namespace: string;
  client: Client;
  /** Environment for processes that must reach this server. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

const liveServers = new Set<TestTemporal>();
const liveWorkers = new Set<TestWorker>();

export async function startTemporal(opts: { dir?: string } = {}): Promise<TestTemporal> {
  if (!fs.existsSync(TEMPORAL_CLI))
    throw new Error(`Temporal CLI not found at ${TEMPORAL_CLI}: run ./install.sh (or set ARCH_TEMPORAL_CLI)`);
  const logFile = opts.dir ? path.join(opts.dir, 'temporal.log') : undefined;
  const server = await startDevServer({ temporalCli: TEMPORAL_CLI, ip: '127.0.0.1', headless: true, logFile });
  let connection: Connection | undefined;
  try {
    connection = await Connection.connect({ address: server.address });
  } catch (err) {
    await server.stop();
    throw err;
  }
  // The payload key the workers find too (ARCH_PAYLOAD_KEY[_FILE], or the node's default key file): workers with a key refuse plaintext.
  const client = new Client({
    connection,
    namespace: server.namespace,
    dataConverter: clientDataConverter(payloadProtection(settingsVars().vars, server.address)),
  });
  let stopped = false;
  const t: TestTemporal = {
    server,
    address: server.address,
    namespace: server.namespace,
    client,
    env: { TEMPORAL_ADDRESS: server.address, TEMPORAL_NAMESPACE: server.namespace },
    async stop() {
      if (stopped) return;
      stopped = true;
      liveServers.delete(t);
      await connection!.close().catch(() => undefined);
      await server.stop();
    },
  };
  liveServers.add(t);
  return t;
}

export interface TestWorker {
  node: string;
  pid: number;
  logFile: string;
  /** The worker's structured log (pino JSON lines). */
  archLog: string;
  transferUrl: string;
  /** SIGTERM and wait (graceful: in-flight activities finish). */
  stop(timeoutMs?: number): Promise<number | null>;
  /** SIGKILL and wait: a worker lost with its machine. */
  kill(): Promise<void>;
  exited: Promise<number | null>;
  /** False once the process has exited. */
  running(): boolean;
}

export interface StartWorkerOptions {
  temporal: TestTemporal;
  /** ARCH_CONFIG file (test/support/arch-env.ts writeArchConfig). */
  archConfig: string;
  /** Where the worker writes its logs and state. */
  dir: string;
  extraArgs?: string[];
  env?: Record<string, string>;
  readyTimeoutMs?: number;
}

/** Start `bin/arch-worker` for a test node and wait until it polls. */
export async function startWorker(node: TestNode, o: StartWorkerOptions): Promise<TestWorker> {
  fs.mkdirSync(o.dir, { recursive: true });
  const logFile = path.join(o.dir, `worker-${node.name}.out`);
  const archLog = path.join(o.dir, `worker-${node.name}.log`);
  const args = [
    '--node',
    node.name,
    '--containerd-address',
    node.address,
    '--runc-root',
    node.runcRootBase,
    '--cgroup-parent',
    node.cgroupParent,
    '--transfer-listen',
    '127.0.0.1:0',
    '--state-dir',
    path.join(o.dir, `state-${node.name}`),
    '--log-dir',
    path.join(o.dir, `logs-${node.name}`),
    '--shutdown-grace',
    '30s',
    ...(o.extraArgs ?? []),
  ];
  const started = await startWorkerProcess({
    args,
    env: {
      ...process.env,
      ...o.temporal.env,
      ARCH_CONFIG: o.archConfig,
      ARCH_LOG_FILE: archLog,
      ARCH_NODE_NAME: node.name,
      ...o.env,
    },
    outFile: logFile,
    // A node with its own mount namespace (its own disk at shared paths): the worker joins it; nsenter execs, so the pid stays the worker's.
    wrap: node.privateMountNs ? ['nsenter', '-t', String(node.pid), '-m', '--'] : undefined,
    readyTimeoutMs: o.readyTimeoutMs,
  }).catch((err: unknown) => {
    throw new Error(`worker ${node.name}: ${(err as Error).message}`);
  });
  const { exited } = started;
  const signal = (s: NodeJS.Signals) => {
    try {
      process.kill(started.pid, s);
    } catch {
      // already gone
    }
  };
  let done = false;
  void exited.then(() => {
    done = true;
    liveWorkers.delete(w);
  });
  const w: TestWorker = {
    node: node.name,
    pid: started.pid,
    logFile,
    archLog,
    transferUrl: started.transferUrl,
    exited,
    running: () => !done,
    async stop(timeoutMs = 40_000) {
      if (done) return exited;
      signal('SIGTERM');
      const code = await withTimeout(exited, timeoutMs);
      if (code === 'timeout') {
        signal('SIGKILL');
        return exited;
      }
      return code;
    },
    async kill() {
      if (done) return;
      signal('SIGKILL');
      await exited;
    },
  };
  liveWorkers.add(w);
  return w;
}

/** Stop every worker and server this process started (afterAll, and on failures). */
export async function stopAllTemporal(): Promise<void> {
  await Promise.all([...liveWorkers].map((w) => w.kill()));
  await Promise.all([...liveServers].map((s) => s.stop()));
}

/** True once a worker polls the node's activity queue (as the server sees it). */
export async function nodeHasPoller(client: Client, namespace: string, node: string): Promise<boolean> {
  const r = await client.workflowService.describeTaskQueue({
    namespace,
    taskQueue: { name: nodeTaskQueue(node), kind: 1 },
    taskQueueType: 2, // TASK_QUEUE_TYPE_ACTIVITY
  });
  return (r.pollers ?? []).length > 0;
}

/** p, or 'timeout' after ms; the timer never outlives the race (jest must be able to exit). */
export async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Workflow result or failure, whichever comes; never hangs past timeoutMs. */
export async function outcome<T>(
  handle: WorkflowHandle,
  timeoutMs: number,
): Promise<{ ok: true; value: T } | { ok: false; error: Error }> {
  const r = await withTimeout(
    handle.result().then(
      (value: T) => ({ ok: true as const, value }),
      (error: Error) => ({ ok: false as const, error }),
    ),
    timeoutMs,
  );
  if (r === 'timeout') throw new Error(`workflow ${handle.workflowId} did not finish within ${timeoutMs} ms`);
  return r;
}

// ---- a cluster: Temporal + containerd nodes + one arch-worker each ----------

export const ARCH_RUNC = path.join(REPO_ROOT, 'bin', 'arch-runc');

export interface TestCluster {
  dir: string;
  archConfig: string;
  /** arch-runc's log (all nodes: one config). */
  archRuncLog: string;
  temporal: TestTemporal;
  nodes: Record<string, TestNode>;
  workers: Record<string, TestWorker>;
  /** Start (again) the worker of a node. */
  startWorker(name: string, extraArgs?: string[], env?: Record<string, string>): Promise<TestWorker>;
  /** Run an ARCH-enabled counter on a node through arch-runc. */
  runCounter(name: string, id: string, env?: string[], namespace?: string): Promise<void>;
  /** Current count of a counter on a node, or undefined if unreadable. */
  count(name: string, id: string, namespace?: string): number | undefined;
  waitCount(name: string, id: string, atLeast: number, timeoutMs?: number, namespace?: string): Promise<number>;
  /**
   * The warnings and errors the workers and arch-runc logged so far (pino
   * level >= 40) and containerd's errors, last `max` lines: what a failed test shows so that a rare
   * failure (CI) can be understood without the logs, which stop() removes.
   */
  logDigest(max?: number): string;
  stop(): Promise<void>;
}

export interface ClusterOptions {
  /** Nodes that get the counter image at start (default: all). */
  imageOn?: string[];
  /** Checkpoint host path (ARCH_CHECKPOINT_HOST_PATH) given to counters; default <dir>/checkpoints. */
  checkpointRoot?: string;
  workerArgs?: string[];
  /** Per-node settings overrides (their own arch.env for that node's containerd, arch-runc and worker). */
  nodeSettings?: Record<string, Record<string, string | undefined>>;
  /**
   * Nodes with a disk of their own at the checkpoint root (node-local
   * storage): <dir>/checkpoints-<node> is mounted over it in the node's own
   * mount namespace, so checkpoints must really be copied to reach it.
   */
  ownCheckpointDisk?: string[];
}

export async function startCluster(label: string, names: string[], o: ClusterOptions = {}): Promise<TestCluster> {
  const dir = testWorkDir('temporal', `${label}-${process.pid}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const archRuncLog = path.join(dir, 'arch-runc.log');
  const archConfig = writeArchConfig(dir, { ARCH_LOG_FILE: archRuncLog });
  const configOf: Record<string, string> = {};
  for (const n of names) {
    configOf[n] = o.nodeSettings?.[n]
      ? writeArchConfig(path.join(dir, `config-${n}`), { ARCH_LOG_FILE: archRuncLog, ...o.nodeSettings[n] })
      : archConfig;
  }
  const checkpointRoot = o.checkpointRoot ?? path.join(dir, 'checkpoints');
  const nodes: Record<string, TestNode> = {};
  const workers: Record<string, TestWorker> = {};
  let temporal: TestTemporal | undefined;
  let cluster: TestCluster | undefined;
  const stop = async () => {
    if (cluster) live.delete(cluster);
    await Promise.all(Object.values(workers).map((w) => w.kill()));
    await Promise.all(Object.values(nodes).map((n) => n.stop().catch(() => undefined)));
    await temporal?.stop();
    // Checkpoints of big test containers live here: keep them only when asked to.
    if (process.env.ARCH_TEST_KEEP !== '1') fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    temporal = await startTemporal({ dir });
    fs.mkdirSync(checkpointRoot, { recursive: true });
    await Promise.all(
      names.map(async (n) => {
        const own = o.ownCheckpointDisk?.includes(n) ? path.join(dir, `checkpoints-${n}`) : undefined;
        if (own) fs.mkdirSync(own, { recursive: true });
        nodes[n] = await startNode(n, {
          env: { ARCH_CONFIG: configOf[n]! },
          privateMounts: own ? [{ source: own, target: checkpointRoot }] : undefined,
        });
      }),
    );
    await Promise.all((o.imageOn ?? names).map((n) => ensureTestImage(nodes[n]!.containerd)));
    const t = temporal;
    const start = async (name: string, extraArgs: string[] = [], env?: Record<string, string>) => {
      const w = await startWorker(nodes[name]!, {
        temporal: t,
        archConfig: configOf[name]!,
        dir,
        extraArgs: [...(o.workerArgs ?? []), ...extraArgs],
        env,
      });
      workers[name] = w;
      return w;
    };
    await Promise.all(names.map((n) => start(n)));
    const count = (name: string, id: string, ns = 'default') => {
      try {
        const v = Number(nodes[name]!.readContainerFile(id, COUNTER_FILES.count, ns).trim());
        return Number.isFinite(v) ? v : undefined;
      } catch {
        return undefined;
      }
    };
    cluster = {
      dir,
      archConfig,
      archRuncLog,
      temporal,
      nodes,
      workers,
      startWorker: start,
      async runCounter(name, id, env = [], namespace = 'default') {
        const node = nodes[name]!;
        const cd = namespace === 'default' ? node.containerd : node.containerd.withNamespace(namespace);
        if (namespace !== 'default') await ensureTestImage(cd);
        await cd.run({
          image: 'localhost/arch-test/counter:1',
          id,
          env: ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${checkpointRoot}`, ...env],
          runcBinary: ARCH_RUNC,
          logFile: path.join(dir, `${name}-${namespace}-${id}.out`),
          detach: true,
        });
        await cd.waitStatus(id, 'RUNNING', 15_000);
      },
      count,
      async waitCount(name, id, atLeast, timeoutMs = 20_000, ns = 'default') {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const v = count(name, id, ns);
          if (v !== undefined && v >= atLeast) return v;
          if (Date.now() > deadline)
            throw new Error(`${name}: ${ns}/${id} count ${v} did not reach ${atLeast} within ${timeoutMs} ms`);
          await sleep(100);
        }
      },
      logDigest(max = 40) {
        return logDigest(
          [
            { file: archRuncLog, label: 'arch-runc', format: 'pino' },
            ...Object.values(workers).map((w) => ({
              file: w.archLog,
              label: `worker ${w.node}`,
              format: 'pino' as const,
            })),
            ...Object.values(nodes).map((n) => ({
              file: n.logFile,
              label: `containerd ${n.name}`,
              format: 'logfmt' as const,
            })),
          ],
          max,
        );
      },
      stop,
    };
    live.add(cluster);
    return cluster;
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Clusters started and not stopped yet: test/support/after-failure shows their logs after a failed test. */
const live: Set<DiagnosableCluster> = ((
  globalThis as typeof globalThis & { __archLiveClusters?: Set<DiagnosableCluster> }
).__archLiveClusters ??= new Set());

function logDigest(files: { file: string; label: string; format: 'pino' | 'logfmt' }[], max: number): string {
  const lines: { time: number; text: string }[] = [];
  for (const { file, label, format } of files) {
    if (format === 'pino') {
      for (const e of readLogLines(file)) {
        // The SDK's start-up notes about the task queues a worker does not poll are not news.
        if (Number(e.level ?? 0) < 40 || /not polling for/.test(String(e.msg ?? ''))) continue;
        lines.push({
          time: typeof e.time === 'string' ? Date.parse(e.time) : Number(e.time ?? 0),
          text: `${label}: ${JSON.stringify(e)}`,
        });
      }
      continue;
    }
    // containerd's own log: its errors only.
    const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    for (const m of text.matchAll(/^time="([^"]+)" level=error .*$/gm))
      lines.push({ time: Date.parse(m[1]!), text: `${label}: ${m[0]}` });
  }
  lines.sort((a, b) => a.time - b.time);
  return (
    lines
      .slice(-max)
      .map((l) => l.text)
      .join('\n') || '(no warnings or errors logged)'
  );
}

/** Running copies of a container across nodes: exactly one is the invariant. */
export async function runningOn(cluster: TestCluster, id: string, namespace = 'default'): Promise<string[]> {
  const out: string[] = [];
  for (const [name, node] of Object.entries(cluster.nodes)) {
    const cd = namespace === 'default' ? node.containerd : node.containerd.withNamespace(namespace);
    const t = await cd.task(id).catch(() => undefined);
    if (t?.status === 'RUNNING') out.push(name);
  }
  return out;
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed, when it is JSON. */
  json?: unknown;
}

/** Run the built `bin/arch-cli` against the cluster's Temporal (a real process, as a user would). */
export async function runCli(
  cluster: TestCluster,
  args: string[],
  env: Record<string, string> = {},
  timeoutMs = 120_000,
): Promise<CliRun> {
  const child = spawn(path.join(REPO_ROOT, 'bin', 'arch-cli'), args, {
    env: {
      ...process.env,
      ...cluster.temporal.env,
      ARCH_CONFIG: cluster.archConfig,
      ARCH_LOG_FILE: path.join(cluster.dir, 'cli.log'),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  let json: unknown;
  try {
    json = JSON.parse(stdout);
  } catch {
    json = undefined;
  }
  return { code, stdout, stderr, json };
}

export async function waitUntil<T>(
  what: string,
  fn: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 30_000,
  everyMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v as T;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${(lastErr as Error).message})` : ''}`,
      );
    await sleep(everyMs);
  }
}

/** The state of `node`'s reclaim watcher once it has finished `drains` drains and watches again. */
export function drainsDone(cluster: TestCluster, node: string, drains = 1, timeoutMs = 120_000) {
  const handle = cluster.temporal.client.workflow.getHandle(workflowIds.reclaimWatch(node));
  return waitUntil(
    `drain ${drains} of ${node} to finish`,
    async () => {
      const s = await handle.query<ReclaimWatchState>('state');
      return s.history.length >= drains && s.status === 'watching' ? s : undefined;
    },
    timeoutMs,
    500,
  );
}

/**
 * Migrate a running counter back and forth between two nodes `rounds` times
 * and return each migration's orchestration overhead from its history (the
 * benchmark and the overhead test use this). The first migration warms the
 * workers up and is not counted.
 */
export async function measureMigrationOverhead(
  cluster: TestCluster,
  id: string,
  nodes: [string, string],
  rounds: number,
): Promise<{ overheads: Overhead[]; results: MigrateResult[] }> {
  const overheads: Overhead[] = [];
  const results: MigrateResult[] = [];
  let [from, to] = nodes;
  for (let i = 0; i <= rounds; i++) {
    const handle = await cluster.temporal.client.workflow.start(migrateContainer, {
      taskQueue: WORKFLOW_TASK_QUEUE,
      workflowId: `bench-migrate-${id}-${i}-${process.pid}-${Date.now()}`,
      args: [{ namespace: 'default', id, from, to } satisfies MigrateInput],
      typedSearchAttributes: attributePairs({
        container: `default/${id}`,
        namespace: 'default',
        sourceNode: from,
        targetNode: to,
        operation: 'migrate',
        phase: 'queued',
      }),
    });
    const r = (await handle.result()) as MigrateResult;
    if (i > 0) {
      overheads.push(await workflowOverhead(handle));
      results.push(r);
    }
    [from, to] = [to, from];
  }
  return { overheads, results };
}
