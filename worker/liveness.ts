/**
 * The node's side of liveness: on every beat the worker reports its node to
 * the cluster workflow (workflows/cluster.ts), starting it if nobody has.
 * The report carries what a recovery needs if this is the last one: every
 * ARCH container with its spec, where its checkpoint lives and how old it
 * is, and the node's free memory.
 */
import { Client, Connection } from '@temporalio/client';
import { specFromInfo } from '../activities/spec.js';
import { Containerd } from '../core/containerd.js';
import type { NodeContext } from '../core/context.js';
import { checkpointStoreOf, contractOptions } from '../core/env-contract.js';
import type { LivenessSettings } from '../core/liveness-settings.js';
import { listArchContainers, type ArchContainer } from '../core/node-containers.js';
import { leaseOf, ownNodeNames, staleHere } from '../core/lease.js';
import { trustOf } from '../core/trust.js';
import { fence, stopStale, type Listed } from './fence.js';
import { errorMessage } from '../contract/errors.js';
import type { NodeReport, ProtectedContainer, StaleStop } from '../contract/liveness.js';
import { WORKFLOW_TASK_QUEUE, workflowIds } from '../contract/names.js';
import { attributePairs } from '../contract/search-attributes.js';
import type { ContainerSpec } from '../contract/types.js';
import { connectionOptions, type TemporalTarget } from '../temporal/connection.js';
import { clientDataConverter, type PayloadProtection } from '../temporal/data-converter.js';
import { clusterLiveness, nodeSeenSignal } from '../workflows/cluster.js';
import { freeMemBytes } from '../core/free-memory.js';

export interface LivenessOptions {
  node: string;
  ctx: NodeContext;
  liveness: LivenessSettings;
  target: TemporalTarget;
  payloads: PayloadProtection;
  containerdAddress: string;
  ctr?: string;
  namespaces?: string[];
}

export interface LivenessLoop {
  /** Time of the last report Temporal accepted (epoch ms). */
  lastContactMs(): number;
  stop(): Promise<void>;
}

/** Specs from containerd, asked once per container incarnation (a `ctr` call each: not on every beat). */
export class SpecCache {
  private readonly specs = new Map<string, ContainerSpec | undefined>();
  constructor(private readonly o: LivenessOptions) {}

  async of(c: ArchContainer): Promise<ContainerSpec | undefined> {
    const key = `${c.namespace}/${c.id}/${c.pid}`;
    if (this.specs.has(key)) return this.specs.get(key);
    let spec: ContainerSpec | undefined;
    try {
      const cd = new Containerd({ address: this.o.containerdAddress, namespace: c.namespace, ctr: this.o.ctr });
      spec = specFromInfo(await cd.info(c.id), c.namespace, contractOptions(this.o.ctx.settings));
    } catch (err) {
      // Not containerd's (runc alone), or containerd is struggling: reported without a spec, so not recreated.
      this.o.ctx.log.debug(
        { namespace: c.namespace, container: c.id, err: errorMessage(err) },
        'no spec from containerd',
      );
    }
    this.specs.set(key, spec);
    return spec;
  }

  retain(live: Set<string>): void {
    for (const k of this.specs.keys()) if (!live.has(k)) this.specs.delete(k);
  }
}

export async function protectedContainers(o: LivenessOptions, specs: SpecCache): Promise<Listed[]> {
  const found = await listArchContainers(o.ctx, { namespaces: o.namespaces, withSizes: false });
  const out: Listed[] = [];
  const trust = trustOf(o.ctx.settings);
  for (const c of found) {
    const spec = await specs.of(c);
    const store = checkpointStoreOf(c.contract, c.namespace, c.id);
    const lease = await leaseOf(store, trust, o.ctx.log).catch(() => undefined);
    const report: ProtectedContainer = {
      namespace: c.namespace,
      id: c.id,
      status: c.status,
      mode: c.contract.mode,
      manager: c.manager,
      ...(spec ? { spec } : {}),
      checkpointDir: store.containerDir,
      ...(c.checkpoint ? { lastCheckpointAt: c.checkpoint.createdAt } : {}),
      ...(c.lastCheckpointFailure ? { lastCheckpointFailedAt: c.lastCheckpointFailure.at } : {}),
      ...(lease ? { generation: lease.generation } : {}),
    };
    out.push({ container: c, report, ...(lease ? { lease } : {}) });
  }
  specs.retain(new Set(found.map((c) => `${c.namespace}/${c.id}/${c.pid}`)));
  return out;
}

