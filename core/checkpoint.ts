import fsp from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { CgroupFreezer } from './cgroup-freezer.js';
import { criuRunEnv } from './criu-network-lock.js';
import type { NodeContext } from './context.js';
import { DigestFollower, type Digest } from './digest.js';
import {
  checkpointKeyOf,
  checkpointStoreOf,
  contractOptions,
  envListToMap,
  parseContract,
  rollbackVolumePaths,
  type EnabledContract,
} from './env-contract.js';
import { ArchInputError, errorMessage } from '../contract/errors.js';
import { FreezeGuard } from './freeze-guard.js';
import { rootfsWatchPaths } from './inotify-watches.js';
import { rearmFiredTimerfds } from './criu-timerfd.js';
import { uncheckpointableFiles } from './open-files.js';
import { criuStallMs, LayerGate } from './layer-gate.js';
import { captureDevShm, devShmSource, type DevShmRecord } from './dev-shm.js';
import {
  captureVolume,
  keptVolumes,
  openInVolumes,
  podScratchVolumes,
  podUidOf,
  type VolumeRecord,
} from './pod-volumes.js';
import { dumpSizeEstimate, memoryStaging, moveStaged } from './dump-staging.js';
import { validateContainerId, validateNamespace } from '../contract/ids.js';
import { FORMAT_VERSION, SEALED_FORMAT_VERSION, type Manifest } from './manifest.js';
import { readSpec, rootfsOf, type OciSpec } from './oci-spec.js';
import { ownerOf } from './owner.js';
import { cpuOfJob, thisCpu, type CpuRecord } from './cpu-features.js';
import { isAlive } from './pid.js';
import { leaseOf, leaseRefusal, ownNodeNames, parkedLease, writeLease, type Lease } from './lease.js';
import { trustOf } from './trust.js';
import { captureDiff, findUpperDir } from './rootfs-diff.js';
import { Runc } from './runc.js';
import {
  storeKeysOf,
  makeScratch,
  newSealId,
  SealFollower,
  type SealedFile,
  type Scratch,
  type StoreKey,
} from './seal.js';
import { chunkKeysOf } from './chunk-codec.js';
import { ChunkPool } from './chunk-pool.js';
import type { ChunkWriteStats } from './chunk-dir.js';
import { ChunkFollower, ChunkWriter } from './chunked-files.js';
import { lockCheckpoint, readShimState, updateShimState, type CheckpointFailure } from './shim-state.js';
import { runtimeVersions } from './versions.js';
import { isSeizeTimeout, withCriuErrors } from './criu-log.js';
import { CLOSED_FILES_MAX } from './closed-files.js';
import {
  captureWorkFiles,
  KEPT_FILES_MAX_FIELD,
  keptFilesWriter,
  type CapturedWorkFiles,
  type KeptFilesSink,
} from './work-files.js';
import { captureVolumeFiles, jobVolumes, ROLLBACK_VOLUMES_FIELD, type CapturedVolumeFiles } from './volume-files.js';
import { walkWorkDir } from './work-dir.js';
import type { HeldDir } from './host-dirs.js';
import {
  CONTENT_IMAGE_NAME,
  CRIU_DIR,
  DELETED_FILES,
  PAGE_IMAGE_NAME,
  ROOTFS_TAR,
  SPEC_FILE,
  KEPT_FILES,
  LAYER_ARCHIVE,
  volumeTar,
} from './checkpoint-layout.js';

/**
 * One checkpoint path for everybody: `arch-cli finalize`, the Temporal
 * activities and the shim (for a checkpoint containerd asks for) all end here.
 *
 * Consistency: processes and files must describe the same instant. To stop
 * the job, the container is frozen first, CRIU dumps it leaving it frozen,
 * the writable layer is captured while nothing can write to it, the
 * checkpoint is published, and only then are the processes killed. Left
 * running, CRIU stops the job itself and the layer is captured while CRIU
 * holds the tasks (core/layer-gate.ts), so runc's and CRIU's start-up are
 * not part of what the job feels. If anything fails before publishing, the
 * container is thawed and keeps running: a failed checkpoint never loses the
 * job.
 */
export interface CheckpointRequest {
  namespace: string;
  id: string;
  /** runc state root; default <runcRootBase>/<namespace> (containerd's layout). */
  runcRoot?: string;
  leaveRunning?: boolean;
  /**
   * Left running: stage the dump in a tmpfs when it fits (true), or write it
   * to the store's staging dir directly (false). Default: the node's
   * ARCH_STAGE_DUMPS_IN_MEMORY (bench/periodic.ts compares both).
   */
  stageInMemory?: boolean;
  image?: string;
  signal?: AbortSignal;
  onProgress?: (p: { phase: string; bytesDone?: number; bytesTotal?: number }) => void;
  /**
   * CRIU images already dumped by runc (a checkpoint containerd issued): they
   * are copied in instead of dumping again, and the processes are not touched.
   */
  dumpedImages?: string;
  /** The bundle, when runc no longer knows the container (see dumpedImages). */
  bundle?: string;
  /**
   * What a listing of the node found a moment ago (finalize's `runc list`):
   * used instead of asking `runc state` again (a process, on a reclaim
   * notice) once the lock is held, if its init process still lives.
   */
  listed?: { bundle: string; status: string; pid: number };
}

export interface CheckpointResult {
  namespace: string;
  id: string;
  node: string;
  dir: string;
  containerDir: string;
  manifest: Manifest;
  sizeBytes: number;
  timings: Record<string, number>;
  totalMs: number;
  /** How long the job was frozen (left running only): what it felt of this checkpoint. */
  freezeMs?: number;
  /** Store format 2: chunks written (new) and reused, and the bytes written. */
  chunkStats?: ChunkWriteStats;
  /** Why the tries before this one failed, when CRIU could not stop the job at first (withSeizeRetries). */
  retries?: string[];
}

export interface ContainerOnNode {
  runc: Runc;
  bundle: string;
  spec: OciSpec;
  contract: EnabledContract;
  status: string;
  pid: number;
}

