/**
 * Checkpoint activities (source side): dump a container into its checkpoint
 * store, and offer a published checkpoint (or the container's image) to
 * other nodes over the transfer server.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { checkpointContainer as coreCheckpoint } from '../core/checkpoint.js';
import { isNotFound } from '../core/containerd.js';
import { checkpointStoreOf, contractOptions, envListToMap, parseContract } from '../core/env-contract.js';
import type { Manifest } from '../core/manifest.js';
import { CheckpointStore } from '../core/store.js';
import { runcRootOf } from '../core/runc-roots.js';
import { FailureType } from '../contract/failures.js';
import { manifestDigest, offerTtlFor } from '../core/transfer.js';
import type { CheckpointInfo, ContainerRef, StorageMode, TransferOffer } from '../contract/types.js';
import { activityLog, containerd, fail, mapped, withHeartbeat, type NodeDeps } from './context.js';
import { throughputEstimator } from './containers.js';

export interface CheckpointInput {
  ref: ContainerRef;
  /** Keep the processes running after the dump (a safety copy, not a move). */
  leaveRunning?: boolean;
  /**
   * A retry may find the container already stopped by an earlier attempt
   * whose result was lost: a checkpoint published at or after this time is
   * then that attempt's result.
   */
  notBefore?: string;
  /** Also offer the checkpoint for transfer (node-local storage). */
  offer?: boolean;
}

export function checkpointActivities(d: NodeDeps) {
  async function containerDirOf(
    ref: ContainerRef,
  ): Promise<{ containerDir: string; mode: StorageMode; store: CheckpointStore }> {
    const info = await containerd(d, ref.namespace).info(ref.id);
    const contract = parseContract(envListToMap(info.spec.process?.env), contractOptions(d.ctx.settings));
    if (!contract.enabled) throw fail(FailureType.notArchEnabled, `${ref.namespace}/${ref.id} is not ARCH-enabled`);
    const store = checkpointStoreOf(contract, ref.namespace, ref.id);
    return { containerDir: store.containerDir, mode: contract.mode, store };
  }

  function describePublished(
    dir: string,
    containerDir: string,
    mode: StorageMode,
    ref: ContainerRef,
    manifest: Manifest,
    extra: Pick<CheckpointInfo, 'timings' | 'totalMs' | 'reused' | 'freezeMs'>,
  ): Promise<CheckpointInfo> {
    return manifestDigest(dir).then((manifestSha256) => ({
      ...ref,
      node: d.node,
      dir,
      containerDir,
      mode,
      manifestSha256,
      createdAt: manifest.createdAt,
      sizeBytes: manifest.files.reduce((a, f) => a + f.size, 0),
      ...(manifest.cpu ? { cpu: manifest.cpu } : {}),
      ...extra,
    }));
  }

  async function offer(dir: string, sha: string): Promise<TransferOffer> {
    return d.transfer.offerCheckpoint(dir, sha, (bytes) => offerTtlFor(d.offerTtlMs, bytes));
  }

  return {
    async checkpointContainer(input: CheckpointInput): Promise<CheckpointInfo & { offer?: TransferOffer }> {
      const { ref } = input;
      const log = activityLog(d, { namespace: ref.namespace, container: ref.id, phase: 'checkpoint' });
      return withHeartbeat({ phase: 'checkpoint' }, async (signal, report) => {
        const cd = containerd(d, ref.namespace);
        let task;
        try {
          task = await cd.task(ref.id);
          if (!task) await cd.info(ref.id); // distinguishes "no task" from "no container"
        } catch (err) {
          if (isNotFound(err))
            throw fail(
              FailureType.containerNotFound,
              `${ref.namespace}/${ref.id} is not a container on node ${d.node}`,
            );
          throw err;
        }
        const { containerDir, mode, store: guarded } = await containerDirOf(ref);
        let info: CheckpointInfo;
        if (task && (task.status === 'RUNNING' || task.status === 'PAUSED')) {
          const r = await coreCheckpoint(d.ctx, {
            namespace: ref.namespace,
            id: ref.id,
            runcRoot: await runcRootOf(d.ctx.settings, ref.namespace, ref.id),
            leaveRunning: input.leaveRunning,
            signal,
            onProgress: (p) => report({ ...p }),
          });
          throughputEstimator(d).observe(r.sizeBytes, r.timings.dump ?? r.totalMs);
          info = await describePublished(r.dir, r.containerDir, mode, ref, r.manifest, {
            timings: r.timings,
            totalMs: r.totalMs,
            reused: false,
            ...(r.freezeMs !== undefined ? { freezeMs: r.freezeMs } : {}),
          });
        } else {
          // Not running: an earlier attempt may have done the work already.
          const store = guarded;
          const dir = await store.current();
          const manifest = dir ? await store.readManifest() : null;
          if (!dir || !manifest || (input.notBefore && manifest.createdAt < input.notBefore)) {
            throw fail(
              FailureType.containerNotRunning,
              `${ref.namespace}/${ref.id} on node ${d.node} is ${task?.status ?? 'not started'} and has no checkpoint from this operation: nothing to checkpoint`,
            );
          }
          log.info({ dir }, 'container already checkpointed by an earlier attempt; reusing it');
          info = await describePublished(dir, containerDir, mode, ref, manifest, {
            timings: {},
            totalMs: 0,
            reused: true,
          });
        }
        return input.offer ? { ...info, offer: await offer(info.dir, info.manifestSha256) } : info;
      });
    },

    /** Offer an already published checkpoint again (the previous offer expired or the worker restarted). */
    async offerCheckpoint(input: { ref: ContainerRef; dir: string; manifestSha256: string }): Promise<TransferOffer> {
      return mapped(() => offer(input.dir, input.manifestSha256));
    },

    /** Export the image to a file and offer it, for a target that does not have it. */
    async offerImage(input: { namespace: string; image: string }): Promise<TransferOffer & { ms: number }> {
      return withHeartbeat({ phase: 'image-export' }, async () => {
        const t0 = Date.now();
        const dir = path.join(d.stateDir, 'image-exports');
        await fsp.mkdir(dir, { recursive: true });
        const file = path.join(dir, `${randomBytes(6).toString('hex')}.tar`);
        await containerd(d, input.namespace).ctr(['images', 'export', file, input.image], 600_000);
        const { size } = await fsp.stat(file);
        return {
          ...(await d.transfer.offerFile(
            file,
            offerTtlFor(d.offerTtlMs, size),
            () => void fsp.rm(file, { force: true }),
          )),
          ms: Date.now() - t0,
        };
      });
    },

    /** Forget an offer (the transfer is done or abandoned). */
    async withdrawOffer(input: { token: string }): Promise<boolean> {
      return d.transfer.withdraw(input.token);
    },
  };
}
