import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Client, type WorkflowHandle } from '@temporalio/client';
import { Context } from '@temporalio/activity';
import { ApplicationFailure, type PayloadCodec } from '@temporalio/common';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { ArchActivities } from '../../activities/index.js';
import {
  clientDataConverter,
  FAILURE_CONVERTER_PATH,
  workerDataConverter,
  type PayloadProtection,
} from '../../temporal/data-converter.js';
import { nodeTaskQueue } from '../../contract/names.js';
import { SA } from '../../contract/search-attributes.js';
import { TEMPORAL_CLI } from './temporal.js';
import { REPO_ROOT } from './images.js';

/**
 * Workflow decisions under test with stub activities (issue 14): the real
 * workflow code, bundled from dist/, runs on a real Temporal server in this
 * process; every activity a workflow schedules on a node's queue lands in a
 * stub that records (node, activity, input) and answers as the test says.
 *
 * Not time-skipping: TestWorkflowEnvironment.createTimeSkipping() downloads
 * the Java test server, which cannot be had here (no network but package
 * registries, and no package ships it). createLocal() runs the installed
 * Temporal CLI dev server instead, so timers and retry back-offs are real
 * time: the tests keep them short through the workflows' inputs (deadlines,
 * nodeStartTimeoutMs, restoreAttempts).
 */

/** Every activity name, checked against the real set by the compiler: a stub worker registers them all. */
const ACTIVITY_NAMES: Record<keyof ArchActivities, true> = {
  ping: true,
  listContainers: true,
  selectContainers: true,
  selectPaused: true,
  describeContainer: true,
  checkTarget: true,
  planDrain: true,
  checkpointContainer: true,
  offerCheckpoint: true,
  offerImage: true,
  withdrawOffer: true,
  receiveCheckpoint: true,
  ensureImage: true,
  restoreContainer: true,
  probeRecoveryTarget: true,
  claimForRecovery: true,
  removeContainer: true,
  cleanupSource: true,
};
export type ActivityName = keyof ArchActivities;

export interface Call {
  node: string;
  activity: ActivityName;
  input: unknown;
  attempt: number;
}

/** What a stub does: its answer, or a throw (an ApplicationFailure to choose retryable or not). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- each stub declares the input type of the activity it stands in for
export type Stub = (input: any, call: Call) => unknown;
/** Stubs per node, per activity. */
export type Stubs = Record<string, Partial<Record<ActivityName, Stub>>>;

/** An error the workflow sees as a failed activity of that type. */
export function fail(type: string, message: string, nonRetryable = true): never {
  throw ApplicationFailure.create({ type, message, nonRetryable });
}

/**
 * Heartbeat until the workflow cancels this activity (a heartbeat is how
 * cancellation reaches it), then throw the cancellation. Bounded: a test that
 * never cancels fails instead of hanging.
 */
export async function untilCancelled(maxMs = 30_000): Promise<never> {
  const ctx = Context.current();
  const end = Date.now() + maxMs;
  while (Date.now() < end) {
    ctx.heartbeat();
    await Promise.race([ctx.sleep(100), ctx.cancelled]);
  }
  throw new Error(`untilCancelled: not cancelled within ${maxMs} ms`);
}

let bundle: Promise<WorkflowBundleWithSourceMap> | undefined;

/** The workflows as the workers run them (same entry point and failure converter as scripts/bundle-workflows). */
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundle ??= bundleWorkflowCode({
    workflowsPath: path.join(REPO_ROOT, 'dist', 'workflows', 'index.js'),
    failureConverterPath: FAILURE_CONVERTER_PATH,
    logger: quiet,
  });
  return bundle;
}

const quiet = { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error: console.error };

let runtimeInstalled = false;

/** The SDK's and core's logs go nowhere: a test reads what the stubs recorded, and a failure throws. */
export function installQuietRuntime(): void {
  if (runtimeInstalled) return;
  Runtime.install({
    logger: { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error() {} } as never,
    telemetryOptions: { logging: { filter: 'ERROR', forward: {} } },
  });
  runtimeInstalled = true;
}

/**
 * The worker's converter without the failure converter's path: the SDK
 * require()s that file, and Jest's require cannot load an ES module. The
 * workflow bundle has it built in (as in production); only the stub
 * activities' own failures then carry their message in plain fields, which
 * every failure converter reads.
 */
export function inJestDataConverter(p: PayloadProtection = {}): { payloadCodecs: PayloadCodec[] } {
  return { payloadCodecs: workerDataConverter(p).payloadCodecs };
}

export class StubCluster {
  readonly calls: Call[] = [];
  private stubs: Stubs = {};
  private seq = 0;
  private readonly running: Promise<void>[] = [];

