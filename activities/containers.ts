/**
 * Read-only activities: what runs on this node, what a container is, and
 * whether a node can take a container.
 */
import { cpuOfJob, thisCpu } from '../core/cpu-features.js';
import { runcRootOf } from '../core/runc-roots.js';
import { readShimState } from '../core/shim-state.js';
import { CgroupFreezer } from '../core/cgroup-freezer.js';
import type { CpuRecord } from '../contract/cpu.js';
import { isNotFound } from '../core/containerd.js';
import { managerOf } from '../core/container-manager.js';
import type { ManagerName } from '../contract/managers.js';
import { nodeThroughputFile, planDrain, ThroughputEstimator } from '../core/drain-plan.js';
import { checkpointStoreOf, contractOptions, envListToMap, parseContract } from '../core/env-contract.js';
import { validateContainerId, validateNamespace } from '../contract/ids.js';
import { containerSummary, listArchContainers } from '../core/node-containers.js';
import { FailureType } from '../contract/failures.js';
import type { ContainerRef, ContainerSpec, ContainerSummary, DrainPlanSummary, Selector } from '../contract/types.js';
import { activityLog, containerd, fail, mapped, type NodeDeps } from './context.js';
import { specFromInfo } from './spec.js';

/** Fixed cost of one checkpoint activity (freeze, CRIU start, runc, fsync, Temporal round trips). */
const DRAIN_OVERHEAD_MS = 1500;
/** Kept free before a drain's deadline (estimate error, clock skew). */
const DRAIN_SAFETY_MARGIN_MS = 2000;

export function throughputEstimator(d: NodeDeps): ThroughputEstimator {
  return new ThroughputEstimator(nodeThroughputFile(d.stateDir, d.node), { logger: d.ctx.log });
}

