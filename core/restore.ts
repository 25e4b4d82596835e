import fsp from 'node:fs/promises';
import path from 'node:path';
import type { NodeContext } from './context.js';
import { checkpointDirOf, type EnabledContract } from './env-contract.js';
import { CheckpointUnusableError, errorMessage } from './errors.js';
import type { Manifest } from './manifest.js';
import { rootfsOf, type OciSpec } from './oci-spec.js';
import { applyDiff, findUpperDir } from './rootfs-diff.js';
import type { Runc } from './runc.js';
import { CheckpointStore } from './store.js';

/**
 * Restore a container in place of its create: the bundle, pid file, console
 * socket and stdio are those containerd gave the create call. Verified
 * manifest first, then the writable layer, then the processes.
 * Throws CheckpointUnusableError (or the runc error); the caller then starts
 * the container fresh. Returns undefined when there is no checkpoint at all.
 */
export interface RestoreRequest {
  namespace: string;
  id: string;
  bundle: string;
  spec: OciSpec;
  contract: EnabledContract;
  runc: Runc;
  pidFile?: string;
  consoleSocket?: string;
}

export interface RestoreResult {
  checkpointDir: string;
  manifest: Manifest;
  timings: Record<string, number>;
}

export async function restoreFromCheckpoint(ctx: NodeContext, req: RestoreRequest): Promise<RestoreResult | undefined> {
  const timings: Record<string, number> = {};
  const store = new CheckpointStore(checkpointDirOf(req.contract, req.namespace, req.id));
  if (!(await store.current())) return undefined;
  let t = Date.now();
  // The shim (the only caller) has nothing else to do meanwhile: hash on its own thread too.
  const { dir, manifest } = await store.verifyCurrent({ inline: true });
  if (manifest.namespace !== req.namespace || manifest.containerId !== req.id) {
    throw new CheckpointUnusableError('identity', `checkpoint is for ${manifest.namespace}/${manifest.containerId}, not ${req.namespace}/${req.id}`);
  }
  timings.verify = Date.now() - t;

  t = Date.now();
  const upper = await findUpperDir(rootfsOf(req.bundle, req.spec));
  if (upper) {
    await assertEmptyLayer(upper);
    try {
      await applyDiff(dir, upper);
    } catch (err) {
      await clearDir(upper);
      throw err;
    }
  } else if (manifest.rootfs.files + manifest.rootfs.deletions > 0) {
    throw new CheckpointUnusableError('rootfs', 'the checkpoint has writable-layer changes but the new rootfs is not an overlay mount');
  }
  timings.rootfs = Date.now() - t;

  t = Date.now();
  // CRIU reads the images in place (it follows no symlinks for pagemaps, so
  // no link farm) and writes its logs and stats to the work dir, not there.
  const work = path.join(req.bundle, 'arch-restore');
  await fsp.rm(work, { recursive: true, force: true });
  await fsp.mkdir(work, { recursive: true });
  const images = path.join(dir, 'criu');
  try {
    await req.runc.restore(req.id, {
      bundle: req.bundle,
      imagePath: images,
      workPath: work,
      pidFile: req.pidFile,
      consoleSocket: req.consoleSocket,
    });
  } catch (err) {
    if (upper) await clearDir(upper);
    // A failed restore can leave runc state behind; the fresh create needs the id free.
    await req.runc.delete(req.id, true).catch(() => undefined);
    const log = await fsp.readFile(path.join(work, 'restore.log'), 'utf8').catch(() => '');
    const tail = log.split('\n').filter((l) => /Error|error/.test(l)).slice(-3).join(' | ');
    throw new Error(`runc restore failed: ${errorMessage(err).split('\n').slice(-3).join(' ')}${tail ? ` (criu: ${tail})` : ''}`);
  }
  timings.restore = Date.now() - t;
  return { checkpointDir: dir, manifest, timings };
}

async function assertEmptyLayer(upper: string): Promise<void> {
  const entries = await fsp.readdir(upper);
  if (entries.length > 0) {
    // Not ours to overwrite: the layer already holds this container's writes.
    throw new CheckpointUnusableError('rootfs', `the container's writable layer is not empty (${entries.slice(0, 3).join(', ')})`);
  }
}

async function clearDir(dir: string): Promise<void> {
  for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
    await fsp.rm(path.join(dir, name), { recursive: true, force: true });
  }
}
