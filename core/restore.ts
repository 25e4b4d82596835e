import fsp from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CgroupFreezer } from './cgroup-freezer.js';
import { criuRunEnv, liftRestoreNetworkLock } from './criu-network-lock.js';
import type { NodeContext } from './context.js';
import { checkpointKeyOf, checkpointStoreOf, type EnabledContract } from './env-contract.js';
import { CheckpointUnusableError, errorMessage } from '../contract/errors.js';
import type { Foreground } from './foreground.js';
import { verifyCheckpointDirStaged, type Manifest } from './manifest.js';
import { rootfsOf, withResolvedBindSources, writeSpec, type OciSpec } from './oci-spec.js';
import { assertSameOwner, ownerOf } from './owner.js';
import { assertCpuCanRun, thisCpu } from './cpu-features.js';
import { assertSameTerminal } from './terminal-match.js';
import { crashLoopRefusal } from './restore-crashes.js';
import type { RestoreCrashes } from './restore-crash-record.js';
import { layerDifference } from './layer-match.js';
import { applyDiff, findOverlayDirs } from './rootfs-diff.js';
import { prepareRollBack, type RollBack, type RolledBack } from './work-files.js';
import { closedOf, prepareVolumeRollBacks } from './volume-files.js';
import { withCriuErrors } from './criu-log.js';
import { loopbackUp, ownsNewNetworkNamespace } from './restored-loopback.js';
import { freeListenerPorts, tcpListenPorts } from './time-wait.js';
import type { Runc } from './runc.js';
import { DirectBuffer } from './direct-append.js';
import {
  DIRECT_READ_BYTES,
  storeKeyLookup,
  makeScratch,
  openSealedFile,
  SEAL_CHUNK_BYTES,
  Unsealer,
  type OpenBuffers,
  type Scratch,
  type StoreKey,
} from './seal.js';
import { trustOf } from './trust.js';
import { assembleIfChunked } from './chunked-restore.js';
import { SealGate } from './seal-gate.js';
import { CRIU_DIR, DELETED_FILES, KEPT_FILES, PAGE_IMAGE_PATH, LAYER_ARCHIVE, volumeTar } from './checkpoint-layout.js';
import { removeDevShmFiles, restoreDevShm } from './dev-shm.js';
import { keepVolumeFiles, undoVolumeWrite, restoreVolume, type VolumeWrite } from './pod-volumes.js';
import { ConsoleRelay } from './console-relay.js';
import { restoreLimitCause } from './restore-limits.js';

/**
 * Restore a container in place of its create (or of a `runc run`, in the
 * foreground too): the bundle, pid file, console socket and stdio are those
 * containerd (or the caller) gave that call. Verified
 * manifest first, then the writable layer, then the processes (which only
 * run once their page images are verified too).
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
  /** As `runc run` without -d: runc stays in the foreground until the container exits (see `running`). */
  foreground?: boolean;
  /** Shared mode: the walked, held work directory, whose open files roll back with the checkpoint (core/work-files.ts). */
  workDir?: string;
  /** The job's restore crash count (from its lease): a checkpoint whose restores keep crashing is not restored (core/restore-crashes.ts). */
  crashLoop?: { crashes: RestoreCrashes; limit: number };
}

export interface RestoreResult {
  checkpointDir: string;
  manifest: Manifest;
  timings: Record<string, number>;
  /** A foreground restore: runc, waiting for the restored container (its exit code is the container's). */
  running?: Foreground;
  /**
   * Not in the foreground (a create, which a start follows): the cgroup
   * directory of the restored processes, held stopped until that start as
   * runc's create holds a new container's process. A job that would end
   * right after its restore then ends after the start containerd makes, not
   * before it (which containerd's shim reports as a failed start: "cannot
   * start a stopped process"). The caller lets them go on
   * (core/shim-state.ts startRestored). Absent when they run already.
   */
  heldIn?: string;
}

/** runc passes the file this annotation names to CRIU as its configuration (runc >= 1.0). */
const CRIU_CONFIG_ANNOTATION = 'org.criu.config';
/** What runc gives CRIU when the annotation is absent. */
const RUNC_DEFAULT_CRIU_CONFIG = '/etc/criu/runc.conf';
const BUNDLE_CRIU_CONFIG = 'arch-criu.conf';

export async function restoreFromCheckpoint(ctx: NodeContext, req: RestoreRequest): Promise<RestoreResult | undefined> {
  // A sealed checkpoint's plaintext lives in a tmpfs scratch dir only for the restore: removed however it ends.
  const held: Held = { stop: new AbortController() };
  try {
    return await restoreHolding(ctx, req, held);
  } finally {
    held.stop.abort(); // the page images are written already unless the restore failed
    await held.relay?.drop(); // the restored terminal, unless it was handed over
    await held.assembling?.catch(() => undefined);
    await held.unsealer?.close();
    await held.scratch
      ?.remove()
      .catch((err) =>
        ctx.log.error(
          { namespace: req.namespace, container: req.id, dir: held.scratch?.dir, err: errorMessage(err) },
          'could not remove the plaintext scratch dir of a sealed checkpoint',
        ),
      );
  }
}

