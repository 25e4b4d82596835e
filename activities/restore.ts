/**
 * Target-side activities: receive a checkpoint, make sure the image is
 * there, create the container through containerd with arch-runc (which
 * restores it), prove it runs restored; and the source-side clean-up.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Containerd } from '../core/containerd.js';
import { checkpointStoreOf, contractOptions, envListToMap, parseContract } from '../core/env-contract.js';
import { errorMessage } from '../contract/errors.js';
import { Runc } from '../core/runc.js';
import { readShimState } from '../core/shim-state.js';
import { CheckpointStore } from '../core/store.js';
import type { S3CheckpointStore } from '../core/s3-store.js';
import { reachableEverywhere } from '../contract/types.js';
import { FailureType } from '../contract/failures.js';
import { fetchCheckpoint, fetchFile, manifestDigest, type Offer } from '../core/transfer.js';
import type {
  ContainerRef,
  ContainerSpec,
  ExpectedCheckpoint,
  ReceiveResult,
  RestoreResult,
  TransferOffer,
} from '../contract/types.js';
import { activityLog, containerd, fail, mapped, withHeartbeat, type NodeDeps } from './context.js';
import { runOptionsFor } from './spec.js';
import { trustOf } from '../core/trust.js';

function storeFor(d: NodeDeps, spec: Pick<ContainerSpec, 'env' | 'namespace' | 'id'>): CheckpointStore {
  const contract = parseContract(envListToMap(spec.env), contractOptions(d.ctx.settings));
  if (!contract.enabled) throw fail(FailureType.notArchEnabled, `${spec.namespace}/${spec.id} is not ARCH-enabled`);
  return checkpointStoreOf(contract, spec.namespace, spec.id);
}

/** Does this node's store hold exactly the expected checkpoint? Returns its dir. */
async function expectedPresent(store: CheckpointStore, want: ExpectedCheckpoint): Promise<string | undefined> {
  const dir = await store.current().catch(() => null);
  if (!dir) return undefined;
  if ((await manifestDigest(dir).catch(() => '')) === want.manifestSha256) return dir;
  const m = await store.readManifest().catch(() => null);
  return m && m.node === want.node && m.createdAt === want.createdAt ? dir : undefined;
}

/**
 * Proof that arch-runc restored the container rather than starting it fresh
 * (it falls back to a fresh start when a restore fails, so "running" alone
 * proves nothing): the shim records the checkpoint it restored from.
 */
export async function restoreEvidence(runcRoot: string, _runc: Runc, id: string): Promise<string | undefined> {
  return (await readShimState(runcRoot, id))?.restoredFrom;
}

/** Copy CRIU's restore log out of the bundle before the failed copy (and its bundle) goes. */
async function keepRestoreLog(runc: Runc, spec: ContainerSpec, stateDir: string): Promise<string | undefined> {
  try {
    const { bundle } = await runc.state(spec.id);
    const src = path.join(bundle, 'arch-restore', 'restore.log');
    await fsp.access(src);
    const dest = path.join(
      stateDir,
      'failed-restores',
      `${spec.namespace}-${spec.id}-${new Date().toISOString().replace(/[:.]/g, '-')}.log`,
    );
    await fsp.mkdir(path.dirname(dest), { recursive: true });
    await fsp.copyFile(src, dest);
    return dest;
  } catch {
    return undefined;
  }
}

