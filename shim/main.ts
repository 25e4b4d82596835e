/**
 * arch-runc, Node side. The front (shim/arch-runc.c) execs the real runc
 * directly for everything that is not ARCH's business and starts this only for
 * `create` of a container whose spec mentions ARCH_ENABLE, for
 * start/checkpoint/delete of containers this shim created, and for checkpoint
 * and restore of any container that the caller gave no --criu (the node's
 * CRIU and its environment are added, nothing else).
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { checkpointContainer } from '../core/checkpoint.js';
import { createNodeContext, type NodeContext } from '../core/context.js';
import {
  checkpointDirOf,
  checkpointKeyOf,
  workDirOf,
  checkpointStoreOf,
  contractOptions,
  ENV,
  envListToMap,
  parseContract,
  rollbackVolumePaths,
  type EnabledContract,
} from '../core/env-contract.js';
import { grownVolumeFileFix } from '../core/volume-files.js';
import { ArchInputError, CheckpointUnusableError, errorMessage } from '../contract/errors.js';
import { formatS3Url, parseS3Url } from '../core/s3-location.js';
import { S3CheckpointStore } from '../core/s3-store.js';
import { validateContainerId, validateNamespace } from '../contract/ids.js';
import {
  hostUserOf,
  joinedPidNamespace,
  readSpec,
  withCheckpointableRuntimes,
  withWorkdirMount,
  writeSpec,
  type OciSpec,
} from '../core/oci-spec.js';
import { restoreFromCheckpoint } from '../core/restore.js';
import {
  containerIdOf,
  namespaceOfRoot,
  optionString,
  parseRuncArgs,
  splitDetachedRun,
  type RuncCall,
} from '../core/runc-args.js';
import { Runc } from '../core/runc.js';
import { criuRunEnv } from '../core/criu-network-lock.js';
import {
  ARCH_STATE_FILE,
  awaitRecordedExit,
  KILLED_FILE,
  recordExit,
  initRunning,
  markRestored,
  readShimState,
  recordedExit,
  runningHolderOf,
  startRestored,
  writeShimState,
  removeLeftStateDir,
  type RestoreFailure,
  type ShimState,
} from '../core/shim-state.js';
import { finishedPredecessor, newerOwner, stoppedReason } from '../core/checkpoint-holder.js';
import { rearmFiredTimerfds } from '../core/criu-timerfd.js';
import { CheckpointStore } from '../core/store.js';
import {
  claimNextLease,
  leaseOf,
  leaseRefusal,
  ownNodeNames,
  parkedLease,
  runningLease,
  writeLease,
  type Lease,
} from '../core/lease.js';
import { trustOf } from '../core/trust.js';
import { ticksSinceBoot } from '../core/cpu-features.js';
import { afterEnd, countPredecessor, endOf, type ContainerEnd } from '../core/restore-crashes.js';
import { prepareWorkDir, removeWorkDir, type PreparedWorkDir } from '../core/work-dir.js';
import { runRealRunc, startRealRunc, withNodeCriu } from './passthrough.js';
import type { Foreground } from '../core/foreground.js';
import { forgetMallocTunables } from '../core/malloc-tunables.js';
import { signalCgroupTree } from '../core/cgroup-freezer.js';

export async function main(argv: string[]): Promise<number> {
  let ctx: NodeContext;
  try {
    ctx = createNodeContext('arch-runc');
  } catch (err) {
    // Broken node settings must not stop containers: say why, then be runc.
    process.stderr.write(`arch-runc: ${errorMessage(err)}; passing the call to runc unchanged\n`);
    return runRealRunc(process.env.ARCH_RUNC || 'runc', argv);
  }
  const call = parseRuncArgs(argv);
  const id = containerIdOf(call);
  const pass = async () => {
    const p = await withNodeCriu(ctx.settings, call, () => specOfCall(ctx, call, id));
    return runRealRunc(ctx.settings.runc, p.argv, p.env);
  };
  if (!id) return pass();
  let namespace: string;
  try {
    namespace = validateNamespace(namespaceOfRoot(call.root), 'namespace (from runc --root)');
    validateContainerId(id);
  } catch (err) {
    ctx.log.error(
      {
        phase: call.subcommand,
        container: id,
        namespace: namespaceOfRoot(call.root),
        field: err instanceof ArchInputError ? err.field : undefined,
        err: errorMessage(err),
      },
      'not handling this container: invalid identity; passing through',
    );
    return pass();
  }
  const log = ctx.log.child({ namespace, container: id, phase: call.subcommand });
  try {
    switch (call.subcommand) {
      case 'create':
        return await handleCreate(ctx, call, namespace, id, log);
      case 'run':
        return await handleRun(ctx, call, namespace, id, log);
      case 'start':
        return await handleStart(ctx, call, id, log);
      case 'checkpoint':
        // The front sends checkpoints of other containers too (for the node's CRIU): those pass through.
        return (await readShimState(call.root, id))
          ? await handleCheckpoint(ctx, call, namespace, id, log)
          : await pass();
      case 'delete':
        return await handleDelete(ctx, call, id, log, pass);
      default:
        return pass();
    }
  } catch (err) {
    log.error({ err: errorMessage(err) }, 'unexpected error in arch-runc; passing the call to runc');
    return pass();
  }
}

type Log = NodeContext['log'];

const exists = (p: string) =>
  fsp.access(p).then(
    () => true,
    () => false,
  );

/** The spec of the container a checkpoint or restore concerns (for CRIU's network lock); undefined when unknown. */
async function specOfCall(ctx: NodeContext, call: RuncCall, id: string | undefined): Promise<OciSpec | undefined> {
  const bundle =
    call.subcommand === 'restore'
      ? path.resolve(optionString(call, '--bundle', '-b') ?? process.cwd())
      : id &&
        (await new Runc(ctx.settings, call.root).state(id).then(
          (s) => s.bundle,
          () => undefined,
        ));
  return bundle ? readSpec(bundle).catch(() => undefined) : undefined;
}