/**
 * What a restore holds until it ends: the scratch dir, the decryption helper,
 * the page images being assembled, what stops the page images being
 * decrypted or assembled behind CRIU's gate (the restore will not go on), and
 * the restored terminal until it is handed over.
 */
interface Held {
  scratch?: Scratch;
  unsealer?: Unsealer;
  assembling?: Promise<void>;
  stop: AbortController;
  /** The restored terminal, held until the restore has worked. */
  relay?: ConsoleRelay;
}

async function restoreHolding(ctx: NodeContext, req: RestoreRequest, held: Held): Promise<RestoreResult | undefined> {
  const timings: Record<string, number> = {};
  const store = checkpointStoreOf(req.contract, req.namespace, req.id);
  const trust = trustOf(ctx.settings);
  const stored = await store.current(trust);
  if (!stored) return undefined;
  const looping = req.crashLoop && crashLoopRefusal(req.crashLoop.crashes, path.basename(stored), req.crashLoop.limit);
  if (looping) throw new CheckpointUnusableError('crash-loop', looping);
  let t = Date.now();
  // Verifying the page images is most of the verification time: it runs
  // while CRIU restores (started once runc is, so that it delays nothing
  // before), and the restored processes stay stopped until it has passed
  // (CRIU's leave-stopped). Everything CRIU parses (every other image), the
  // rootfs archive and the manifest are verified before CRIU starts. A spec
  // with its own CRIU configuration is left alone: then everything is
  // verified first.
  // ARCH's own file, named by an earlier restore of this bundle (runc run again in the same bundle), is not one.
  const criuConfigNamed = req.spec.annotations?.[CRIU_CONFIG_ANNOTATION];
  const ownCriuConfig = criuConfigNamed === undefined || criuConfigNamed === path.join(req.bundle, BUNDLE_CRIU_CONFIG);
  // Where CRIU can be held at its gate (our own CRIU configuration, the
  // gate script installed), the page images are decrypted (sealed) or
  // assembled (store format 2) while runc and CRIU start; else before runc starts.
  const gateScript = ownCriuConfig ? await SealGate.script() : undefined;
  // Store format 2: chunks assembled into a tmpfs scratch dir, read from there like any checkpoint directory.
  const assembled = await assembleIfChunked(stored, store, trust, ctx.settings, held, gateScript !== undefined);
  if (assembled) timings.assemble = Date.now() - t;
  const dir = assembled?.dir ?? stored;
  // Resolved while the checkpoint is verified (a probe of CRIU the first time after boot).
  // The job's TCP connections come back closed: it connects again (criuRunEnv says why).
  const criuAsked = criuRunEnv(ctx.settings, req.spec, undefined, { own: true });
  // Who this container is (pod namespace, image: containerd's record), asked while the checkpoint is verified.
  const ownerAsked = ownerOf(req.spec, req.namespace, req.id, process.pid, (why) =>
    ctx.log.debug(
      { namespace: req.namespace, container: req.id, why },
      'the image of this container is not known from containerd',
    ),
  );
  // The manifest's signature, then every size and every digest but the page
  // images', then whose checkpoint it is: all before a byte of the archive
  // is extracted (a forged archive must never reach the disk, not even for
  // the moment it takes a parallel check to fail).
  const verified = verifyCheckpointDirStaged(dir, {
    defer: ownCriuConfig ? PAGE_IMAGE_PATH : undefined,
    trust,
    assembled: !!assembled,
    ...(assembled?.assemblePages ? { assembledLater: PAGE_IMAGE_PATH } : {}),
  }).then(async (v) => {
    timings.verify = Date.now() - t;
    // The checkpoint's name (ARCH_CHECKPOINT_ID, else the container id) must be the one this container looks for.
    const want = checkpointKeyOf(req.contract, req.id);
    const have = v.manifest.checkpointId ?? v.manifest.containerId;
    if (v.manifest.namespace !== req.namespace || have !== want) {
      throw new CheckpointUnusableError(
        'identity',
        `checkpoint is for ${v.manifest.namespace}/${have}, not ${req.namespace}/${want}`,
      );
    }
    assertSameOwner(v.manifest.owner, await ownerAsked, trust.acceptUnsigned && v.signer === 'unsigned');
    assertCpuCanRun(v.manifest.cpu, thisCpu());
    await assertSameTerminal(dir, req.spec);
    if (v.signer === 'unsigned') {
      ctx.log.warn(
        { namespace: req.namespace, container: req.id, checkpointDir: stored, reason: 'unsigned' },
        'restoring an UNSIGNED checkpoint because ARCH_ACCEPT_UNSIGNED=1 (meant for upgrades only: unset it once the old checkpoints are gone)',
      );
    }
    const keys = v.manifest.seal ? sealKeys(v.manifest, ctx.settings) : undefined;
    // ARCH_UNSEAL_THREADS=2: the page images decrypted on two threads (the helper's module loads while the
    // archive is decrypted). One by default: on two cores with runc and CRIU starting beside it, the second
    // thread was slower, and one thread hashes the ciphertext as it decrypts (no second read).
    if (keys && ctx.settings.unsealThreads > 1) held.unsealer = new Unsealer();
    return { ...v, keys };
  });
  // Sealed: the archive is decrypted into the scratch dir (every chunk
  // authenticated) before it is validated and extracted from there, then the
  // CRIU images (page images decrypted, the rest copied) for CRIU to read.
  const layerSource = verified.then(async (v) => {
    if (!v.keys) return dir;
    const s = Date.now();
    held.scratch = await restoreScratch(v.manifest);
    await stageFiles(
      dir,
      held.scratch.dir,
      v.manifest,
      v.keys,
      (p) => p === DELETED_FILES || LAYER_ARCHIVE.test(p),
      ctx.settings.sealDirect,
    );
    timings.unsealRootfs = Date.now() - s;
    return held.scratch.dir;
  });
  const layer = layerSource.then(async (src) => {
    const v = await verified;
    const overlay = await findOverlayDirs(rootfsOf(req.bundle, req.spec));
    const upper = overlay?.upper;
    let written = false;
    if (upper && (await fsp.readdir(upper)).length > 0) {
      // The same container started again (docker start, a restart policy): its layer is still there.
      // Not ours to overwrite, nor to clear if the restore fails: restored over only if unchanged.
      const c = Date.now();
      const why = await layerDifference(src, upper, overlay.lower, v.manifest.rootfs.bytes);
      timings.rootfsCompare = Date.now() - c;
      if (why)
        throw new CheckpointUnusableError(
          'rootfs-changed',
          `the container's writable layer is not the one the checkpoint recorded: ${why}`,
        );
    } else if (upper) {
      written = true;
      try {
        await applyDiff(src, upper, v.manifest.rootfs.bytes);
        await ensureVisible(ctx, rootfsOf(req.bundle, req.spec), upper);
      } catch (err) {
        await unwriteLayer(ctx, upper);
        throw err;
      }
    }
    timings.rootfs = Date.now() - t;
    return { upper, written };
  });
  const imagesStaged = layerSource.then(async (src): Promise<StagedImages> => {
    const v = await verified;
    // Once the layer is written (the main thread is the shim's only one, and runc waits for the layer):
    // the page images are then written while runc and CRIU start, CRIU waiting at the gate for them.
    if (assembled?.assemblePages) {
      await layer;
      const s = Date.now();
      return behindGate(path.join(dir, CRIU_DIR), gateScript!, async () => {
        await assembled.assemblePages!(held.stop.signal);
        timings.assemblePages = Date.now() - s;
      });
    }
    if (!v.keys) return { dir: path.join(dir, CRIU_DIR) };
    const s = Date.now();
    const script = gateScript;
    const later = (p: string) => script !== undefined && PAGE_IMAGE_PATH.test(p);
    const now = (p: string) => p.startsWith(`${CRIU_DIR}/`) && !later(p);
    await stageFiles(dir, src, v.manifest, v.keys, now, ctx.settings.sealDirect, undefined, held.unsealer);
    timings.unsealImages = Date.now() - s;
    const images = path.join(src, CRIU_DIR);
    if (script === undefined) return { dir: images };
    return behindGate(images, script, async () => {
      await stageFiles(dir, src, v.manifest, v.keys!, later, ctx.settings.sealDirect, held.stop.signal, held.unsealer);
      timings.unsealPages = Date.now() - s;
    });
  });
  const [v, l, im] = await Promise.allSettled([verified, layer, imagesStaged]);
  if (v.status === 'rejected' || l.status === 'rejected' || im.status === 'rejected') {
    if (im.status === 'fulfilled') await stopGated(im.value, held.stop);
    if (l.status === 'fulfilled' && l.value.written) await unwriteLayer(ctx, l.value.upper!); // the images failed after the layer was written
    // A failed verification explains a bad archive too: it comes first.
    throw v.status === 'rejected'
      ? v.reason
      : l.status === 'rejected'
        ? l.reason
        : (im as PromiseRejectedResult).reason;
  }
  const { manifest, verifyDeferred } = v.value;
  const { upper, written } = l.value;
  // The job's shared memory files, back in its pod's /dev/shm before CRIU maps them (core/dev-shm.ts), once
  // everything else is in place: a restore that fails after takes back the files it created.
  let shmCreated: string[] = [];
  // The job's emptyDir volumes, written back (core/pod-volumes.ts): undone likewise, the files they replaced put back.
  const volumesWritten: VolumeWrite[] = [];
  /** Everything this restore wrote for the job's files, taken back (the fresh start must not see them). */
  const unwriteFiles = async (): Promise<void> => {
    for (const w of volumesWritten) await undoVolumeWrite(req.spec, w).catch(() => undefined);
    // Nor its /dev/shm files: a semaphore left locked would hang the fresh start.
    await removeDevShmFiles(req.spec, shmCreated).catch(() => undefined);
    // And the writable layer as it was: empty if this restore wrote it (the fresh start must not see the
    // checkpoint's files), untouched if the container had it already (its own files, equal to the checkpoint's).
    if (upper && written) await unwriteLayer(ctx, upper);
  };
  /** A step before runc starts: if it fails, the page images stop and the job's files are taken back. */
  const beforeRunc = async <T>(step: () => Promise<T>): Promise<T> => {
    try {
      return await step();
    } catch (err) {
      await stopGated(im.value, held.stop);
      await unwriteFiles();
      throw err;
    }
  };
  // The files the job had open in its work dir and its own volumes, as they were at the checkpoint.
  await beforeRunc(async () =>
    rollBackOpenFiles(ctx, req, manifest, path.join(await layerSource, KEPT_FILES), timings),
  );
  if (manifest.devShm?.files) {
    const s = Date.now();
    await beforeRunc(async () => {
      const r = await restoreDevShm(await layerSource, req.spec, manifest.devShm!);
      shmCreated = r.created;
      ctx.log.info(
        { namespace: req.namespace, container: req.id, phase: 'restore', files: r.names },
        '/dev/shm files restored',
      );
    });
    timings.devShm = Date.now() - s;
  }
  for (const left of manifest.volumesLeft ?? [])
    ctx.log.info(
      { namespace: req.namespace, container: req.id, phase: 'restore', volume: left.destination, bytes: left.bytes },
      `the emptyDir at ${left.destination} was not kept with this checkpoint (over the checkpointing node's ARCH_EMPTYDIR_MAX_BYTES): the job finds it as this pod has it`,
    );
  if (manifest.volumes?.length) {
    const s = Date.now();
    const volumes = manifest.volumes;
    await beforeRunc(async () => {
      for (const [i, rec] of volumes.entries()) {
        const w = await restoreVolume(path.join(await layerSource, volumeTar(i)), req.spec, rec);
        volumesWritten.push(w);
        ctx.log.info(
          {
            namespace: req.namespace,
            container: req.id,
            phase: 'restore',
            volume: rec.destination,
            files: rec.files,
            replaced: w.replaced.length,
          },
          w.samePod
            ? "emptyDir restored: the job's files are back as at the checkpoint (the same pod)"
            : "emptyDir restored: the job's files are back in the new pod's",
        );
      }
    });
    timings.volumes = Date.now() - s;
  }
  const pagesVerified = async (): Promise<void> => {
    const w = Date.now();
    await verifyPages();
    timings.verifyPages = Date.now() - w;
  };
  if (!upper && manifest.rootfs.files + manifest.rootfs.deletions > 0) {
    throw new CheckpointUnusableError(
      'rootfs',
      'the checkpoint has writable-layer changes but the new rootfs is not an overlay mount',
    );
  }
  timings.prepare = Date.now() - t;

  t = Date.now();
  // CRIU reads the images in place (it follows no symlinks for pagemaps, so
  // no link farm) and writes its logs and stats to the work dir, not there.
  const work = path.join(req.bundle, 'arch-restore');
  await fsp.rm(work, { recursive: true, force: true });
  await fsp.mkdir(work, { recursive: true });
  const gated = im.value.gate;
  // Bind sources that are symlinks, resolved as runc's own mount resolves them (oci-spec.ts withResolvedBindSources).
  const restoreSpec = await withResolvedBindSources(req.spec);
  const criuConfig = ownCriuConfig ? await leaveStoppedConfig(req.bundle, restoreSpec, gated?.script) : undefined;
  if (!criuConfig && restoreSpec !== req.spec) await writeSpec(req.bundle, restoreSpec);
  const { env, runcArgs } = await criuAsked;
  const images = im.value.dir;
  // The job's listeners come back on their ports: in a network namespace that outlived it, free of its old
  // connections' TIME_WAIT entries first (core/time-wait.ts).
  const tw = Date.now();
  const freed = await tcpListenPorts(images)
    .then((ports) =>
      freeListenerPorts(req.spec, ports, (left) =>
        ctx.log.warn(
          { namespace: req.namespace, container: req.id, phase: 'restore', ports, timeWait: left },
          "waiting for the TIME_WAIT entries of the job's old connections on its listener ports to expire (this kernel cannot remove them): up to a minute",
        ),
      ),
    )
    .catch((err: unknown) => {
      ctx.log.warn(
        { namespace: req.namespace, container: req.id, phase: 'restore', err: errorMessage(err) },
        "could not free the job's listener ports of TIME_WAIT entries: a restore may find them taken",
      );
      return undefined;
    });
  if (freed) {
    timings.timeWait = Date.now() - tw;
    ctx.log.info(
      { namespace: req.namespace, container: req.id, phase: 'restore', ...freed },
      "TIME_WAIT entries on the job's listener ports removed before the restore",
    );
  }
  // Sealed: the ciphertext of every page image (all of them are sealed) was hashed and checked as it
  // was decrypted, before the gate let CRIU read a page (or before runc started). Assembled (store
  // format 2): checked chunk by chunk as they were written, before the gate opened. Else: hashed
  // here while CRIU restores, the processes stopped until they match.
  const pagesDecrypted = gated ? gated.pages : Promise.resolve();
  const sealedPaths = new Set(manifest.seal?.files.map((f) => f.path));
  const checkedInDecryption = manifest.files.every((f) => !PAGE_IMAGE_PATH.test(f.path) || sealedPaths.has(f.path));
  const verifyPages = (): Promise<void> =>
    checkedInDecryption && v.value.keys ? pagesDecrypted : pagesDecrypted.then(verifyDeferred);
  // In the foreground runc says it has restored only by writing the pid file: one is needed then.
  const pidFile = req.pidFile ?? (req.foreground ? path.join(work, 'init.pid') : undefined);
  let running: Foreground | undefined;
  const undo = async (): Promise<void> => {
    // A failed restore can leave runc state (and stopped processes) behind; the fresh create needs the id free.
    await req.runc.kill(req.id, 'KILL', true).catch(() => undefined);
    await req.runc.delete(req.id, true).catch(() => undefined);
    await running?.exited; // a foreground runc deletes the container as it exits
    await unwriteFiles();
    // A pod's network namespace, locked by CRIU for the restore: the fresh start and the pod need it back.
    await liftRestoreNetworkLock(req.spec).then(
      (lifted) =>
        lifted &&
        ctx.log.warn(
          { namespace: req.namespace, container: req.id, phase: 'restore' },
          "CRIU's network lock taken off the network namespace the container joins, after the failed restore",
        ),
      (err: unknown) =>
        ctx.log.error(
          { namespace: req.namespace, container: req.id, phase: 'restore', err: errorMessage(err) },
          'the network namespace the container joins is still cut off by CRIU after the failed restore',
        ),
    );
  };
  // A console socket (a create's terminal) serves once, and runc spends it on a restore that then
  // fails: the terminal goes to the caller only once the restore has worked (core/console-relay.ts).
  if (req.consoleSocket) held.relay = await beforeRunc(() => ConsoleRelay.open());
  try {
    const o = {
      bundle: req.bundle,
      imagePath: images,
      workPath: work,
      pidFile,
      consoleSocket: held.relay?.path,
      env,
      extra: runcArgs,
    };
    if (req.foreground) {
      await fsp.rm(pidFile!, { force: true }); // a stale one would say "restored" at once
      running = req.runc.restoreForeground(req.id, o);
      void verifyPages().catch(() => undefined);
      await restoredOrExited(pidFile!, running);
    } else {
      // This thread waits for runc from here on: it hashes meanwhile.
      await req.runc.restore(req.id, { ...o, onSpawn: () => void verifyPages().catch(() => undefined) });
    }
  } catch (err) {
    await criuConfig?.reset().catch(() => undefined);
    await stopGated(im.value, held.stop);
    const pages = await verifyPages().then(
      () => undefined,
      (e: unknown) => e,
    );
    await undo();
    // Damaged page images can make CRIU's restorer itself fail (a flipped
    // byte in memory it needs), or its gate refuses them (a chunk failed
    // authentication): the damage is the reason then, not runc.
    if (pages instanceof CheckpointUnusableError) throw pages;
    const failed = await withCriuErrors('runc restore failed', err, path.join(work, 'restore.log'));
    // CRIU's words do not name the container limit a restore ran into (core/restore-limits.ts).
    const limit = await restoreLimitCause(failed.message, images, req.spec).catch(() => undefined);
    if (limit) throw new CheckpointUnusableError(limit.reason, `${limit.fix}. ${failed.message}`);
    throw failed;
  }
  timings.restore = Date.now() - t;
  gated?.gate.release();
  // Its own network namespace comes back with lo down (core/restored-loopback.ts): up before the job runs on.
  const networkUp = async (pid: number): Promise<void> => {
    const l = Date.now();
    await loopbackUp(pid).catch((err: unknown) =>
      ctx.log.warn(
        { namespace: req.namespace, container: req.id, phase: 'restore', err: errorMessage(err) },
        "could not bring the restored container's loopback up (install iproute2): its 127.0.0.1 is unreachable",
      ),
    );
    timings.loopback = Date.now() - l;
  };
  let heldIn: string | undefined;
  if (!criuConfig) {
    // Running already: as soon as it can be.
    if (ownsNewNetworkNamespace(req.spec)) await networkUp(await restoredInitPid(req, pidFile));
  } else {
    try {
      await criuConfig.reset(); // later dumps of this container must not leave it stopped
      await pagesVerified();
      const pid = await restoredInitPid(req, pidFile);
      if (ownsNewNetworkNamespace(req.spec)) await networkUp(pid);
      const cgroup = req.foreground ? undefined : await CgroupFreezer.of(pid);
      if (cgroup) heldIn = cgroup.dir;
      else await continueProcesses(req, pid);
    } catch (err) {
      // Bad page images never ran: the stopped processes are killed unresumed.
      await undo();
      throw err;
    }
  }
  if (held.relay) {
    try {
      await held.relay.handOver(req.consoleSocket!);
    } catch (err) {
      await undo();
      throw new Error(`could not pass the restored terminal on to the console socket: ${errorMessage(err)}`);
    }
  }
  // Restored: what the job's files replaced in its emptyDirs is not needed to undo it any more.
  for (const w of volumesWritten)
    await keepVolumeFiles(req.spec, w).catch((err: unknown) =>
      ctx.log.warn(
        {
          namespace: req.namespace,
          container: req.id,
          phase: 'restore',
          volume: w.destination,
          err: errorMessage(err),
        },
        `could not remove the files the restore moved aside in the emptyDir (${w.hold}): remove that directory by hand`,
      ),
    );
  return { checkpointDir: stored, manifest, timings, running, ...(heldIn ? { heldIn } : {}) };
}