/** Find an ARCH container through runc and read its contract from its spec. */
export async function inspectArchContainer(
  ctx: NodeContext,
  namespace: string,
  id: string,
  runcRoot?: string,
  knownBundle?: string,
  listed?: CheckpointRequest['listed'],
): Promise<ContainerOnNode> {
  validateNamespace(namespace);
  validateContainerId(id);
  const runc = new Runc(ctx.settings, runcRoot ?? path.join(ctx.settings.runcRootBase, namespace));
  let state: { bundle: string; status: string; pid: number };
  try {
    // runc forgets a container it checkpointed without --leave-running: then the caller knows the bundle.
    if (knownBundle) state = { bundle: knownBundle, status: 'stopped', pid: 0 };
    else if (listed && listed.pid > 0 && isAlive(listed.pid)) state = listed;
    else state = await runc.state(id);
  } catch (err) {
    throw new ArchInputError(
      'container',
      `${namespace}/${id} is not a container on this node (${runc.root}): ${firstLine(err)}`,
      'check the namespace and id with `arch-cli ls`',
    );
  }
  const spec = await readSpec(state.bundle);
  const contract = parseContract(envListToMap(spec.process?.env), contractOptions(ctx.settings));
  if (!contract.enabled) {
    throw new ArchInputError(
      'ARCH_ENABLE',
      `${namespace}/${id} is not ARCH-enabled`,
      'run the container with ARCH_ENABLE=1 in its environment',
    );
  }
  return { runc, bundle: state.bundle, spec, contract, status: state.status, pid: state.pid };
}

/** A failed `runc checkpoint` with what CRIU's log says (runc's error says only "criu failed"); an abort as it is. */
async function dumpError(err: unknown, workPath: string): Promise<unknown> {
  if ((err as Error | undefined)?.name === 'AbortError') return err;
  return withCriuErrors('runc checkpoint failed', err, path.join(workPath, 'dump.log'));
}

function firstLine(err: unknown): string {
  return (
    errorMessage(err)
      .split('\n')
      .find((l) => l.trim()) ?? ''
  );
}

export async function checkpointContainer(ctx: NodeContext, req: CheckpointRequest): Promise<CheckpointResult> {
  const t0 = Date.now();
  validateNamespace(req.namespace);
  validateContainerId(req.id);
  // One checkpoint of a container at a time (a drain while a migration runs):
  // taken before looking at the container, so the second caller sees what the first left.
  const root = req.runcRoot ?? path.join(ctx.settings.runcRootBase, req.namespace);
  const lock = req.dumpedImages
    ? { release: async () => undefined }
    : await lockCheckpoint(root, req.id).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return { release: async () => undefined }; // no such container: inspect says so
        throw err;
      });
  if ('heldBy' in lock) {
    throw new ArchInputError(
      'container',
      `${req.namespace}/${req.id} is being checkpointed already (process ${lock.heldBy})`,
      'wait for that checkpoint to finish; its result is the checkpoint to use',
    );
  }
  try {
    const c = await inspectArchContainer(ctx, req.namespace, req.id, req.runcRoot, req.bundle, req.listed);
    if (!req.dumpedImages && c.status !== 'running' && c.status !== 'paused') {
      throw new ArchInputError(
        'container',
        `${req.namespace}/${req.id} is ${c.status}, not running`,
        'only a running container can be checkpointed',
      );
    }
    return await recordFailure(c.runc.root, req, () =>
      withSeizeRetries(ctx, req, (seizeTimeoutS) => checkpointLocked(ctx, req, c, t0, seizeTimeoutS)),
    );
  } finally {
    await lock.release().catch(() => undefined);
  }
}

/**
 * The tries of a dump whose seize may time out (isSeizeTimeout says why):
 * how long CRIU may take to stop the job at each (CRIU's `timeout`, the time
 * the job stands still when it cannot), and the pause before it. The first
 * gives up soon (a process caught in vfork never stops, and a job's own
 * watchdog may count a 10 s stall as a hang); the last waits CRIU's default,
 * for a job whose many processes take that long to stop.
 */
const SEIZE_TRIES = [
  { timeoutS: 2, pauseMs: 0 },
  { timeoutS: 5, pauseMs: 2_000 },
  { timeoutS: 10, pauseMs: 5_000 },
];

/**
 * A dump CRIU gave up before it began, because one of the job's processes
 * would not stop (isSeizeTimeout), is tried again after a pause while the job
 * runs on: a checkpoint that failed for a moment's wait would leave the job
 * unprotected until the next period, or lose a drain's chance altogether.
 * Each try is a whole checkpoint; the failed one left nothing behind.
 */
async function withSeizeRetries(
  ctx: NodeContext,
  req: CheckpointRequest,
  attempt: (seizeTimeoutS: number) => Promise<CheckpointResult>,
): Promise<CheckpointResult> {
  const retries: string[] = [];
  for (let n = 0; ; n++) {
    try {
      const done = await attempt(SEIZE_TRIES[n]!.timeoutS);
      return retries.length ? { ...done, retries } : done;
    } catch (err) {
      const next = SEIZE_TRIES[n + 1];
      if (!next || !isSeizeTimeout(err) || req.signal?.aborted) throw err;
      retries.push(errorMessage(err));
      ctx.log.warn(
        { namespace: req.namespace, container: req.id, phase: 'checkpoint', try: n + 1, err: errorMessage(err) },
        `CRIU could not stop every process of ${req.namespace}/${req.id} within ${SEIZE_TRIES[n]!.timeoutS} s ` +
          `(one stayed in uninterruptible sleep); the job runs on; trying again in ${next.pauseMs / 1000} s`,
      );
      await delay(next.pauseMs, undefined, { signal: req.signal });
    }
  }
}

/**
 * A failed checkpoint is recorded in the container's shim state: until a
 * newer checkpoint exists (core/node-containers.ts compares the two),
 * `arch-cli ls` shows the job as unprotected, and why. A failure to record
 * it is not the checkpoint's failure.
 */
async function recordFailure<T>(runcRoot: string, req: CheckpointRequest, attempt: () => Promise<T>): Promise<T> {
  try {
    return await attempt();
  } catch (err) {
    const failure: CheckpointFailure = {
      message: errorMessage(err),
      at: new Date().toISOString(),
      ...(err instanceof ArchInputError ? { field: err.field } : {}),
    };
    await updateShimState(runcRoot, req.id, { lastCheckpointFailure: failure }).catch(() => undefined);
    throw err;
  }
}