/** The globals containerd gave (--log, --log-format, ...) minus the ones Runc sets itself. */
function passGlobals(call: RuncCall): string[] {
  const out: string[] = [];
  for (const [k, v] of call.globals) {
    if (k === '--root' || k === '--criu') continue;
    out.push(v === true ? k : `${k}=${v}`);
  }
  return out;
}

/**
 * `fresh`: what runc gets when the container starts fresh (no checkpoint, a
 * failed restore, ARCH off for it): the create itself, or the `run -d` it
 * stands for, so that runc's own run does it (its errors say "run").
 * `foreground`: a `runc run` without -d, whose call lasts as long as the
 * container and exits with its status.
 */
async function handleCreate(
  ctx: NodeContext,
  call: RuncCall,
  namespace: string,
  id: string,
  log: Log,
  { fresh = call.argv, foreground = false }: { fresh?: string[]; foreground?: boolean } = {},
): Promise<number> {
  const t0 = Date.now();
  // The id is taken (runc's state file is there): runc refuses with its own error. A restore
  // attempt would fail too, and its clean-up would kill and delete the container holding the id.
  if (await exists(path.join(call.root, id, 'state.json'))) return runRealRunc(ctx.settings.runc, fresh);
  // A dir runc failed to remove after the last container of this id (ARCH's files only) would refuse this create.
  if (await removeLeftStateDir(call.root, id))
    log.warn(
      { stateDir: path.join(call.root, id) },
      "removed the state dir of this id's previous container that runc left behind",
    );
  const bundle = path.resolve(optionString(call, '--bundle', '-b') ?? process.cwd());
  const spec = await readSpec(bundle);
  let contract: EnabledContract;
  try {
    const c = parseContract(envListToMap(spec.process?.env), contractOptions(ctx.settings));
    if (!c.enabled) return runRealRunc(ctx.settings.runc, fresh);
    if (c.checkpointId) {
      // Two running containers writing one checkpoint would overwrite each other's progress.
      const holder = await runningHolderOf(call.root, checkpointDirOf(c, namespace, id), id);
      if (holder) {
        throw new ArchInputError(
          ENV.checkpointId,
          `"${c.checkpointId}" is in use by running container ${holder} on this node`,
          `give each running container its own ${ENV.checkpointId} (e.g. the pod name, from the downward API's metadata.name)`,
        );
      }
    }
    contract = c;
    const interval = c.checkpointInterval;
    if (interval && typeof interval === 'object' && 'invalid' in interval) {
      // Only the periodic checkpoints are lost: everything else about ARCH still holds for this container.
      log.error(
        { err: interval.invalid.message, field: interval.invalid.field, fix: interval.invalid.fix },
        `invalid ${interval.invalid.field}; the container starts with ARCH but without periodic checkpoints`,
      );
    }
    const rollback = c.rollbackVolumes;
    if (rollback && 'invalid' in rollback)
      log.error(
        { err: rollback.invalid.message, field: rollback.invalid.field, fix: rollback.invalid.fix },
        `invalid ${rollback.invalid.field}; the container starts with ARCH, but its checkpoints roll back no volume's files`,
      );
  } catch (err) {
    // Bad ARCH_* settings: the container still starts, as if ARCH were off.
    log.error(
      { err: errorMessage(err), field: err instanceof ArchInputError ? err.field : undefined },
      'invalid ARCH configuration; starting the container without ARCH',
    );
    return runRealRunc(ctx.settings.runc, fresh);
  }
  const store = checkpointStoreOf(contract, namespace, id);
  const checkpointDir = store.containerDir;
  // Whose job it is: a copy here while it runs elsewhere (or after this node lost it) is refused.
  let lease: Lease | undefined;
  try {
    lease = await leaseOf(store, trustOf(ctx.settings), log);
  } catch (err) {
    if (!(err instanceof ArchInputError)) throw err;
    lease = undefined; // an unsafe path: refused just below, and the container starts without ARCH
  }
  // This node's names (ownNodeNames reads the settings file): asked once for the lease's checks below.
  const mine = ownNodeNames(ctx.settings);
  const refusal = leaseRefusal(lease, mine, `${namespace}/${id}`);
  if (lease && !refusal) {
    // A crashed predecessor not deleted yet (Kubernetes creates the next container of a pod first) is counted here.
    const crashes = await countPredecessor(call.root, lease, id, mine, ctx.settings.restoreCrashes.windowMs);
    if (crashes !== lease.restoreCrashes) lease = { ...lease, restoreCrashes: crashes };
  }
  if (refusal) {
    log.error(
      {
        reason: 'owned-elsewhere',
        owner: lease!.node,
        generation: lease!.generation,
        state: lease!.state,
        checkpointDir,
      },
      refusal,
    );
    process.stderr.write(`arch-runc: ${refusal}\n`);
    return 1;
  }
  let work: PreparedWorkDir | undefined;
  try {
    if (contract.checkpointId) {
      // Kubernetes restarts a container that exited 0 (restartPolicy Always) before it deletes the
      // old one: the job finished there, so its checkpoint is not where this one starts.
      const finishedIn = await finishedPredecessor(call.root, store, id);
      if (finishedIn) {
        const gone = await store.remove({ namespace, id: finishedIn });
        const finishedWork = workDirOf(contract, namespace, id);
        if (finishedWork)
          await removeWorkDir({ allowedRoot: contract.allowedRoot, workDir: finishedWork }, namespace, finishedIn);
        log.info(
          { predecessor: finishedIn, checkpointDir, removed: gone.removed, why: gone.why },
          `the job finished in container ${finishedIn} (exit 0): its checkpoint ${gone.removed ? 'removed' : `kept (${gone.why})`}, starting fresh`,
        );
      }
    }
    // Walked (and the work dir recorded before it is mounted): a path through a symlink, or inside a work dir, is refused here.
    await store.checkPath();
    work = await prepareWorkDir(contract, namespace, id, ctx.settings.nodeName, hostUserOf(spec));
  } catch (err) {
    if (!(err instanceof ArchInputError)) throw err;
    log.error(
      { err: errorMessage(err), field: err.field },
      'unsafe ARCH host path; starting the container without ARCH',
    );
    return runRealRunc(ctx.settings.runc, fresh);
  }
  // Take the next generation before restoring or starting: of two nodes creating the parked job at once, one wins.
  let claim: { generation: number; refusal?: string };
  try {
    claim = await claimNextLease(
      store,
      lease,
      ctx.settings.nodeName,
      mine,
      id,
      { namespace, key: checkpointKeyOf(contract, id) },
      `${namespace}/${id}`,
    );
  } catch (err) {
    // The store cannot take the claim (full, read-only): as when the lease cannot be written, the job still starts.
    log.warn({ err: errorMessage(err), checkpointDir }, 'could not claim the job for this node');
    claim = { generation: (lease?.generation ?? 0) + 1 };
  }
  if (claim.refusal) {
    await work?.release();
    log.error({ reason: 'owned-elsewhere', generation: claim.generation, checkpointDir }, claim.refusal);
    process.stderr.write(`arch-runc: ${claim.refusal}\n`);
    return 1;
  }
  let started = false;
  try {
    const code = await createHeld(
      ctx,
      call,
      { namespace, id, bundle, spec, contract, store, work, t0, fresh, foreground, lease },
      log,
    );
    started = code === 0 || foreground;
    return code;
  } finally {
    await work?.release();
    // Not started here: the claim is given back, so another node (or a later create) can take the job.
    if (!started)
      await store
        .releaseLeaseClaim(claim.generation)
        .catch((e) => log.warn({ err: errorMessage(e) }, 'could not give back the claim of the job'));
  }
}