/**
 * Resolves once runc has written the pid file (the processes are restored);
 * throws if runc exits without having written it. A runc that wrote it and
 * exited since restored a job that ended at once (where it was not left
 * stopped): that exit is the job's, not a failed restore, and the job must
 * not run a second time from a fresh start.
 */
async function restoredOrExited(pidFile: string, running: Foreground): Promise<void> {
  let code: number | undefined;
  void running.exited.then((c) => (code = c));
  const written = () =>
    fsp.access(pidFile).then(
      () => true,
      () => false,
    );
  for (let wait = 2; ; wait = Math.min(wait * 2, 50)) {
    const exited = code;
    if (await written()) return;
    if (exited !== undefined) throw new Error(`runc exited with code ${exited}`);
    await sleep(wait);
  }
}

/** Where CRIU reads the images from; for page images decrypted behind the seal gate, the gate and the decryption. */
interface StagedImages {
  dir: string;
  gate?: { gate: SealGate; script: string; pages: Promise<void> };
}

/** The page images written by `write` while CRIU waits at a closed gate in `images`, opened when they are (refused if that fails). */
async function behindGate(images: string, script: string, write: () => Promise<void>): Promise<StagedImages> {
  const gate = await SealGate.close(images);
  const pages = write();
  pages.then(
    () => gate.open(true),
    () => gate.open(false),
  );
  return { dir: images, gate: { gate, script, pages } };
}