export function containerActivities(d: NodeDeps) {
  /**
   * Paused containers from containerd's records: ARCH-enabled, no running
   * task, a published checkpoint. Read from containerd rather than runc so a
   * paused container whose stopped task was deleted is still found.
   */
  async function scanPaused(namespaces: string[] | undefined): Promise<ContainerSummary[]> {
    const base = containerd(d, 'default');
    const nss = namespaces ?? d.namespaces ?? (await base.ctr(['namespaces', 'ls', '-q'])).split('\n').filter(Boolean);
    const out: ContainerSummary[] = [];
    for (const ns of nss) {
      const cd = containerd(d, ns);
      const tasks = new Map((await cd.listTasks()).map((t) => [t.id, t]));
      for (const id of await cd.listContainers()) {
        const task = tasks.get(id);
        if (task?.status === 'RUNNING') continue;
        let spec: ContainerSpec | undefined;
        try {
          spec = specFromInfo(await cd.info(id), ns, contractOptions(d.ctx.settings));
        } catch {
          continue; // invalid ARCH_* settings: arch-runc runs it without ARCH
        }
        if (!spec) continue;
        const contract = parseContract(envListToMap(spec.env), contractOptions(d.ctx.settings));
        if (!contract.enabled) continue;
        const manager = managerOf(
          { namespace: ns, labels: spec.labels, annotations: spec.annotations },
          d.ctx.settings.managedNamespaces,
        );
        const store = checkpointStoreOf(contract, ns, id);
        const m = await store.readManifest().catch(() => null);
        const dir = await store.current().catch(() => null);
        if (!m || !dir) continue;
        out.push({
          namespace: ns,
          id,
          status: (task?.status ?? 'ABSENT').toLowerCase(),
          pid: task?.pid ?? 0,
          mode: spec.mode,
          manager,
          priority: spec.priority,
          checkpoint: { dir, createdAt: m.createdAt, sizeBytes: m.files.reduce((a, f) => a + f.size, 0) },
        });
      }
    }
    return out.sort(
      (a, b) => b.priority - a.priority || a.namespace.localeCompare(b.namespace) || a.id.localeCompare(b.id),
    );
  }

  /** Containers runc knows on this node, with the sizes the drain planner needs (core/node-containers). */
  async function list(namespaces?: string[], withSizes = true): Promise<ContainerSummary[]> {
    const found = await listArchContainers(d.ctx, { namespaces: namespaces ?? d.namespaces, withSizes });
    return found.map(containerSummary);
  }

  return {
    /** Liveness of the node's worker; the workflow's scheduleToStart makes "no worker" fail fast. */
    async ping(): Promise<{ node: string; pid: number; transferUrl: string }> {
      return { node: d.node, pid: process.pid, transferUrl: d.transfer.url };
    },

    /** withSizes false: no memory or layer sizes (the periodic-checkpoint workflow lists every few seconds). */
    async listContainers(input: { namespaces?: string[]; withSizes?: boolean } = {}): Promise<ContainerSummary[]> {
      return mapped(() => list(input.namespaces, input.withSizes ?? true));
    },

    /** The containers a selector picks, in drain order (priority first). */
    async selectContainers(input: {
      selector?: Selector;
      runningOnly?: boolean;
      checkpointedOnly?: boolean;
    }): Promise<ContainerSummary[]> {
      return mapped(async () => {
        const s = input.selector ?? {};
        if (s.namespace) validateNamespace(s.namespace, 'selector namespace');
        for (const id of s.ids ?? []) validateContainerId(id, 'selector id');
        const all = await list(s.namespace ? [s.namespace] : undefined);
        return all
          .filter((c) => !s.ids?.length || s.ids.includes(c.id))
          .filter((c) => !input.runningOnly || c.status === 'running')
          .filter((c) => !input.checkpointedOnly || (c.status !== 'running' && c.checkpoint !== undefined))
          .sort(
            (a, b) => b.priority - a.priority || a.namespace.localeCompare(b.namespace) || a.id.localeCompare(b.id),
          );
      });
    },

    /**
     * Paused containers: ARCH-enabled containerd containers without a running
     * task whose checkpoint is published. Read from containerd, not runc, so
     * a container whose stopped task was deleted is still found.
     */
    async selectPaused(input: { selector?: Selector }): Promise<ContainerSummary[]> {
      return mapped(async () => {
        const s = input.selector ?? {};
        if (s.namespace) validateNamespace(s.namespace, 'selector namespace');
        for (const id of s.ids ?? []) validateContainerId(id, 'selector id');
        const all = await scanPaused(s.namespace ? [s.namespace] : undefined);
        return all.filter((c) => !s.ids?.length || s.ids.includes(c.id));
      });
    },

    /** The spec to create the container again elsewhere. Unknown or non-ARCH containers fail non-retryably. */
    async describeContainer(
      ref: ContainerRef,
    ): Promise<{ spec: ContainerSpec; status: string; manager: ManagerName; cpu?: CpuRecord; ms: number }> {
      return mapped(async () => {
        const t0 = Date.now();
        validateNamespace(ref.namespace);
        validateContainerId(ref.id);
        const cd = containerd(d, ref.namespace);
        let info;
        try {
          info = await cd.info(ref.id);
        } catch (err) {
          if (isNotFound(err))
            throw fail(
              FailureType.containerNotFound,
              `${ref.namespace}/${ref.id} is not a container on node ${d.node}`,
              { node: d.node },
            );
          throw err;
        }
        const spec = specFromInfo(info, ref.namespace, contractOptions(d.ctx.settings));
        if (!spec)
          throw fail(
            FailureType.notArchEnabled,
            `${ref.namespace}/${ref.id} on node ${d.node} is not ARCH-enabled (no ARCH_ENABLE=1 in its environment)`,
          );
        const task = await cd.task(ref.id);
        const manager = managerOf(
          { namespace: ref.namespace, labels: info.labels, annotations: info.spec.annotations },
          d.ctx.settings.managedNamespaces,
        );
        // The CPU its processes started on (its checkpoint will record it): a move checks the target's against it.
        const cpu = await jobCpu(d.ctx.settings, ref, task?.pid).catch(() => thisCpu());
        return { spec, status: task?.status ?? 'ABSENT', manager, ...(cpu ? { cpu } : {}), ms: Date.now() - t0 };
      });
    },

    /**
     * Can this node take the container? It must not run a container of that
     * id already. Also lists the node's images in that namespace, so the
     * caller can run this in parallel with describing the source and still
     * know whether the image must be shipped.
     */
    async checkTarget(input: {
      ref: ContainerRef;
    }): Promise<{ node: string; images: string[]; staleContainer: boolean; cpu?: CpuRecord; ms: number }> {
      return mapped(async () => {
        const t0 = Date.now();
        validateNamespace(input.ref.namespace);
        validateContainerId(input.ref.id);
        const cd = containerd(d, input.ref.namespace);
        const [tasks, containers, images] = await Promise.all([cd.listTasks(), cd.listContainers(), cd.listImages()]);
        if (tasks.find((t) => t.id === input.ref.id)?.status === 'RUNNING') {
          throw fail(
            FailureType.input,
            `${input.ref.namespace}/${input.ref.id} already runs on node ${d.node}: refusing to start a second copy. Fix: pick another target or remove it there`,
          );
        }
        const staleContainer = containers.includes(input.ref.id);
        if (staleContainer) {
          // A stopped leftover of this very container (earlier move, pause) is
          // replaced by the restore; anything else of that name is not ours.
          let arch = false;
          try {
            arch =
              specFromInfo(await cd.info(input.ref.id), input.ref.namespace, contractOptions(d.ctx.settings)) !==
              undefined;
          } catch {
            arch = false;
          }
          if (!arch) {
            throw fail(
              FailureType.input,
              `node ${d.node} already has a container ${input.ref.namespace}/${input.ref.id} that is not ARCH-enabled; refusing to replace it. Fix: remove or rename it there, or pick another target`,
            );
          }
        }
        return { node: d.node, images, staleContainer, cpu: thisCpu(), ms: Date.now() - t0 };
      });
    },

    /**
     * Order and parallelism for draining this node before `deadline`
     * (core/drain-plan.ts), and which containers are not expected to make
     * it: logged here, on the node, before any checkpoint starts.
     */
    async planDrain(input: { deadline: string; maxParallel: number; selector?: Selector }): Promise<DrainPlanSummary> {
      return mapped(async () => {
        const s = input.selector ?? {};
        const running = (await list(s.namespace ? [s.namespace] : undefined)).filter(
          (c) => c.status === 'running' && (!s.ids?.length || s.ids.includes(c.id)),
        );
        const est = throughputEstimator(d);
        const now = new Date();
        const plan = planDrain({
          now,
          deadline: new Date(input.deadline),
          containers: running.map((c) => ({
            namespace: c.namespace,
            id: c.id,
            priority: c.priority,
            rssBytes: c.rssBytes ?? 0,
            upperDirBytes: c.upperDirBytes ?? 0,
          })),
          throughputBytesPerSec: est.bytesPerSec,
          perContainerOverheadMs: DRAIN_OVERHEAD_MS,
          maxParallel: Math.max(1, input.maxParallel),
          safetyMarginMs: DRAIN_SAFETY_MARGIN_MS,
        });
        const fits = new Set(plan.expectedToFit.map((p) => `${p.namespace}/${p.id}`));
        const notExpectedToFit = plan.notExpectedToFit.map((p) => `${p.namespace}/${p.id}`);
        const log = activityLog(d, { phase: 'plan' });
        const fields = {
          containers: running.length,
          parallelism: plan.parallelism,
          fit: plan.expectedToFit.length,
          budgetMs: plan.budgetMs,
          throughputBytesPerSec: Math.round(est.bytesPerSec),
          throughputSamples: est.sampleCount,
          deadline: input.deadline,
        };
        if (notExpectedToFit.length) {
          log.warn(
            { ...fields, notExpectedToFit },
            `drain planned: not expected to finish before the deadline: ${notExpectedToFit.join(', ')} (tried last, only if time is left)`,
          );
        } else {
          log.info(fields, 'drain planned: every container expected to finish before the deadline');
        }
        return {
          order: plan.order.map((p) => ({
            namespace: p.namespace,
            id: p.id,
            priority: p.priority,
            bytes: p.bytes,
            estimatedMs: p.estimatedMs,
            expectedFinishMs: p.expectedFinishMs,
            expectedToFit: fits.has(`${p.namespace}/${p.id}`),
          })),
          parallelism: plan.parallelism,
          expectedToFit: plan.expectedToFit.length,
          notExpectedToFit,
          budgetMs: plan.budgetMs,
          plannedAt: now.toISOString(),
          throughputBytesPerSec: est.bytesPerSec,
          safetyMarginMs: DRAIN_SAFETY_MARGIN_MS,
        };
      });
    },
  };
}

/**
 * The CPU a container's processes chose their instructions on (cpuOfJob):
 * its cgroup's processes against the restore its shim recorded; this
 * node's CPU where they cannot be listed.
 */
async function jobCpu(settings: Parameters<typeof runcRootOf>[0], ref: ContainerRef, pid: number | undefined) {
  if (!pid) return thisCpu();
  const [root, group] = await Promise.all([
    runcRootOf(settings, ref.namespace, ref.id),
    CgroupFreezer.of(pid).catch(() => undefined),
  ]);
  const pids = group ? await group.pids().catch(() => [pid]) : [pid];
  const restored = (await readShimState(root, ref.id).catch(() => undefined))?.restoredCpu;
  return cpuOfJob(pids, restored);
}