/** The rest of create, while the work dir (if any) is held open for runc to mount. */
async function createHeld(
  ctx: NodeContext,
  call: RuncCall,
  c: {
    namespace: string;
    id: string;
    bundle: string;
    spec: OciSpec;
    contract: EnabledContract;
    store: CheckpointStore;
    work: PreparedWorkDir | undefined;
    t0: number;
    fresh: string[];
    foreground: boolean;
    lease: Lease | undefined;
  },
  log: Log,
): Promise<number> {
  const { namespace, id, bundle, spec, contract, store, t0, fresh, foreground } = c;
  // This node runs the job from here on: the next generation, recorded where every node sees it.
  const takeOwnership = (reason: string) =>
    writeLease(store, runningLease(c.lease, ctx.settings.nodeName, id, reason), trustOf(ctx.settings), {
      namespace,
      key: checkpointKeyOf(contract, id),
    }).catch((e) => log.warn({ err: errorMessage(e) }, 'could not record this node as the owner of the job'));
  const checkpointDir = store.containerDir;
  const workDir = c.work?.path;
  let finalSpec = withCheckpointableRuntimes(spec);
  if (contract.mode === 'shared' && c.work)
    finalSpec = withWorkdirMount(finalSpec, c.work.mountSource, contract.workdirContainerPath);
  if (finalSpec !== spec) await writeSpec(bundle, finalSpec);
  const runc = new Runc(ctx.settings, call.root, passGlobals(call));
  const state: ShimState = {
    namespace,
    id,
    checkpointDir,
    workDir,
    allowedRoot: contract.allowedRoot,
    checkpointField: store.guard?.field,
    ...(contract.mode === 's3' ? { checkpointUrl: formatS3Url(contract.s3.loc) } : {}),
    checkpointed: false,
    createdAt: new Date().toISOString(),
  };
  let failure: RestoreFailure | undefined;
  let running: { fg: Foreground; state: ShimState } | undefined;
  try {
    const restored = await restoreFromCheckpoint(ctx, {
      namespace,
      id,
      bundle,
      spec: finalSpec,
      contract,
      runc,
      pidFile: optionString(call, '--pid-file'),
      consoleSocket: optionString(call, '--console-socket'),
      foreground,
      ...(c.work ? { workDir: c.work.mountSource } : {}),
      ...(c.lease?.restoreCrashes
        ? { crashLoop: { crashes: c.lease.restoreCrashes, limit: ctx.settings.restoreCrashes.limit } }
        : {}),
    });
    if (restored) {
      const restoredState: ShimState = {
        ...state,
        restoredFrom: restored.checkpointDir,
        restoredCpu: { ...(restored.manifest.cpu ? { cpu: restored.manifest.cpu } : {}), atTicks: ticksSinceBoot() },
      };
      if (restored.running) running = { fg: restored.running, state: restoredState };
      const recorded = writeShimState(call.root, restoredState);
      // The start that follows is ARCH's (the front's), which lets held processes go on.
      const marked = running ? Promise.resolve() : markRestoredOrGoOn(call.root, id, restored.heldIn, log);
      // This container carries the job on: its clean exit may remove the checkpoint, a predecessor's may not.
      const heldBy = store
        .takeOver({ namespace, key: checkpointKeyOf(contract, id), containerId: id, node: ctx.settings.nodeName })
        .catch((e) => log.warn({ err: errorMessage(e) }, "could not record this container as the checkpoint's holder"));
      // Written side by side: a held job waits for all of them (and the start) before it goes on.
      const owned = takeOwnership('restored');
      // In the foreground the container runs already (and may be gone with its state dir): not a failed restore.
      await Promise.all([
        running ? recorded.catch((e) => log.warn({ err: errorMessage(e) }, 'could not record shim state')) : recorded,
        marked,
        heldBy,
        owned,
      ]);
      log.info(
        {
          durationMs: Date.now() - t0,
          timings: restored.timings,
          checkpoint: restored.checkpointDir,
          from: restored.manifest.node,
        },
        'restored from checkpoint',
      );
      if (!running) return 0;
      if (call.options.has('--keep'))
        log.warn('runc restore has no --keep: the restored container is deleted when it exits, as without --keep');
    } else {
      log.info({ checkpointDir }, 'no checkpoint; creating fresh');
    }
  } catch (err) {
    failure = {
      ...restoreFailureOf(err, finalSpec, rollbackVolumePaths(contract)),
      at: new Date().toISOString(),
      checkpointDir,
    };
    log.error(
      { reason: failure.reason, err: failure.message, checkpointDir },
      'checkpoint not restored; starting the container fresh',
    );
  }
  if (running) return finishForeground(ctx, call, id, running.fg, running.state, log);
  if (foreground) {
    const fg = startRealRunc(ctx.settings.runc, fresh);
    // runc makes the container's state dir: the shim state goes in there once it exists.
    const made = await stateDirOrExit(call.root, id, fg);
    const started: ShimState = { ...state, lastRestoreFailure: failure };
    if (made) await takeOwnership('started');
    if (made)
      await writeShimState(call.root, started).catch((e) =>
        log.warn({ err: errorMessage(e) }, 'could not record shim state'),
      );
    return finishForeground(ctx, call, id, fg, made ? started : undefined, log);
  }
  const code = await runRealRunc(ctx.settings.runc, fresh);
  if (code === 0) {
    await takeOwnership('started');
    await writeShimState(call.root, { ...state, lastRestoreFailure: failure }).catch((e) =>
      log.warn({ err: errorMessage(e) }, 'could not record shim state'),
    );
  }
  return code;
}