/** A restore that will not go on: refuse at the gate, stop decrypting, and wait for it (the scratch dir is removed next). */
async function stopGated(images: StagedImages, stop: AbortController): Promise<void> {
  if (!images.gate) return;
  images.gate.gate.open(false);
  stop.abort();
  await images.gate.pages.catch(() => undefined);
  images.gate.gate.release();
}

/** The keys a sealed checkpoint needs, each found on this node: else a 'sealed-key' refusal. */
function sealKeys(manifest: Manifest, settings: { configFile: string }): Map<string, StoreKey> {
  const keyOf = storeKeyLookup(settings);
  return new Map(manifest.seal!.files.map((f) => [f.path, keyOf(f)]));
}

/** A tmpfs scratch dir with room for every file the restore stages there (plaintext sizes). */
async function restoreScratch(manifest: Manifest): Promise<Scratch> {
  const plain = new Map(manifest.seal!.files.map((f) => [f.path, f.plainSize]));
  const need = manifest.files.reduce((a, f) => a + (plain.get(f.path) ?? f.size), 0) + 16 * 1024 * 1024;
  try {
    return await makeScratch(need);
  } catch (err) {
    throw new CheckpointUnusableError('sealed-scratch', errorMessage(err));
  }
}

/** Decrypt the sealed files (copy the others) matching `which` from the checkpoint into `to`. */
async function stageFiles(
  dir: string,
  to: string,
  manifest: Manifest,
  keys: Map<string, StoreKey>,
  which: (p: string) => boolean,
  direct: boolean,
  signal?: AbortSignal,
  helper?: Unsealer,
): Promise<void> {
  const sealed = new Map(manifest.seal!.files.map((f) => [f.path, f]));
  const files = manifest.files.filter((x) => which(x.path));
  // ARCH_SEAL_DIRECT=1: the ciphertext read around the page cache (written so: it is not in the cache).
  const large = files.some((f) => sealed.has(f.path) && f.size > SEAL_CHUNK_BYTES);
  const bufs: OpenBuffers =
    direct && large
      ? { direct: new DirectBuffer(DIRECT_READ_BYTES) }
      : { plain: Buffer.allocUnsafe(SEAL_CHUNK_BYTES + 16) };
  for (const f of files) {
    const dest = path.join(to, f.path);
    await fsp.mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
    const s = sealed.get(f.path);
    if (!s) await fsp.copyFile(path.join(dir, f.path), dest);
    else {
      // Behind the gate: under another name until whole (its digest checked), so a CRIU that looked early
      // would find no file, never half of one.
      const part = signal ? `${dest}.part` : dest;
      await openSealedFile(path.join(dir, f.path), part, s, manifest.seal!.id, keys.get(f.path)!, {
        bufs,
        signal,
        helper,
        // The page images' digests are deferred (verifyCheckpointDirStaged): checked here, as they are read.
        sha256: PAGE_IMAGE_PATH.test(f.path) ? f.sha256 : undefined,
      });
      if (part !== dest) await fsp.rename(part, dest);
    }
  }
}