  private constructor(
    readonly env: TestWorkflowEnvironment,
    readonly client: Client,
    /** Nodes with a stub worker; any other node name has none (a node that is gone). */
    readonly nodes: string[],
    private readonly workers: Worker[],
    readonly taskQueue: string,
  ) {}

  /**
   * A dev server and workers that live for a test file: one workflow worker,
   * and one stub activity worker per node. Each test sets its own stubs
   * (run()); keeping the workers saves seconds per test.
   */
  static async start(nodes: string[]): Promise<StubCluster> {
    installQuietRuntime();
    const env = await TestWorkflowEnvironment.createLocal({
      server: {
        executable: { type: 'existing-path', path: TEMPORAL_CLI },
        ip: '127.0.0.1',
        searchAttributes: Object.values(SA),
      },
    });
    try {
      // The converter the workers and the CLI use; no payload key here (plaintext on loopback).
      const client = new Client({
        connection: env.connection,
        namespace: env.namespace ?? 'default',
        dataConverter: clientDataConverter({}),
      });
      const taskQueue = `wf-test-${randomBytes(3).toString('hex')}`;
      const common = { connection: env.nativeConnection, namespace: env.namespace ?? 'default' };
      const workers: Worker[] = [
        await Worker.create({
          ...common,
          taskQueue,
          workflowBundle: await workflowBundle(),
          dataConverter: inJestDataConverter(),
        }),
      ];
      const cluster = new StubCluster(env, client, nodes, workers, taskQueue);
      for (const node of nodes) {
        workers.push(
          await Worker.create({
            ...common,
            taskQueue: nodeTaskQueue(node),
            activities: cluster.stubActivities(node),
            dataConverter: inJestDataConverter(),
            // Cancellation reaches an activity with a heartbeat's answer: do not wait 24 s for one.
            maxHeartbeatThrottleInterval: '100ms',
            defaultHeartbeatThrottleInterval: '100ms',
          }),
        );
      }
      for (const w of workers) cluster.running.push(w.run());
      return cluster;
    } catch (err) {
      await env.teardown();
      throw err;
    }
  }

  async stop(): Promise<void> {
    for (const w of this.workers) if (w.getState() === 'RUNNING') w.shutdown();
    await Promise.allSettled(this.running);
    await this.env.teardown();
  }

  /** The calls of activity `name` (on `node`, if given), in order. */
  callsOf(name: ActivityName, node?: string): Call[] {
    return this.calls.filter((c) => c.activity === name && (node === undefined || c.node === node));
  }

  /** "node:activity" for each call (first attempts only unless `attempts`), in the order they started. */
  sequence(o: { attempts?: boolean } = {}): string[] {
    return this.calls.filter((c) => o.attempts || c.attempt === 1).map((c) => `${c.node}:${c.activity}`);
  }

  /**
   * Start a workflow with these stubs (an activity without a stub fails,
   * not retryable), run `during` against its handle, and settle with its
   * result or failure.
   */
  async run<R>(
    workflowType: string,
    input: unknown,
    stubs: Stubs,
    o: { during?: (h: WorkflowHandle) => Promise<void>; workflowId?: string; timeoutMs?: number } = {},
  ): Promise<{ ok: true; value: R; handle: WorkflowHandle } | { ok: false; error: Error; handle: WorkflowHandle }> {
    for (const node of Object.keys(stubs))
      if (!this.nodes.includes(node))
        throw new Error(`stubs for ${node}, which has no worker: start the cluster with it`);
    this.calls.length = 0;
    this.stubs = stubs;
    const handle = await this.client.workflow.start(workflowType, {
      taskQueue: this.taskQueue,
      workflowId: o.workflowId ?? `${workflowType}-${++this.seq}-${randomBytes(3).toString('hex')}`,
      args: [input],
    });
    await o.during?.(handle);
    const timeoutMs = o.timeoutMs ?? 60_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        handle.result().then(
          (value: R) => ({ ok: true as const, value, handle }),
          (error: Error) => ({ ok: false as const, error, handle }),
        ),
        new Promise<never>(
          (_, reject) =>
            (timer = setTimeout(
              () => reject(new Error(`${workflowType} did not finish within ${timeoutMs} ms`)),
              timeoutMs,
            )),
        ),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  private stubActivities(node: string): Record<string, Stub> {
    const out: Record<string, Stub> = {};
    for (const name of Object.keys(ACTIVITY_NAMES) as ActivityName[]) {
      out[name] = async (input: unknown) => {
        const call: Call = { node, activity: name, input, attempt: Context.current().info.attempt };
        this.calls.push(call);
        const stub = this.stubs[node]?.[name];
        // An activity the test did not expect fails loudly, and is not retried.
        if (!stub) return fail('UnexpectedActivity', `no stub for ${name} on ${node}`);
        return stub(input, call);
      };
    }
    return out;
  }
}