/**
 * Why a restore failed, in a word the log and `arch-cli ls` can be searched
 * by. A restored pid that is taken (CRIU "Can't fork for N: File exists") is
 * a PID namespace the container shares with others (a pod's): no retry of
 * this checkpoint can work there, and the fresh start is the outcome.
 */
export function restoreFailureReason(err: unknown): string {
  if (err instanceof CheckpointUnusableError) return err.reason;
  return /Can't fork for \d+: File exists/.test(errorMessage(err)) ? 'pid-in-use' : 'restore-failed';
}

/**
 * The reason and a message that says what to change. CRIU's "Can't fork for
 * N" alone does not tell a pod's owner that the PID is held in the pod's
 * shared PID namespace: by a zombie its PID 1 did not reap (a sandbox image
 * that is not a real pause), or by a live process of another container. The
 * restore cannot take another PID (the processes keep theirs), so no retry
 * helps: the container starts fresh, with this reason shown by `arch-cli ls`.
 */
export function restoreFailureOf(
  err: unknown,
  spec: OciSpec,
  rollbackVolumes: readonly string[] = [],
): { reason: string; message: string } {
  const reason = restoreFailureReason(err);
  const message = errorMessage(err);
  const grown = reason === 'restore-failed' ? grownVolumeFileFix(message, spec, rollbackVolumes) : undefined;
  if (grown) return { reason, message: `${grown}. runc: ${message}` };
  if (reason !== 'pid-in-use') return { reason, message };
  const pid = /Can't fork for (\d+)/.exec(message)?.[1] ?? '?';
  const explained = joinedPidNamespace(spec)
    ? `PID ${pid} of the checkpoint is taken in the PID namespace this container shares with its pod ` +
      `(shareProcessNamespace: true / CRI namespace_options.pid = POD): by a zombie that the pod's PID 1 did not reap, ` +
      `or by another container's process. Fix: give the container its own PID namespace ` +
      `(shareProcessNamespace: false: its PIDs are then always free), or use a sandbox (pause) image whose PID 1 ` +
      `reaps zombies and no other container in the pod that could hold the PID`
    : `PID ${pid} of the checkpoint is taken in the container's PID namespace`;
  return { reason, message: `${explained}. runc: ${message}` };
}