async function checkpointLocked(
  ctx: NodeContext,
  req: CheckpointRequest,
  c: ContainerOnNode,
  t0: number,
  /** How long CRIU may take to stop the job (SEIZE_TRIES). */
  seizeTimeoutS: number,
): Promise<CheckpointResult> {
  const timings: Record<string, number> = {};
  const lap = (phase: string, since: number) => {
    timings[phase] = (timings[phase] ?? 0) + (Date.now() - since);
  };
  const log = ctx.log.child({ namespace: req.namespace, container: req.id });
  // Asked now (runc and criu --version, once per process) so it runs during the dump, not while frozen after it.
  const versionsAsked = runtimeVersions(ctx.settings);
  const wasPaused = c.status === 'paused';
  // Left running: CRIU freezes the job itself, as a raw `runc checkpoint --leave-running`
  // does, and the layer is captured behind the layer gate (core/layer-gate.ts). Stopping it,
  // or a container the user paused: frozen here first, since it must stay frozen after CRIU.
  // A pod's /dev/shm (a host directory bound in): its files are kept with the layer (core/dev-shm.ts),
  // captured at CRIU's post-dump action, behind the same gate: CRIU's link remaps are there only then.
  const shmSource = devShmSource(c.spec);
  // The pod's emptyDir volumes it mounts: kept with the layer, captured with it (core/pod-volumes.ts),
  // each up to the node's ARCH_EMPTYDIR_MAX_BYTES (measured before anything is stopped, beside the asks below).
  const volumesAsked = keptVolumes(req.dumpedImages ? [] : podScratchVolumes(c.spec), ctx.settings.emptyDirMaxBytes);
  volumesAsked.catch(() => undefined); // awaited below, after the cgroup (a failure before then must not go unobserved)
  // The volumes the owner says are the job's alone (ARCH_ROLLBACK_VOLUMES): the files it holds open
  // there are recorded with the layer, and a restore cuts them back to these sizes (core/volume-files.ts).
  const rollback = req.dumpedImages
    ? undefined
    : jobVolumes(
        c.spec,
        rollbackVolumePaths(c.contract),
        c.contract.mode === 'shared' ? c.contract.workdirContainerPath : undefined,
      );
  for (const { destination, why } of rollback?.ignored ?? [])
    log.warn(
      { phase: 'checkpoint', field: ROLLBACK_VOLUMES_FIELD, volume: destination, why },
      `${ROLLBACK_VOLUMES_FIELD} names ${destination}, whose files are not rolled back: ${why}`,
    );
  // Not for a container the user paused: the gate needs the freeze guard, which would thaw it.
  const gateScript =
    !req.dumpedImages && !wasPaused && (req.leaveRunning || shmSource) ? await LayerGate.script() : undefined;
  // TCP connections: left alone by the dump, closed on the restore (criuRunEnv says why).
  // The container's cgroup, looked up once: the watches below, the freeze, the work dir's open files.
  const groupAsked = req.dumpedImages ? Promise.resolve(undefined) : CgroupFreezer.of(c.pid);
  // Open files no dump can take (an io_uring): found before anything is frozen, named with their process.
  const blockersAsked = req.dumpedImages
    ? Promise.resolve([])
    : groupAsked.then(async (g) => uncheckpointableFiles(g ? await g.pids() : [c.pid])).catch(() => []);
  // inotify watches on the container's root: CRIU finds them only where told (core/inotify-watches.ts).
  const irmapAsked = req.dumpedImages
    ? Promise.resolve([])
    : groupAsked
        .then(async (g) => rootfsWatchPaths(g ? await g.pids() : [c.pid], rootfsOf(c.bundle, c.spec)))
        .catch(() => []);
  const criuAsked = irmapAsked.then((irmapPaths) => {
    if (irmapPaths.length)
      log.info({ phase: 'checkpoint', paths: irmapPaths }, "inotify watches on the container's root: paths for CRIU");
    return criuRunEnv(ctx.settings, c.spec, gateScript, { own: true, irmapPaths, seizeTimeoutS });
  });
  // Whose job this is (pod namespace, image), recorded in the signed manifest: asked during the dump too.
  const ownerAsked = ownerOf(c.spec, req.namespace, req.id, c.pid > 0 ? c.pid : process.pid, (why) =>
    log.warn(
      { phase: 'checkpoint', why },
      'the image of this container is not known from containerd: recorded as unknown (only a container whose image is unknown too restores it)',
    ),
  );
  const store = checkpointStoreOf(c.contract, req.namespace, req.id);
  const containerDir = store.containerDir;
  // Encryption at rest (ARCH_STORE_KEY_FILE): a bad key file fails the checkpoint here, before the container is touched.
  const storeKey: StoreKey | undefined = storeKeysOf(ctx.settings)?.keys[0];
  const blockers = await blockersAsked;
  if (blockers.length)
    throw new Error(
      `${req.namespace}/${req.id} cannot be checkpointed: ${blockers.map((b) => b.said).join('; ')}, which CRIU ` +
        `cannot checkpoint. Fix: ${[...new Set(blockers.map((b) => b.fix))].join('; ')}. ` +
        `The container keeps running and its previous checkpoint stays current`,
    );
  // Store format 2 encrypts chunk by chunk when it publishes (chunk-codec.ts), not file by file while CRIU writes.
  // Object storage holds only format 2: a chunk already in the bucket is never uploaded again.
  const chunking = ctx.settings.storeFormat === 2 || c.contract.mode === 's3';
  const sealKey = chunking ? undefined : storeKey;
  const staging = await store.begin({
    namespace: req.namespace,
    key: checkpointKeyOf(c.contract, req.id),
    containerId: req.id,
    node: ctx.settings.nodeName,
  });
  const upper = await findUpperDir(rootfsOf(c.bundle, c.spec));
  let devShm: DevShmRecord | undefined;
  let volumeRecords: VolumeRecord[] = [];
  // Freeze/thaw/kill through the cgroup (no runc exec while frozen); runc where the layout is unknown.
  const cgroup = wasPaused ? undefined : await groupAsked;
  /** The job's processes (its cgroup's, else its init): whose open files are recorded. */
  const jobPids = async (): Promise<readonly number[]> => {
    const group = cgroup ?? (await groupAsked);
    return group ? await group.pids() : [c.pid];
  };
  // The CPU its processes chose their instructions on (cpuOfJob), looked at before the dump and again before publishing.
  const root = req.runcRoot ?? path.join(ctx.settings.runcRootBase, req.namespace);
  const restoredCpu = readShimState(root, req.id).then(
    (s) => s?.restoredCpu,
    () => undefined,
  );
  const jobCpu = async () => cpuOfJob(await jobPids().catch(() => undefined), await restoredCpu);
  const cpuBeforeDump = jobCpu();
  cpuBeforeDump.catch(() => undefined); // awaited at publish
  const { kept: volumes, left: volumesLeft } = await volumesAsked;
  if (volumesLeft.length) {
    // What the job holds open there is what a restore in a new pod cannot do without: said now, not at that restore.
    const held = await openInVolumes(
      await jobPids().catch(() => [c.pid]),
      volumesLeft.map((v) => v.destination),
    );
    for (const v of volumesLeft) {
      const open = held.get(v.destination) ?? [];
      log.warn(
        { phase: 'checkpoint', volume: v.destination, bytes: v.bytes, limit: ctx.settings.emptyDirMaxBytes, open },
        `the pod's emptyDir at ${v.destination} holds ${v.bytes} bytes, over ARCH_EMPTYDIR_MAX_BYTES: not kept with the checkpoint (a restore in a new pod finds it as that pod makes it; in the same pod it is left as it is)` +
          (open.length
            ? `. The job has ${open.join(', ')} open there: a restore in a new pod will fail (CRIU cannot reopen them) and the job will start fresh`
            : '') +
          '. Fix: raise ARCH_EMPTYDIR_MAX_BYTES in the node settings (unlimited: no limit), or keep less in it',
      );
    }
  }
  const freeze = () => (cgroup ? cgroup.freeze() : c.runc.pause(req.id));
  const thaw = () => (cgroup ? cgroup.thaw() : c.runc.resume(req.id));
  const killFrozen = async () => {
    if (cgroup) return cgroup.killAndThaw();
    await c.runc.kill(req.id, 'KILL', true);
    // Thaw so the killed processes die (runc may already have thawed them).
    await c.runc.resume(req.id).catch(() => undefined);
  };
  // Whoever freezes makes sure of the thaw: if this process dies while the container is frozen, the guard's watcher thaws it.
  const armGuard = (imageDir: string, layerGate?: string) =>
    FreezeGuard.arm(
      {
        pid: process.pid,
        id: req.id,
        runcRoot: c.runc.root,
        cgroup: cgroup && { version: cgroup.version, dir: cgroup.dir },
        runc: { runc: ctx.settings.runc, criu: ctx.settings.criu, criuNoBreakpoints: ctx.settings.criuNoBreakpoints },
        imageDir,
        ...(layerGate ? { layerGate } : {}),
        log: { logFile: ctx.settings.logFile, logLevel: ctx.settings.logLevel, nodeName: ctx.settings.nodeName },
      },
      log,
    );
  let guard: FreezeGuard | undefined;
  let frozen = false;
  let frozenAt = 0;
  let freezeMs: number | undefined;
  // Left running: the job goes on as soon as its processes and files are
  // captured; hashing, sealing, fsync and publishing happen while it runs.
  const thawNow = async () => {
    if (!frozen) return;
    await thaw();
    freezeMs = Date.now() - frozenAt;
    frozen = false;
    guard?.disarm();
  };
  let published = false;
  let sealer: SealFollower | undefined;
  let scratch: Scratch | undefined;
  /** Unsealed and staged in memory: moved whole into the store's staging dir after the thaw. */
  let staged: Scratch | undefined;
  const sealId = newSealId();
  const chunkKeys = chunking && storeKey ? chunkKeysOf(storeKey) : undefined;
  // Started before the freeze: the workers (where a core is left for them) are ready when CRIU writes its first pages.
  const chunkPool = chunking && !req.dumpedImages ? ChunkPool.besideCriu(chunkKeys) : undefined;
  let chunkFollower: ChunkFollower | undefined;
  // Shared mode: the work directory, walked (no symlink followed) and held while its open files are recorded.
  const workDir = req.dumpedImages
    ? undefined
    : await walkWorkDir(c.contract, req.namespace, req.id, false).catch((err: unknown) => {
        log.warn(
          { phase: 'checkpoint', err: errorMessage(err) },
          'the work dir could not be walked: its open files are not recorded (a restore will not cut them back)',
        );
        return undefined;
      });
  /** Open files recorded for a restore to cut back to; a failure is logged: the checkpoint goes on without them. */
  const recordOpenFiles = async <T>(where: string, capture: (pids: readonly number[]) => Promise<T>) => {
    try {
      return await capture(await jobPids());
    } catch (err) {
      log.warn(
        { phase: 'checkpoint', err: errorMessage(err) },
        `the files open in ${where} could not be recorded: a restore will not cut them back`,
      );
      return undefined;
    }
  };
  let workFiles: CapturedWorkFiles | undefined;
  const contract = c.contract;
  const captureWorkFilesOf = async (dir: HeldDir): Promise<CapturedWorkFiles | undefined> =>
    contract.mode === 'shared'
      ? recordOpenFiles('the work dir', (pids) => captureWorkFiles(pids, contract.workdirContainerPath, dir.fdPath))
      : undefined;
  let volumeFiles: CapturedVolumeFiles | undefined;
  const captureVolumeFilesNow = async (): Promise<CapturedVolumeFiles | undefined> => {
    const volumes = rollback?.volumes ?? [];
    return volumes.length
      ? recordOpenFiles(`the volumes ${ROLLBACK_VOLUMES_FIELD} names`, (pids) => captureVolumeFiles(pids, volumes))
      : undefined;
  };
  try {
    // Before the freeze: no tmpfs with room refuses the checkpoint with the container untouched.
    // The emptyDirs' archives are written there too, before they are sealed.
    if (storeKey)
      scratch = await makeScratch((await dumpSizeEstimate(c.pid)) + volumes.reduce((a, v) => a + v.bytes, 0));
    else if (
      req.leaveRunning &&
      !chunking &&
      !req.dumpedImages &&
      (req.stageInMemory ?? ctx.settings.stageDumpsInMemory)
    ) {
      // The job waits while CRIU writes its pages: into memory when they fit (core/dump-staging.ts).
      const s = await memoryStaging(c.pid);
      if ('scratch' in s) scratch = staged = s.scratch;
      else log.info({ phase: 'checkpoint', why: s.why }, 'dump staged on disk, not in memory');
    }
    let t = Date.now();
    const criuDir = path.join(staging.dir, CRIU_DIR);
    // Sealing: CRIU and the layer capture write plaintext to the tmpfs
    // scratch only; the sealer encrypts from there into the staging dir as
    // they write (a chunk at a time, on a worker thread or this one: SealFollower), so the freeze does
    // not wait for a separate encryption pass.
    const dumpDir = scratch ? path.join(scratch.dir, CRIU_DIR) : criuDir;
    const diffDir = scratch ? scratch.dir : staging.dir;
    if (scratch && sealKey) {
      sealer = new SealFollower(
        [
          { dir: dumpDir, pattern: CONTENT_IMAGE_NAME, prefix: `${CRIU_DIR}/` },
          { dir: scratch.dir, pattern: LAYER_ARCHIVE },
        ],
        staging.dir,
        sealKey,
        sealId,
        { writeback: ctx.settings.fsync, direct: ctx.settings.sealDirect },
      );
    }
    const known = new Map<string, Digest>();
    // The writable layer, captured while nothing can write to it; and (shared mode) the sizes of the
    // files the job holds open in its work directory, which a restore cuts back to (core/work-files.ts).
    const captureShm = async () => {
      if (!shmSource) return;
      const s = await captureDevShm(shmSource, diffDir);
      if (s.skipped.length)
        log.info({ phase: 'rootfs', skipped: s.skipped }, '/dev/shm entries that are not files left out');
      devShm = { files: s.files, bytes: s.bytes };
    };
    const captureVolumes = async () => {
      if (!volumes.length) return;
      const v0 = Date.now();
      const recs: VolumeRecord[] = [];
      for (const [i, { volume: v }] of volumes.entries()) {
        const r = await captureVolume(v.source, path.join(diffDir, volumeTar(i))).catch((err: unknown) => {
          throw new Error(
            `the pod's emptyDir at ${v.destination} (${v.source}) could not be read: ${errorMessage(err)}`,
          );
        });
        if (r.skipped.length)
          log.info(
            { phase: 'rootfs', volume: v.destination, skipped: r.skipped },
            'emptyDir entries that are not files left out',
          );
        const pod = podUidOf(v.source);
        recs.push({ destination: v.destination, ...(pod ? { pod } : {}), files: r.files, bytes: r.bytes });
      }
      timings.volumes = Date.now() - v0;
      // Part of the job's stall when it is left running: its size is worth seeing.
      log.info(
        { phase: 'rootfs', volumes: recs, durationMs: timings.volumes },
        "the pod's emptyDir volumes captured with the layer",
      );
      volumeRecords = recs;
    };
    /** The pod's /dev/shm, captured at CRIU's post-dump action when a gate holds CRIU there. */
    let shmCaptured: Promise<void> | undefined;
    const captureRootfs = async () => {
      const c0 = Date.now();
      const work = workDir && captureWorkFilesOf(workDir);
      const vols = captureVolumeFilesNow();
      try {
        const [diff] = await Promise.all([
          upper ? captureDiff(upper, diffDir) : emptyDiff(diffDir),
          captureVolumes(),
          // Without a gate (none installed, or a paused container): during the dump, as near as this gets.
          (await criuAsked).actionScript ? undefined : captureShm(),
          keepFileContents([work, vols], path.join(diffDir, KEPT_FILES)),
        ]);
        return diff;
      } finally {
        workFiles = await work; // closed on the failure path below
        volumeFiles = await vols;
        timings.rootfsCapture = Date.now() - c0;
        const crowded = [
          ...(workFiles?.closed.more ? ['the work dir'] : []),
          ...(volumeFiles?.records ?? []).filter((r) => r.closedMore).map((r) => `the volume at ${r.destination}`),
        ];
        for (const where of crowded)
          log.warn(
            { phase: 'rootfs', where, max: CLOSED_FILES_MAX },
            `${where} holds more than ${CLOSED_FILES_MAX} files and directories: those past them are not recorded, a restore does not cut them back if the lost run appended to them, and moves nothing it made aside`,
          );
      }
    };
    /**
     * The contents of the files the job rewrites in place (a database), and of its small results files,
     * in its work dir and its own volumes, read while it is stopped: a restore writes them back whole
     * (core/work-files.ts).
     */
    const keepFileContents = async (
      places: (Promise<{ keepContents(sink: KeptFilesSink): Promise<void> } | undefined> | undefined)[],
      file: string,
    ) => {
      const k0 = Date.now();
      const writer = await keptFilesWriter(file, ctx.settings.keptFilesMaxBytes);
      try {
        for (const p of places) await (await p)?.keepContents(writer.sink);
      } finally {
        await writer.close();
      }
      if (writer.bytes()) {
        timings.keptFiles = Date.now() - k0;
        log.info(
          { phase: 'rootfs', bytes: writer.bytes(), durationMs: timings.keptFiles },
          'files the job holds open kept whole with the checkpoint (rewritten in place, or small)',
        );
      }
      if (writer.left())
        log.warn(
          { phase: 'rootfs', bytes: writer.left(), limit: ctx.settings.keptFilesMaxBytes },
          `files the job rewrites in place hold more than ${KEPT_FILES_MAX_FIELD} in all (with its small open files): not kept with the checkpoint (a restore after the job changed them starts it fresh). Fix: raise ${KEPT_FILES_MAX_FIELD} in the node settings (unlimited: no limit)`,
        );
    };
    let captured: ReturnType<typeof captureRootfs> | undefined;
    /** Its own error first (CRIU's says only that the script failed), saying what it was for. */
    const shmCapturedOrThrow = async () => {
      await shmCaptured?.catch((err: unknown) => {
        throw new Error(`the pod's /dev/shm could not be captured while CRIU held the job: ${errorMessage(err)}`, {
          cause: err,
        });
      });
    };
    /**
     * CRIU held at its post-dump action (every task dumped, none resumed):
     * the pod's /dev/shm captured, then CRIU let go (or made to fail the
     * dump when `ok` is false or the capture failed). A job holding a file
     * there under a name it no longer has (glibc's sem_open makes each
     * semaphore under a temporary name and links it to its own:
     * multiprocessing's forkserver and spawn workers) needs CRIU's link
     * remap, a second name CRIU makes for that file during the dump and
     * removes once it lets the tasks go (or, left running, at once): it must
     * be in the archive, as a hard link, for the restore to find it.
     */
    const shmAtPostDump = async (g: LayerGate, ended: Promise<'ended'>, ok: Promise<boolean>) => {
      if ((await Promise.race([g.when('post-dump').then(() => 'post-dump' as const), ended])) !== 'post-dump') return;
      if (shmSource) shmCaptured = captureShm();
      const shmOk = await (shmCaptured ?? Promise.resolve()).then(
        () => true,
        () => false,
      );
      g.release((await ok) && shmOk);
    };
    /** After a dump that passed the gate: CRIU ran it (a gate script that is not run fails nothing by itself). */
    const shmMissing = () => {
      if (shmSource && !shmCaptured)
        throw new Error("CRIU dumped without running ARCH's gate: the pod's /dev/shm was not captured");
    };
    /**
     * Left running: runc and CRIU start while the job runs; CRIU freezes it,
     * and the layer is captured while CRIU holds the tasks stopped (from its
     * network lock, or its post-dump action, until the capture is done). CRIU
     * resumes them: if this process dies, the gate fails and CRIU resumes them
     * all the same (the guard covers a death before the script opened it).
     */
    const dumpGated = async (dumpDir: string, workPath: string) => {
      const g = await LayerGate.open();
      guard = armGuard(dumpDir, g.dir);
      const dumped = c.runc.checkpoint(req.id, {
        imagePath: dumpDir,
        workPath,
        leaveRunning: true,
        signal: req.signal,
        env: { ...(await criuAsked).env, ...g.env() },
        extra: (await criuAsked).runcArgs,
      });
      dumped.catch(() => undefined); // awaited below
      const ran = Date.now();
      const ended = dumped.then(
        () => 'ended' as const,
        () => 'ended' as const,
      );
      if ((await Promise.race([g.when('any').then(() => 'stopped' as const), ended])) === 'stopped') {
        // The tasks are stopped from here until the gate opens.
        captured = captureRootfs();
        const layerOk = captured.then(
          () => true,
          () => false,
        );
        await shmAtPostDump(g, ended, layerOk);
      }
      const failed = await dumped.then(
        () => undefined,
        (err: unknown) => err,
      );
      g.release(false); // runc ended before post-dump: nothing waits; a no-op once released
      guard.disarm();
      await g.close();
      // Its own error first (CRIU's says only that the script failed), saying what it was for.
      if (captured)
        await captured.catch((err: unknown) => {
          throw new Error(`the writable layer could not be captured while CRIU held the job: ${errorMessage(err)}`, {
            cause: err,
          });
        });
      await shmCapturedOrThrow();
      if (failed) throw await dumpError(failed, workPath);
      if (!captured) throw new Error('CRIU dumped without running the layer gate: the writable layer was not captured');
      shmMissing();
      // What the job felt: CRIU's own freeze-to-resume, from its log; runc's whole run if the log says nothing.
      const log = await fsp.readFile(path.join(workPath, 'dump.log'), 'utf8').catch(() => '');
      freezeMs = criuStallMs(log) ?? Date.now() - ran;
    };
    req.onProgress?.({ phase: 'dump' });
    if (req.dumpedImages) {
      if (scratch)
        await copyDir(req.dumpedImages, dumpDir); // runc's own dump: sealed from a copy like any other
      else await copyDir(req.dumpedImages, criuDir);
    } else {
      timings.prepare = Date.now() - t0; // lock, inspect, staging: before the container is touched
      const workPath = path.join(staging.dir, 'criu-work');
      await fsp.mkdir(dumpDir);
      // Chunked: the page images are cut, hashed, compressed and stored while CRIU writes them
      // (on worker threads where cores are left beside CRIU, else on this thread; left running too,
      // since that is most of a chunked checkpoint's work).
      if (chunkPool)
        chunkFollower = new ChunkFollower(
          dumpDir,
          PAGE_IMAGE_NAME,
          `${CRIU_DIR}/`,
          new ChunkWriter(store.chunkDir(), chunkPool, ctx.settings.fsync),
        );
      if ((await criuAsked).actionScript && req.leaveRunning) {
        await dumpGated(dumpDir, workPath);
      } else {
        // Stopping it, with a pod's /dev/shm: gated at post-dump only, for that capture.
        const g = (await criuAsked).actionScript ? await LayerGate.open() : undefined;
        if (!wasPaused) {
          guard = armGuard(dumpDir, g?.dir);
          frozenAt = Date.now();
          await freeze();
          frozen = true;
        }
        // Hash (and start writing back) the page images while CRIU writes them (sealed: the sealer does both).
        // Not when the job is left running: its stall is what counts, and hashing and
        // fdatasyncs beside CRIU slow the dump (bench/periodic.ts); publishing does both after the thaw.
        // Nor when chunked: the chunks are hashed as they are stored.
        const hashBesideDump = !(scratch || chunking || req.leaveRunning);
        // Frozen (or paused by the user) from here until the kill or thaw. The layer is captured
        // during the dump, on this thread, when nothing hashes beside CRIU; when the hasher runs,
        // CRIU and it have the two cores of these VMs, and a third job (tar, getfattr) slowed the
        // whole dump by more than the capture takes alone (bench/cli.ts): captured after it then,
        // the container still frozen (it is killed, never thawed, on this path).
        if (!hashBesideDump) {
          captured = captureRootfs();
          captured.catch(() => undefined); // awaited below
        }
        const follower = hashBesideDump
          ? await DigestFollower.start(criuDir, PAGE_IMAGE_NAME, { writeback: ctx.settings.fsync })
          : undefined;
        let held: Promise<void> | undefined;
        try {
          const dumped = c.runc.checkpoint(req.id, {
            imagePath: dumpDir,
            workPath,
            leaveRunning: true,
            signal: req.signal,
            env: { ...(await criuAsked).env, ...g?.env() },
            extra: (await criuAsked).runcArgs,
          });
          dumped.catch(() => undefined); // awaited next
          const ended = dumped.then(
            () => 'ended' as const,
            () => 'ended' as const,
          );
          held = g && shmAtPostDump(g, ended, Promise.resolve(true));
          await dumped;
          await held;
          if (g) shmMissing();
          if (req.leaveRunning) {
            await captured;
            await thawNow();
          }
        } catch (err) {
          await follower?.cancel();
          await captured?.catch(() => undefined);
          await held;
          await shmCapturedOrThrow(); // the gate made CRIU fail: this says why
          throw await dumpError(err, workPath);
        } finally {
          g?.release(false); // a no-op once released
          await g?.close();
        }
        const tail = Date.now();
        if (follower) for (const [name, d] of await follower.finish()) known.set(`${CRIU_DIR}/${name}`, d);
        timings.hashTail = Date.now() - tail; // hashing left when CRIU was done (part of dump)
      }
    }
    // CRIU would restore a periodic timerfd that had fired unread disarmed (core/criu-timerfd.ts). A dump
    // handed in (containerd's) was rearmed where runc made it, before its copy here (shim/main.ts).
    const rearmed = req.dumpedImages ? 0 : await rearmFiredTimerfds(dumpDir);
    if (rearmed)
      log.info({ phase: 'dump', timerfds: rearmed }, 'periodic timerfds that had fired unread rearmed in the images');
    lap('dump', t);
    t = Date.now();
    req.onProgress?.({ phase: 'rootfs' });
    const diff = await (captured ?? captureRootfs());
    if (!upper) log.warn({ phase: 'rootfs' }, 'rootfs is not an overlay mount: no writable layer to capture');
    let seal: Manifest['seal'];
    if (scratch && sealer) {
      const s0 = Date.now();
      seal = { id: sealId, files: await finishSealing(sealer, scratch, staging.dir, known) };
      sealer = undefined;
      timings.sealTail = Date.now() - s0; // sealing left when CRIU and the layer capture were done
    } else if (staged) {
      const m0 = Date.now();
      await moveStaged(staged.dir, staging.dir);
      await staged.remove();
      timings.unstage = Date.now() - m0; // from memory to the store's staging dir, the job running
    } else if (scratch) {
      await copyMetadata(scratch, staging.dir); // chunked with a key: the large files are chunked from the scratch
    }
    await fsp.writeFile(path.join(staging.dir, SPEC_FILE), JSON.stringify(c.spec));
    // The recorded sizes must outlive the node, as the checkpoint does.
    await workFiles?.sync(ctx.settings.fsync);
    await volumeFiles?.sync(ctx.settings.fsync);
    lap('rootfs', t);
    req.signal?.throwIfAborted();
    t = Date.now();
    req.onProgress?.({ phase: 'publish' });
    const versions = await versionsAsked;
    // A node that lost the job (it runs elsewhere now, or this node was declared dead) must not
    // replace the new owner's checkpoint with its stale one: looked at right before the commit.
    let leaseBefore: Lease | undefined;
    const mine = ownNodeNames(ctx.settings);
    // (Read before the chunks' tail was, it waited ~50-90 ms on a format-2 checkpoint for CPU the chunk workers held.)
    const checkLease = async () => {
      leaseBefore = await leaseOf(store, trustOf(ctx.settings), log);
      const refusal = leaseRefusal(leaseBefore, mine, `${req.namespace}/${req.id}`);
      if (refusal) throw new Error(`checkpoint not published: ${refusal}`);
    };
    const cpu = await checkpointCpu(cpuBeforeDump, req.leaveRunning ? jobCpu() : undefined);
    const pub = await store.publish(
      staging,
      {
        formatVersion: seal ? SEALED_FORMAT_VERSION : FORMAT_VERSION,
        namespace: req.namespace,
        containerId: req.id,
        ...(c.contract.checkpointId ? { checkpointId: c.contract.checkpointId } : {}),
        image: req.image,
        owner: await ownerAsked,
        ...(cpu ? { cpu } : {}),
        node: ctx.settings.nodeName,
        createdAt: new Date().toISOString(),
        mode: c.contract.mode,
        leaveRunning: !!req.leaveRunning,
        runtime: { ...versions, networkLock: (await criuAsked).networkLock },
        timingsMs: timings,
        ...(freezeMs !== undefined ? { freezeMs } : {}),
        rootfs: { files: diff.files, bytes: diff.bytes, deletions: diff.deletions },
        ...(devShm ? { devShm } : {}),
        ...(volumeRecords.length ? { volumes: volumeRecords } : {}),
        ...(volumesLeft.length ? { volumesLeft } : {}),
        ...(workFiles ? { workFiles: workFiles.files } : {}),
        ...(workFiles ? { closedWorkFiles: workFiles.closed.files } : {}),
        ...(workFiles ? { closedWorkNonFiles: workFiles.closed.nonFiles ?? [] } : {}),
        ...(workFiles?.closed.links ? { closedWorkLinks: workFiles.closed.links } : {}),
        ...(workFiles?.closed.more ? { closedWorkFilesMore: true as const } : {}),
        ...(volumeFiles?.records.length ? { volumeFiles: volumeFiles.records } : {}),
        ...(seal ? { seal } : {}),
      },
      {
        fsync: ctx.settings.fsync,
        onPhase: (p, ms) => (timings[p] = ms),
        known,
        deferPrune: true,
        trust: trustOf(ctx.settings),
        beforeCommit: checkLease,
        ...(chunking
          ? {
              chunk: {
                from: scratch?.dir ?? staging.dir,
                keys: chunkKeys,
                keep: ctx.settings.keep,
                ...(chunkFollower ? { follower: chunkFollower } : {}),
              },
            }
          : {}),
      },
    );
    published = true;
    await chunkPool?.close();
    if (pub.unsignedBecause) {
      log.error(
        { phase: 'checkpoint', reason: 'unsigned', err: pub.unsignedBecause, dir: pub.dir },
        'checkpoint published UNSIGNED: no node restores it (unless ARCH_ACCEPT_UNSIGNED=1); give this node its signing key',
      );
    }
    lap('publish', t);
    // Stopped by this checkpoint: delete must keep it (the shim reads this).
    // A container left running is not: if it later exits by itself, its job is done.
    if (!req.leaveRunning) await updateShimState(c.runc.root, req.id, { checkpointed: true });

    t = Date.now();
    if (!req.dumpedImages) {
      if (!req.leaveRunning) {
        await killFrozen();
      } else {
        await thawNow(); // done already after the dump; a container the user had paused stays paused
      }
      frozen = false;
      guard?.disarm();
    }
    lap('stop', t);
    // Stopped (not merely frozen) with its checkpoint: parked, for any node that sees the storage to restore.
    if (!req.leaveRunning && leaseBefore?.state === 'running' && mine.has(leaseBefore.node))
      await writeLease(store, parkedLease(leaseBefore, ctx.settings.nodeName, 'checkpointed'), trustOf(ctx.settings), {
        namespace: req.namespace,
        key: checkpointKeyOf(c.contract, req.id),
      }).catch((e) => log.warn({ phase: 'checkpoint', err: errorMessage(e) }, 'could not record the job as parked'));
    // The container is stopped (or running again): only now drop the checkpoint this one replaces.
    await pub
      .prune()
      .catch((e) =>
        log.warn({ phase: 'checkpoint', err: errorMessage(e) }, 'could not remove the previous checkpoint'),
      );
    // The second names of the job's files kept for the checkpoints the store still has (core/closed-files.ts).
    workFiles?.settleLinks(ctx.settings.keep);
    volumeFiles?.settleLinks(ctx.settings.keep);
    await scratch?.remove();
    const totalMs = Date.now() - t0;
    log.info(
      { phase: 'checkpoint', durationMs: totalMs, freezeMs, sizeBytes: pub.sizeBytes, timings, dir: pub.dir },
      'checkpoint published',
    );
    return {
      namespace: req.namespace,
      id: req.id,
      node: ctx.settings.nodeName,
      dir: pub.dir,
      containerDir,
      manifest: pub.manifest,
      sizeBytes: pub.sizeBytes,
      timings,
      totalMs,
      ...(freezeMs !== undefined ? { freezeMs } : {}),
      ...(pub.chunkStats ? { chunkStats: pub.chunkStats } : {}),
    };
  } catch (err) {
    await workFiles?.close();
    await volumeFiles?.close();
    workFiles?.settleLinks(undefined);
    volumeFiles?.settleLinks(undefined);
    await sealer?.cancel();
    await chunkFollower?.cancel().catch(() => undefined);
    await chunkPool?.close();
    await scratch?.remove().catch(() => undefined);
    if (!published) await store.abort(staging).catch(() => undefined);
    if (frozen) {
      // Nothing was published: let the job go on as if we had never come.
      await thaw().catch((e) => {
        log.error({ phase: 'checkpoint', err: errorMessage(e) }, 'could not thaw container after a failed checkpoint');
        guard?.handOver(); // its watcher goes on trying
      });
    }
    guard?.disarm();
    log.error(
      { phase: 'checkpoint', durationMs: Date.now() - t0, err: errorMessage(err) },
      'checkpoint failed; previous checkpoint (if any) kept',
    );
    throw err;
  } finally {
    await workDir?.close();
  }
}