/** Report on every beat until stopped. Never throws: a missed beat is logged and counted. */
export function startLiveness(o: LivenessOptions): LivenessLoop {
  const log = o.ctx.log.child({ phase: 'liveness' });
  const specs = new SpecCache(o);
  let connection: Connection | undefined;
  let client: Client | undefined;
  let lastContact = Date.now();
  let failing = false;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();

  // The names this node's jobs may be recorded under: the worker's, and arch-runc's (its settings or the host name).
  const mine = new Set([o.node, ...ownNodeNames(o.ctx.settings)]);
  const staleStopped: StaleStop[] = [];
  let fenced: NodeReport['fenced'];
  let fencing: Promise<void> | undefined;
  /** Fenced since the last report Temporal took: not again until it takes one. */
  let fencedOff = false;
  let lastListed: Listed[] = [];

  const report = async (): Promise<NodeReport> => {
    const listed = await protectedContainers(o, specs);
    lastListed = listed;
    // A job that moved on while this node was cut off (or dead) must not go on here.
    const stale = listed.filter((l) => l.container.status === 'running' && staleHere(l.lease, mine));
    staleStopped.push(...(await stopStale(o.ctx, stale)));
    return {
      node: o.node,
      at: new Date().toISOString(),
      deadAfterMs: o.liveness.deadAfterMs,
      fenceAfterMs: o.liveness.fenceAfterMs,
      freeMemBytes: await freeMemBytes(),
      containers: listed.filter((l) => !stale.includes(l)).map((l) => l.report),
      ...(staleStopped.length ? { staleStopped: [...staleStopped] } : {}),
      ...(fenced ? { fenced } : {}),
    };
  };

  const send = async (r: NodeReport): Promise<void> => {
    if (!client) {
      connection = await Connection.connect({ ...connectionOptions(o.target), connectTimeout: o.liveness.beatMs });
      client = new Client({
        connection,
        namespace: o.target.namespace,
        dataConverter: clientDataConverter(o.payloads),
      });
    }
    const c = client;
    // A beat that hangs must not hold the next one back: bounded by one beat.
    await connection!.withDeadline(Date.now() + Math.max(1000, o.liveness.beatMs), () =>
      c.workflow.signalWithStart(clusterLiveness, {
        taskQueue: WORKFLOW_TASK_QUEUE,
        workflowId: workflowIds.cluster(),
        args: [{}],
        signal: nodeSeenSignal,
        signalArgs: [r],
        typedSearchAttributes: attributePairs({ operation: 'cluster', phase: 'watching' }),
      }),
    );
  };

  const beat = async (): Promise<void> => {
    let r: NodeReport;
    try {
      r = await report();
    } catch (err) {
      log.error({ err: errorMessage(err) }, "cannot list this node's containers for its liveness report");
      return;
    }
    // Temporal saw the report no earlier than this: counting from here, this node fences no later than it should.
    const sentAt = Date.now();
    try {
      await send(r);
      if (failing) log.info({ silentMs: Date.now() - lastContact }, 'Temporal reachable again');
      lastContact = sentAt;
      failing = false;
      fencedOff = false;
      // Delivered: the cluster knows them now.
      staleStopped.splice(0, r.staleStopped?.length ?? 0);
      if (r.fenced === fenced) fenced = undefined;
    } catch (err) {
      if (!failing)
        log.warn(
          { err: errorMessage(err), lastContact: new Date(lastContact).toISOString() },
          'liveness report not delivered',
        );
      failing = true;
    }
  };

  /**
   * Cut off for ARCH_FENCE_AFTER: stop the jobs before anyone may declare
   * this node dead. Watched on its own timer, so a report that hangs does
   * not delay it and the last checkpoint gets all the time there is.
   */
  const watchdog = setInterval(() => {
    if (stopped || fencedOff || Date.now() - lastContact < o.liveness.fenceAfterMs) return;
    fencedOff = true;
    fencing = fence(o.ctx, lastListed, lastContact + o.liveness.deadAfterMs)
      .then((f) => {
        if (f.stopped.length) fenced = f;
      })
      .catch((err: unknown) => log.error({ err: errorMessage(err) }, 'fencing failed'));
  }, 200);

  const loop = () => {
    if (stopped) return;
    running = beat().finally(() => {
      if (!stopped) timer = setTimeout(loop, o.liveness.beatMs);
    });
  };
  loop();
  log.info(
    { deadAfterMs: o.liveness.deadAfterMs, fenceAfterMs: o.liveness.fenceAfterMs, beatMs: o.liveness.beatMs },
    'reporting node liveness',
  );
  return {
    lastContactMs: () => lastContact,
    async stop() {
      stopped = true;
      clearInterval(watchdog);
      if (timer) clearTimeout(timer);
      await fencing?.catch(() => undefined);
      await running.catch(() => undefined);
      await connection?.close().catch(() => undefined);
    },
  };
}