/**
 * Point the bundle's spec at a CRIU configuration that restores the
 * processes stopped (and, for a sealed or chunked checkpoint, holds CRIU at the seal
 * gate until the page images are decrypted or assembled: core/seal-gate.ts). runc keeps the annotation for the container's life, so
 * reset() rewrites the file to what runc would otherwise give CRIU.
 */
async function leaveStoppedConfig(
  bundle: string,
  spec: OciSpec,
  gateScript?: string,
): Promise<{ reset: () => Promise<void> }> {
  const file = path.join(bundle, BUNDLE_CRIU_CONFIG);
  const defaults = await fsp.readFile(RUNC_DEFAULT_CRIU_CONFIG, 'utf8').catch(() => '');
  const ours = `leave-stopped\n${gateScript ? `action-script ${gateScript}\n` : ''}`;
  await fsp.writeFile(file, `${defaults}${defaults && !defaults.endsWith('\n') ? '\n' : ''}${ours}`);
  await writeSpec(bundle, { ...spec, annotations: { ...spec.annotations, [CRIU_CONFIG_ANNOTATION]: file } });
  return { reset: () => fsp.writeFile(file, defaults) };
}

/** The restored container's init: from runc's pid file, else runc's state. */
async function restoredInitPid(req: RestoreRequest, pidFile: string | undefined): Promise<number> {
  return pidFile
    ? Number((await fsp.readFile(pidFile, 'utf8').catch(() => '')).trim())
    : (await req.runc.state(req.id)).pid;
}