export function restoreActivities(d: NodeDeps) {
  const runcRootOf = (ns: string) => path.join(d.ctx.settings.runcRootBase, ns);

  async function importFromOffer(cd: Containerd, offer: Offer): Promise<void> {
    const dir = path.join(d.stateDir, 'image-imports');
    await fsp.mkdir(dir, { recursive: true });
    const file = path.join(dir, `${randomBytes(6).toString('hex')}.tar`);
    try {
      await fetchFile(offer, file, { ca: d.transferCa });
      await cd.importImage(file);
    } finally {
      await fsp.rm(file, { force: true });
    }
  }

  return {
    /**
     * Bring the source's checkpoint into this node's store: streamed and
     * verified (local storage), or found already there (shared storage).
     */
    async receiveCheckpoint(input: {
      spec: ContainerSpec;
      expected: ExpectedCheckpoint;
      offer?: TransferOffer;
    }): Promise<ReceiveResult> {
      const { spec } = input;
      const log = activityLog(d, { namespace: spec.namespace, container: spec.id, phase: 'transfer' });
      return withHeartbeat({ phase: 'transfer' }, async (signal, report) => {
        const t0 = Date.now();
        const store = storeFor(d, spec);
        const present = await expectedPresent(store, input.expected);
        if (present) {
          log.info({ dir: present }, 'checkpoint already on this node (shared storage or earlier attempt)');
          return { kind: 'present', dir: present, bytes: 0, files: 0, ms: Date.now() - t0 };
        }
        if (!input.offer) {
          throw fail(
            FailureType.sharedNotVisible,
            `node ${d.node} does not see the checkpoint of ${spec.namespace}/${spec.id} in ${store.containerDir}, and nothing was offered for transfer. Fix: mount the shared filesystem (ARCH_SHAREDFS_HOST_PATH) at the same path on every node`,
          );
        }
        const r = await fetchCheckpoint({
          offer: input.offer,
          manifestSha256: input.expected.manifestSha256,
          store,
          fsync: d.ctx.settings.fsync,
          ca: d.transferCa,
          trust: trustOf(d.ctx.settings),
          settings: d.ctx.settings,
          signal,
          onProgress: (p) =>
            report({ phase: 'transfer', bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, files: p.files }),
        });
        log.info({ kind: r.kind, dir: r.dir, bytes: r.bytes, files: r.files, durationMs: r.ms }, 'checkpoint received');
        return {
          kind: r.kind,
          dir: r.dir,
          bytes: r.kind === 'copied' ? r.bytes : 0,
          files: r.files,
          ms: Date.now() - t0,
        };
      });
    },

    /** Import the image if missing: from an offer of the source node, else fail clearly. */
    async ensureImage(input: {
      namespace: string;
      image: string;
      offer?: TransferOffer;
    }): Promise<{ imported: boolean; ms: number }> {
      return withHeartbeat({ phase: 'image' }, async () => {
        const t0 = Date.now();
        const cd = containerd(d, input.namespace);
        if (await cd.hasImage(input.image)) return { imported: false, ms: Date.now() - t0 };
        if (!input.offer) throw fail(FailureType.imageMissing, `node ${d.node} does not have image ${input.image}`);
        await importFromOffer(cd, input.offer);
        if (!(await cd.hasImage(input.image)))
          throw fail(
            FailureType.imageMissing,
            `importing the source's export did not provide ${input.image} on node ${d.node}`,
          );
        return { imported: true, ms: Date.now() - t0 };
      });
    },

    /**
     * Create the container here through arch-runc so it restores from the
     * expected checkpoint; verify it runs restored and stays up. Idempotent:
     * a retry finds the restored container running and reports it. A fresh
     * start (arch-runc's fallback) is removed again and fails the attempt, so
     * there is never a second, unrestored copy.
     */
    async restoreContainer(input: { spec: ContainerSpec; expected?: ExpectedCheckpoint }): Promise<RestoreResult> {
      const { spec } = input;
      const log = activityLog(d, { namespace: spec.namespace, container: spec.id, phase: 'restore' });
      return withHeartbeat({ phase: 'restore' }, async (signal, report) => {
        const t0 = Date.now();
        const timings: Record<string, number> = {};
        const cd = containerd(d, spec.namespace);
        const runcRoot = runcRootOf(spec.namespace);
        const runc = new Runc(d.ctx.settings, runcRoot);
        const base = { namespace: spec.namespace, id: spec.id, node: d.node };

        const existing = await cd.task(spec.id);
        if (existing?.status === 'RUNNING') {
          const evidence = await restoreEvidence(runcRoot, runc, spec.id);
          if (evidence) {
            log.info({ pid: existing.pid, restoredFrom: evidence }, 'already restored by an earlier attempt');
            return {
              ...base,
              pid: existing.pid,
              restoredFrom: evidence,
              alreadyRunning: true,
              timings,
              ms: Date.now() - t0,
            };
          }
        }
        let t = Date.now();
        if (existing || (await cd.listContainers()).includes(spec.id)) {
          // A half-created or freshly started leftover of an earlier attempt (checkTarget
          // refused to start if a container of this id was running before we came).
          log.warn({ status: existing?.status ?? 'no task' }, 'removing leftover container before restoring');
          await cd.removeContainer(spec.id);
        }
        timings.cleanup = Date.now() - t;

        const store = storeFor(d, spec);
        // Without an expected checkpoint (resume after pause) the current one is it.
        const dir = input.expected
          ? await expectedPresent(store, input.expected)
          : await store.current().catch(() => null);
        if (!dir && reachableEverywhere(spec.mode)) {
          throw fail(
            FailureType.sharedNotVisible,
            spec.mode === 's3'
              ? `node ${d.node} does not see the checkpoint of ${spec.namespace}/${spec.id} in ${(store as S3CheckpointStore).url}. Fix: give every node the same ARCH_ALLOWED_BUCKETS entry and AWS_* settings (/etc/arch/arch.env)`
              : `node ${d.node} does not see the checkpoint of ${spec.namespace}/${spec.id} in ${store.containerDir}. Fix: mount the shared filesystem (ARCH_SHAREDFS_HOST_PATH) at the same path on every node`,
          );
        }
        if (!dir) {
          throw fail(
            FailureType.checkpointUnusable,
            `node ${d.node} has no copy of the ${input.expected ? 'expected ' : ''}checkpoint of ${spec.namespace}/${spec.id} in ${store.containerDir}`,
          );
        }
        if (!(await cd.hasImage(spec.image)))
          throw fail(FailureType.imageMissing, `node ${d.node} does not have image ${spec.image}`);
        signal.throwIfAborted();

        t = Date.now();
        report({ phase: 'restore' });
        if (d.logDir) await fsp.mkdir(path.join(d.logDir, spec.namespace), { recursive: true });
        await cd.run(
          runOptionsFor(spec, { archRunc: d.archRunc, runcRoot: d.ctx.settings.runcRootBase, logDir: d.logDir }),
        );
        timings.create = Date.now() - t;

        t = Date.now();
        report({ phase: 'verify' });
        const task = await cd.task(spec.id);
        const evidence = task?.status === 'RUNNING' ? await restoreEvidence(runcRoot, runc, spec.id) : undefined;
        if (!task || task.status !== 'RUNNING' || !evidence) {
          const failure = (await readShimState(runcRoot, spec.id).catch(() => undefined))?.lastRestoreFailure;
          const why =
            !task || task.status !== 'RUNNING'
              ? `is ${task?.status ?? 'gone'} right after create`
              : failure
                ? `was started fresh by arch-runc: its restore failed (${failure.reason}): ${failure.message}`
                : 'was started fresh by arch-runc (its restore failed; see the node log)';
          const kept = await keepRestoreLog(runc, spec, d.stateDir);
          log.error({ status: task?.status, restoreLog: kept }, `restore failed: container ${why}; removing it`);
          await cd
            .removeContainer(spec.id)
            .catch((e: unknown) => log.error({ err: errorMessage(e) }, 'could not remove the failed copy'));
          throw fail(
            FailureType.restoreFellBack,
            `restore of ${spec.namespace}/${spec.id} on node ${d.node} failed: the container ${why}${kept ? `; CRIU's log is kept in ${kept}` : ''}`,
          );
        }
        // Stays up: CRIU restores can die right after resuming (e.g. a missing file).
        await sleep(d.verifyStableMs, undefined, { signal });
        const after = await cd.task(spec.id);
        if (!after || after.status !== 'RUNNING' || after.pid !== task.pid) {
          await cd.removeContainer(spec.id).catch(() => undefined);
          throw fail(
            FailureType.restoreFellBack,
            `restored ${spec.namespace}/${spec.id} on node ${d.node} stopped within ${d.verifyStableMs} ms (status ${after?.status ?? 'gone'})`,
          );
        }
        timings.verify = Date.now() - t;
        log.info(
          { pid: task.pid, restoredFrom: evidence, timings, durationMs: Date.now() - t0 },
          'container restored and running',
        );
        return {
          ...base,
          pid: task.pid,
          restoredFrom: evidence,
          alreadyRunning: false,
          timings,
          ms: Date.now() - t0,
        };
      });
    },

    /** Remove the container from this node's containerd (its checkpoint stays). Idempotent. */
    async removeContainer(input: { ref: ContainerRef }): Promise<{ removed: boolean }> {
      return mapped(async () => {
        const cd = containerd(d, input.ref.namespace);
        const had = (await cd.listContainers()).includes(input.ref.id);
        if (had) await cd.removeContainer(input.ref.id);
        activityLog(d, { namespace: input.ref.namespace, container: input.ref.id, phase: 'cleanup' }).info(
          { had },
          'container removed from containerd',
        );
        return { removed: had };
      });
    },

    /**
     * After a successful move: the stopped container goes from this node's
     * containerd, the offer is withdrawn, and a checkpoint copy that no
     * longer belongs here (it was copied to the target) is deleted.
     */
    async cleanupSource(input: {
      spec: ContainerSpec;
      removeCheckpoint: boolean;
      expected?: ExpectedCheckpoint;
      offerToken?: string;
    }): Promise<{ removedContainer: boolean; removedCheckpoint: boolean; ms: number }> {
      return mapped(async () => {
        const t0 = Date.now();
        const { spec } = input;
        const log = activityLog(d, { namespace: spec.namespace, container: spec.id, phase: 'cleanup' });
        if (input.offerToken) d.transfer.withdraw(input.offerToken);
        const cd = containerd(d, spec.namespace);
        const had = (await cd.listContainers()).includes(spec.id);
        if (had) {
          const task = await cd.task(spec.id);
          if (task?.status === 'RUNNING') {
            // Never remove a live container here: whatever runs it now is not ours to stop.
            throw fail(
              FailureType.input,
              `${spec.namespace}/${spec.id} is running on node ${d.node} again; not cleaning it up`,
            );
          }
          await cd.removeContainer(spec.id);
        }
        let removedCheckpoint = false;
        const store = storeFor(d, spec);
        if (input.removeCheckpoint && input.expected && (await expectedPresent(store, input.expected))) {
          // Only what ARCH made for this container on this node (its ownership record says so).
          const r = await store.remove({ namespace: spec.namespace, id: spec.id });
          removedCheckpoint = r.removed;
          if (!r.removed) log.warn({ why: r.why }, 'source checkpoint kept');
        }
        log.info({ removedContainer: had, removedCheckpoint }, 'source cleaned up');
        return { removedContainer: had, removedCheckpoint, ms: Date.now() - t0 };
      });
    },
  };
}