/**
 * The CPU a checkpoint records: the job's (cpuOfJob) as it was before the
 * dump, and, for a job left running, as it is after it too (a process it
 * started meanwhile may be in the dump): this node's where they differ, or
 * where either cannot be told.
 */
async function checkpointCpu(
  before: Promise<CpuRecord | undefined>,
  after: Promise<CpuRecord | undefined> | undefined,
): Promise<CpuRecord | undefined> {
  const [b, a] = await Promise.all([before.catch(() => undefined), after?.catch(() => undefined)]);
  if (!b || (after && (!a || a.features.join(' ') !== b.features.join(' ') || a.arch !== b.arch))) return thisCpu();
  return b;
}

/**
 * The end of a sealed dump: the rest of each file sealed, the small CRIU
 * images and the deletion list (metadata CRIU parses / file names, not
 * memory or file contents) copied beside them, the ciphertexts' digests
 * handed to the manifest. The plaintext stays in the scratch dir, removed
 * by the caller on every path.
 */
async function finishSealing(
  sealer: SealFollower,
  scratch: Scratch,
  stagingDir: string,
  known: Map<string, Digest>,
): Promise<SealedFile[]> {
  const files: SealedFile[] = [];
  for (const [rel, r] of await sealer.finish()) {
    known.set(rel, r.stored);
    files.push(r.sealed);
  }
  await copyMetadata(scratch, stagingDir);
  return files;
}