/** SIGCONT every process of the restored container, whose init is `pid` (through its cgroup; runc where that is unknown). */
async function continueProcesses(req: RestoreRequest, pid: number): Promise<void> {
  const cgroup = await CgroupFreezer.of(pid);
  if (cgroup && (await cgroup.signalAll('SIGCONT')) > 0) return;
  await req.runc.kill(req.id, 'CONT', true);
}

/** How each kind of roll-back is logged: the field that lists the files, and what was done to them. */
const ROLLED_BACK_LINES: [RolledBack['how'], string, string][] = [
  [
    'cut',
    'files',
    'cut back to their sizes at the checkpoint (what the lost run wrote after it; the restored job writes that part again)',
  ],
  [
    'setAside',
    'setAside',
    'the lost run made after the checkpoint moved aside into the directory `to` at its top (the restored job makes them again)',
  ],
  [
    'appended',
    'appended',
    'the job appends to between checkpoints cut back to their sizes at the checkpoint (the restored job appends that part again)',
  ],
  ['rewritten', 'rewritten', 'the job rewrites in place written back as they were at the checkpoint'],
  [
    'putBack',
    'putBack',
    'the lost run deleted, moved away or replaced after the checkpoint put back as they were then (from their second names at the checkpoint)',
  ],
  [
    'changed',
    'changed',
    'the job opens and closes that the lost run rewrote after the checkpoint (through the same file, opened for writing without appending) are left as it left them: ARCH keeps only their size and last bytes; to have them come back as they were at the checkpoint, write such a file whole under a temporary name and rename it over the old one (ARCH then puts the old one back)',
  ],
];