/**
 * `runc run -d` restores like create + start. In the foreground (no -d) it
 * is `runc restore` in the foreground (runc stays the container's parent,
 * relays its stdio, forwards signals and exits with its status), or the run
 * itself when the container starts fresh.
 */
async function handleRun(ctx: NodeContext, call: RuncCall, namespace: string, id: string, log: Log): Promise<number> {
  if (!(call.options.has('-d') || call.options.has('--detach')))
    return handleCreate(ctx, call, namespace, id, log, { foreground: true });
  const { create } = splitDetachedRun(call, id);
  const code = await handleCreate(ctx, parseRuncArgs(create), namespace, id, log, {
    fresh: call.argv,
  });
  // Started fresh, runc's run has started it; a restored container is started here, as by its start.
  if (code === 0 && (await startRestored(call.root, id))) log.info('restored container started');
  return code;
}

/**
 * The start of a restored container: its held processes go on (the front
 * does the same for containerd's calls, without Node). Others are runc's.
 */
async function handleStart(ctx: NodeContext, call: RuncCall, id: string, log: Log): Promise<number> {
  if (await startRestored(call.root, id)) {
    log.info('restored container started');
    return 0;
  }
  return runRealRunc(ctx.settings.runc, call.argv);
}

/**
 * Mark a restored container for its start. Where the mark cannot be
 * written, held processes go on now: a job is never left stopped for a
 * start that would not know to let it go on.
 */