/** The small CRIU images and the deletion list, from the scratch dir into the staging dir (the large files go elsewhere). */
async function copyMetadata(scratch: Scratch, stagingDir: string): Promise<void> {
  const dumpDir = path.join(scratch.dir, CRIU_DIR);
  await fsp.mkdir(path.join(stagingDir, CRIU_DIR), { recursive: true });
  for (const e of await fsp.readdir(dumpDir, { withFileTypes: true }).catch(() => [])) {
    if (e.isFile() && !CONTENT_IMAGE_NAME.test(e.name))
      await fsp.copyFile(path.join(dumpDir, e.name), path.join(stagingDir, CRIU_DIR, e.name));
  }
  await fsp.copyFile(path.join(scratch.dir, DELETED_FILES), path.join(stagingDir, DELETED_FILES));
}

async function emptyDiff(dir: string) {
  await fsp.writeFile(path.join(dir, ROOTFS_TAR), Buffer.alloc(1024));
  await fsp.writeFile(path.join(dir, DELETED_FILES), JSON.stringify({ whiteouts: [], opaque: [] }));
  return { files: 0, bytes: 0, deletions: 0, skipped: [] as string[] };
}

/** Hard-link when on the same filesystem (free), copy otherwise. */
async function copyDir(from: string, to: string): Promise<void> {
  await fsp.mkdir(to, { recursive: true });
  for (const e of await fsp.readdir(from, { withFileTypes: true })) {
    const src = path.join(from, e.name);
    const dst = path.join(to, e.name);
    if (e.isDirectory()) await copyDir(src, dst);
    else if (e.isFile()) await fsp.link(src, dst).catch(() => fsp.copyFile(src, dst));
  }
}