/**
 * The files the job had open in its work directory and in the volumes its
 * owner named as its alone (ARCH_ROLLBACK_VOLUMES), back to their sizes at
 * the checkpoint (what a lost run wrote after it is written again by the
 * restored one), and those it rewrites in place back to their contents then
 * (from `kept`, the checkpoint's KEPT_FILES). Every file of every place is
 * checked before one is changed.
 */
async function rollBackOpenFiles(
  ctx: NodeContext,
  req: RestoreRequest,
  manifest: Manifest,
  kept: string,
  timings: Record<string, number>,
): Promise<void> {
  const inWorkDir = !!req.workDir && !!(manifest.workFiles?.length || manifest.closedWorkFiles);
  if (!inWorkDir && !manifest.volumeFiles?.length) return;
  const w = Date.now();
  const places: { volume?: string; rollBack: RollBack }[] = [];
  try {
    if (inWorkDir)
      places.push({
        rollBack: await prepareRollBack(
          req.workDir!,
          manifest.workFiles ?? [],
          undefined,
          closedOf(
            manifest.closedWorkFiles,
            manifest.closedWorkFilesMore,
            manifest.closedWorkNonFiles,
            manifest.closedWorkLinks,
          ),
        ),
      });
    if (manifest.volumeFiles?.length)
      for (const p of await prepareVolumeRollBacks(req.spec, manifest.volumeFiles))
        places.push({ volume: p.destination, rollBack: p.rollBack });
    // Every place checked: now cut, and write back.
    for (const { volume, rollBack } of places) {
      const done = await rollBack.apply(kept);
      const where = volume ? `files of the volume at ${volume}` : 'work dir files';
      const base = { namespace: req.namespace, container: req.id, phase: 'restore', ...(volume ? { volume } : {}) };
      for (const [how, field, what] of ROLLED_BACK_LINES) {
        const these = done.filter((d) => d.how === how);
        if (!these.length) continue;
        const dir = these[0]!.dir;
        // Left as the lost run left them: worth a look, not a failure.
        ctx.log[how === 'changed' ? 'warn' : 'info'](
          {
            ...base,
            [field]:
              how === 'setAside' ? these.map((d) => d.path) : these.map(({ path, from, to }) => ({ path, from, to })),
            ...(dir ? { to: dir } : {}),
          },
          `${where} ${what}`,
        );
      }
    }
  } finally {
    // Each cut closes its files; these are the places a refusal or a failed cut left open.
    await Promise.all(places.map((p) => p.rollBack.close()));
  }
  timings.workFiles = Date.now() - w;
}