async function markRestoredOrGoOn(root: string, id: string, heldIn: string | undefined, log: Log): Promise<void> {
  try {
    await markRestored(root, id, heldIn);
  } catch (err) {
    log.warn(
      { err: errorMessage(err) },
      'could not mark the restored container for its start; its processes go on now',
    );
    if (heldIn) await signalCgroupTree(heldIn, 'SIGCONT').catch(() => undefined);
  }
}

/**
 * Dumps whose image directory lacks memory pages: they are in the parent
 * (--parent-path: ARCH copies no symlink), or were sent to a page server or
 * lazy-pages daemon. An ARCH checkpoint made of them would not restore.
 */
const PARTIAL_DUMP_OPTIONS = ['--parent-path', '--lazy-pages', '--page-server'];

/** containerd asked runc for a checkpoint: give it one, and publish an ARCH checkpoint from the same images. */
async function handleCheckpoint(
  ctx: NodeContext,
  call: RuncCall,
  namespace: string,
  id: string,
  log: Log,
): Promise<number> {
  const imagePath = optionString(call, '--image-path');
  // Ask for the bundle first: runc forgets the container once it is dumped.
  const bundle = await new Runc(ctx.settings, call.root).state(id).then(
    (s) => s.bundle,
    () => undefined,
  );
  // The dump containerd asked for needs ARCH's CRIU and its VM quirk setting too.
  const argv = call.globals.has('--criu') ? call.argv : ['--criu', ctx.settings.criu, ...call.argv];
  const spec = bundle ? await readSpec(bundle).catch(() => undefined) : undefined;
  const code = await runRealRunc(ctx.settings.runc, argv, (await criuRunEnv(ctx.settings, spec)).env);
  if (code !== 0 || !imagePath || !bundle || call.options.has('--pre-dump')) return code;
  // The images containerd keeps restore with the job's periodic timers armed too (core/criu-timerfd.ts).
  await rearmFiredTimerfds(imagePath).catch((e) =>
    log.warn({ err: errorMessage(e), imagePath }, 'could not rearm the fired periodic timerfds in the images'),
  );
  const partial = PARTIAL_DUMP_OPTIONS.filter((o) => call.options.has(o));
  if (partial.length > 0) {
    log.warn(
      { options: partial, imagePath },
      'checkpoint done as asked; its images are not complete by themselves (pages elsewhere), so no ARCH checkpoint was published from them',
    );
    return code;
  }
  try {
    await checkpointContainer(ctx, {
      namespace,
      id,
      runcRoot: call.root,
      bundle,
      dumpedImages: imagePath,
      leaveRunning: call.options.has('--leave-running'),
    });
  } catch (err) {
    // containerd's own checkpoint succeeded; ARCH's copy failing must not fail it.
    log.error({ err: errorMessage(err) }, 'containerd checkpoint done, but the ARCH checkpoint could not be published');
  }
  return code;
}

/**
 * How long delete waits for the worker to record an exit it has not recorded
 * yet. It normally lands within milliseconds of the exit; the wait only runs
 * when a worker is alive and nothing else already says to keep the checkpoint.
 */
const EXIT_RECORD_WAIT_MS = 1000;

/**
 * After a clean exit (code 0) the job is over: its checkpoint and work dir go.
 * After a checkpoint, a kill from outside (a drain, an operator), an OOM kill
 * or a non-zero exit they stay, so the container continues from its last
 * checkpoint when it is created again. runc is never told the exit code: it
 * comes from containerd's exit event, recorded by the node's worker
 * (recordExit). Without a worker to record it, an exit by itself counts as
 * clean. A checkpoint named with ARCH_CHECKPOINT_ID that a newer container
 * has written to since stays too.
 */