/**
 * The layer is written into the upper dir of an overlay that is mounted
 * already, and overlayfs caches what it looked up: a directory looked up
 * through the mount before (Docker reads the new container's /etc before it
 * calls the runtime) keeps hiding upper-dir entries made under it since. So
 * every written path is looked up through the mount; if the mount does not
 * show it, the kernel's unused dentries are dropped (the cache entries
 * go, nothing else) and it is looked up again. Still hidden: refused, so the
 * container starts fresh rather than with half its files.
 */
async function ensureVisible(ctx: NodeContext, merged: string, upper: string): Promise<void> {
  const hidden = async (): Promise<string | undefined> => {
    const walk = async (rel: string): Promise<string | undefined> => {
      for (const d of await fsp.readdir(path.join(upper, rel), { withFileTypes: true })) {
        const r = rel ? `${rel}/${d.name}` : d.name;
        const u = await fsp.lstat(path.join(upper, r));
        const m = await fsp.lstat(path.join(merged, r)).catch(() => undefined);
        const whiteout = u.isCharacterDevice() && u.rdev === 0;
        if (whiteout ? m !== undefined : !m || m.isDirectory() !== u.isDirectory() || (u.isFile() && m.size !== u.size))
          return r;
        if (u.isDirectory()) {
          const below = await walk(r);
          if (below) return below;
        }
      }
      return undefined;
    };
    return walk('');
  };
  const first = await hidden();
  if (!first) return;
  ctx.log.info(
    { rootfs: merged, path: first },
    "the rootfs mount does not show the restored layer yet (looked up before it was written): dropping the kernel's unused dentries",
  );
  await dropUnusedDentries();
  const still = await hidden();
  if (still)
    throw new CheckpointUnusableError(
      'rootfs',
      `the container's rootfs mount does not show the restored "${still}" (an overlay looked up before the layer was written)`,
    );
}

/**
 * Take back a layer this restore wrote, so that the fresh start sees none of
 * the checkpoint's files. ensureVisible looked every restored path up through
 * the mounted overlay, which now caches them: emptying the upper dir under it
 * would leave those entries showing (a "fresh" start that found the
 * checkpoint's files, seen in the damaged-checkpoint tests), so the unused
 * dentries are dropped again once it is empty. Failed restores only.
 */
async function unwriteLayer(ctx: NodeContext, upper: string): Promise<void> {
  await clearDir(upper);
  await dropUnusedDentries().catch((err: unknown) =>
    ctx.log.warn({ err: errorMessage(err) }, 'could not drop the overlay cache after taking the layer back'),
  );
}

/** The kernel's unused dentries and inodes go (host-wide: nothing else is dropped, nothing written back). */
const dropUnusedDentries = (): Promise<void> => fsp.writeFile('/proc/sys/vm/drop_caches', '2');

async function clearDir(dir: string): Promise<void> {
  for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
    await fsp.rm(path.join(dir, name), { recursive: true, force: true });
  }
}