async function handleDelete(
  ctx: NodeContext,
  call: RuncCall,
  id: string,
  log: Log,
  pass: () => Promise<number>,
): Promise<number> {
  const s = await readShimState(call.root, id);
  if (!s) return pass();
  // `delete --force` of a container still running kills it: not a job that finished.
  const forced = (call.options.has('--force') || call.options.has('-f')) && (await initRunning(call.root, id));
  const stopped = forced ? 'force-deleted while running' : await stoppedReason(call.root, id, s.checkpointed);
  // Otherwise only its exit code can tell a crash (keep) from a finished job: wait for the worker to write it.
  const { exit, waitedMs } = stopped
    ? { exit: await recordedExit(call.root, id), waitedMs: 0 }
    : await awaitRecordedExit(call.root, id, EXIT_RECORD_WAIT_MS, () =>
        log.info({ timeoutMs: EXIT_RECORD_WAIT_MS }, 'exit code not recorded yet: waiting for the worker'),
      );
  if (waitedMs > 0)
    log.info(
      { waitedMs, exitStatus: exit?.exitStatus },
      exit ? 'exit code arrived after delete began' : 'no exit code recorded in time: counting the exit as clean',
    );
  const keptBecause = stopped ?? (exit && exit.exitStatus !== 0 ? `exited with code ${exit.exitStatus}` : undefined);
  await settleCheckpoint(ctx, s, id, keptBecause, exit?.exitStatus, endOf(stopped, exit), log);
  const code = await pass();
  // runc's delete leaves the dir when an ARCH file lands in it as it removes it (a late exit record): finished here.
  if (await removeLeftStateDir(call.root, id)) {
    log.info(
      { runcExit: code },
      'runc left the state dir behind holding only ARCH files: removed, the container is deleted',
    );
    return 0;
  }
  return code;
}

/**
 * The checkpoint and work dir of a container that is gone: kept for the
 * reason given (stopped, crashed), else removed, the job being done, unless
 * another container carries the job on now.
 */
async function settleCheckpoint(
  ctx: NodeContext,
  s: ShimState,
  id: string,
  keptBecause: string | undefined,
  exitStatus: number | undefined,
  end: ContainerEnd,
  log: Log,
): Promise<void> {
  // Named with ARCH_CHECKPOINT_ID, the checkpoint may have passed on to a newer container since.
  const store = s.checkpointUrl
    ? new S3CheckpointStore(
        {
          loc: parseS3Url(s.checkpointUrl, 'checkpointUrl'),
          client: ctx.settings.s3,
          cacheRoot: ctx.settings.s3CacheRoot,
        },
        s.namespace,
        path.basename(s.checkpointDir),
        s.checkpointDir,
      )
    : s.allowedRoot
      ? new CheckpointStore(s.checkpointDir, {
          root: s.allowedRoot,
          field: s.checkpointField ?? ENV.checkpointHostPath,
        })
      : undefined;
  const successor = keptBecause || !store ? undefined : await newerOwner(store, id, s.restoredFrom);
  if (!store) {
    log.warn(
      { checkpointDir: s.checkpointDir },
      'created by an older ARCH without ownership records: checkpoint and work dir left in place',
    );
  } else if (successor) {
    log.info(
      { owner: successor, checkpointDir: s.checkpointDir },
      `checkpoint now belongs to container ${successor}: kept`,
    );
  } else if (keptBecause) {
    log.info(
      { reason: keptBecause, exitStatus, checkpointDir: s.checkpointDir },
      `container ${keptBecause}: checkpoint kept`,
    );
    await parkJob(ctx, store, s, id, keptBecause, end, log);
  } else {
    // Only what ARCH created for this very container goes (its ownership record says so).
    const ck = await store
      .remove({ namespace: s.namespace, id })
      .catch((e: unknown) => ({ removed: false, why: errorMessage(e) }));
    const wd = s.workDir
      ? await removeWorkDir({ allowedRoot: s.allowedRoot!, workDir: s.workDir }, s.namespace, id).catch(
          (e: unknown) => ({ removed: false, why: errorMessage(e) }),
        )
      : undefined;
    const kept = [!ck.removed && `checkpoint kept: ${ck.why}`, wd && !wd.removed && `work dir kept: ${wd.why}`].filter(
      Boolean,
    );
    log.info(
      {
        exitStatus,
        checkpointDir: s.checkpointDir,
        workDir: s.workDir,
        checkpointRemoved: ck.removed,
        workDirRemoved: wd?.removed,
      },
      kept.length
        ? `container exited by itself; ${kept.join('; ')}`
        : 'container exited by itself: checkpoint and work dir removed',
    );
  }
}

/** Resolves true once runc has made the container's state dir, false if runc exits first. */
async function stateDirOrExit(root: string, id: string, fg: Foreground): Promise<boolean> {
  let over = false;
  void fg.exited.then(() => (over = true));
  for (let wait = 2; !over; wait = Math.min(wait * 2, 50)) {
    if (await exists(path.join(root, id, 'state.json'))) return true;
    await sleep(wait);
  }
  return false;
}

/**
 * Wait for a foreground `runc run` (or its restore) and mirror its exit
 * code, the container's. runc deletes the container as it exits (unless
 * --keep), so what delete would decide for an ARCH container is decided
 * here: a clean exit ends the job (its checkpoint goes), a stop from
 * outside (a kill, a checkpoint, a signal to this call) or a non-zero exit
 * keeps it. A kept container (--keep) gets its exit recorded: its delete
 * decides then.
 */
async function finishForeground(
  ctx: NodeContext,
  call: RuncCall,
  id: string,
  fg: Foreground,
  s: ShimState | undefined,
  log: Log,
): Promise<number> {
  const dir = path.join(call.root, id);
  // The notes live in the state dir runc removes on exit: followed while it is there.
  let stopped: string | undefined;
  const note = (name: string | null) => {
    if (name === KILLED_FILE) stopped ??= 'stopped from outside';
    else if (name === ARCH_STATE_FILE)
      void readShimState(call.root, id).then((x) => void (x?.checkpointed && (stopped = 'checkpointed')));
  };
  let watcher: fs.FSWatcher | undefined;
  if (s) {
    try {
      watcher = fs.watch(dir, (_e, name) => note(name));
      watcher.on('error', () => undefined);
    } catch {
      // Gone already: the container has exited.
    }
    if (await exists(path.join(dir, KILLED_FILE))) note(KILLED_FILE);
  }
  const code = await fg.exited;
  watcher?.close();
  if (!s) return code;
  if (await exists(path.join(dir, 'state.json'))) {
    await recordExit(call.root, id, { exitStatus: code, exitedAt: new Date().toISOString() }).catch((e) =>
      log.warn({ err: errorMessage(e) }, 'could not record the exit code'),
    );
    return code;
  }
  // runc removes the dir as it ends; an ARCH file written meanwhile (a job that ended right after its restore) stops that.
  if (await removeLeftStateDir(call.root, id))
    log.info('runc left the state dir behind holding only ARCH files: removed');
  const signalled = fg.stops.length > 0 ? `stopped by ${fg.stops[0]}` : undefined;
  const keptBecause = stopped ?? signalled ?? (code !== 0 ? `exited with code ${code}` : undefined);
  const end = endOf(stopped ?? signalled, { exitStatus: code, exitedAt: new Date().toISOString() });
  await settleCheckpoint(ctx, s, id, keptBecause, code, end, log);
  return code;
}

/**
 * The job stopped here with its checkpoint kept: parked, so that any node
 * that sees the storage may restore it, with its restore crash count brought
 * up to date by how it ended. Only a lease this node holds for this
 * container is changed (a job that moved on is not this node's to park).
 */
async function parkJob(
  ctx: NodeContext,
  store: CheckpointStore,
  s: ShimState,
  id: string,
  reason: string,
  end: ContainerEnd,
  log: Log,
): Promise<void> {
  try {
    const trust = trustOf(ctx.settings);
    const lease = await leaseOf(store, trust, log);
    if (lease?.state !== 'running' || !ownNodeNames(ctx.settings).has(lease.node) || lease.containerId !== id) return;
    const key = path.basename(s.checkpointDir);
    const crashes = afterEnd(lease.restoreCrashes, s, end, ctx.settings.nodeName, ctx.settings.restoreCrashes.windowMs);
    if (crashes && crashes !== lease.restoreCrashes)
      log.warn(
        { checkpoint: crashes.checkpoint, crashes: crashes.count, limit: ctx.settings.restoreCrashes.limit },
        `the restored job crashed soon after its restore (${crashes.count} in a row)`,
      );
    const parked: Lease = { ...parkedLease(lease, ctx.settings.nodeName, reason), restoreCrashes: crashes };
    await writeLease(store, parked, trust, { namespace: s.namespace, key });
  } catch (e) {
    log.warn({ err: errorMessage(e) }, 'could not record the job as parked');
  }
}

/** Run one runc call and exit with its code (the bundle's entry, shim/entry.ts, calls this). */
export function runShim(argv: string[]): void {
  forgetMallocTunables(); // runc and CRIU get containerd's environment as it was
  main(argv).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`arch-runc: ${errorMessage(err)}\n`);
      process.exit(1);
    },
  );
}
