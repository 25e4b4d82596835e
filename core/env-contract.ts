import path from 'node:path';
import { ArchInputError } from '../contract/errors.js';
import { validateContainerId } from '../contract/ids.js';
import { requireAllowedRoot } from './host-dirs.js';
import { containerDir, requireAbsolutePath } from './paths.js';
import { parseCheckpointIntervalMs } from './checkpoint-interval.js';
import { mountDestination } from './oci-spec.js';
import { CheckpointStore } from './store.js';
import { parseS3Url, requireAllowedBucket, type S3Location } from './s3-location.js';
import type { S3ClientSettings } from './settings.js';
import { S3CheckpointStore, type S3StoreOptions } from './s3-store.js';

/**
 * The container contract (kept exactly from the original ARCH): environment
 * variables on the container decide whether ARCH handles it and where its
 * checkpoint and work directory live.
 *
 * One addition, optional: ARCH_CHECKPOINT_ID names the checkpoint instead of
 * the container id. Kubernetes and `docker run` give every container they
 * create a new id, so a container created again (a restarted pod, a pod
 * rescheduled after a reclaim) would never find its checkpoint by id.
 */
interface ContractCommon {
  enabled: true;
  /** The node's allowed root (ARCH_ALLOWED_ROOTS) that holds this container's directories: nothing below it is followed through a symlink. */
  allowedRoot: string;
  priority: number;
  /** ARCH_CHECKPOINT_ID: the checkpoint's name when it is not the container id. */
  checkpointId?: string;
  /** ARCH_CHECKPOINT_INTERVAL: checkpoint it (left running) this often; 'off' refuses the node's default. */
  checkpointInterval?: CheckpointInterval;
  /** ARCH_ROLLBACK_VOLUMES: container paths of volumes only this job writes (core/volume-files.ts). */
  rollbackVolumes?: RollbackVolumes;
}

/** The volumes a container names as its job's alone, or the error of a bad value (logged; nothing rolled back then). */
export type RollbackVolumes = { paths: string[] } | { invalid: ArchInputError };

/**
 * A container's periodic checkpoint interval as it set it. A bad value is
 * kept as the error rather than thrown: the container still runs with ARCH
 * (its checkpoints on demand work), only without periodic ones.
 */
export type CheckpointInterval = { ms: number } | 'off' | { invalid: ArchInputError };

export type ArchContract =
  | { enabled: false }
  | (ContractCommon & {
      mode: 'local';
      /** ARCH_CHECKPOINT_HOST_PATH */
      checkpointRoot: string;
    })
  | (ContractCommon & {
      mode: 'shared';
      /** ARCH_SHAREDFS_HOST_PATH */
      sharedRoot: string;
      /** ARCH_SHAREDFS_HOST_PATH/checkpoint */
      checkpointRoot: string;
      /** ARCH_WORKDIR_CONTAINER_PATH */
      workdirContainerPath: string;
    })
  | (ContractCommon & {
      mode: 's3';
      /** ARCH_CHECKPOINT_URL (or the node's ARCH_DEFAULT_CHECKPOINT_URL) and how the node reaches it. */
      s3: S3StoreOptions;
      /** The node's cache for it: ARCH_S3_CACHE_PATH/<bucket>/<prefix> (core/s3-store.ts). */
      checkpointRoot: string;
    });

export type EnabledContract = Extract<ArchContract, { enabled: true }>;

export const ENV = {
  enable: 'ARCH_ENABLE',
  checkpointHostPath: 'ARCH_CHECKPOINT_HOST_PATH',
  sharedHostPath: 'ARCH_SHAREDFS_HOST_PATH',
  workdirContainerPath: 'ARCH_WORKDIR_CONTAINER_PATH',
  priority: 'ARCH_PRIORITY',
  checkpointId: 'ARCH_CHECKPOINT_ID',
  checkpointInterval: 'ARCH_CHECKPOINT_INTERVAL',
  checkpointUrl: 'ARCH_CHECKPOINT_URL',
  rollbackVolumes: 'ARCH_ROLLBACK_VOLUMES',
} as const;

/** OCI process.env (["K=V", ...]) to a map; the last value of a key wins, as in execve. */
export function envListToMap(list: readonly string[] | undefined): Map<string, string> {
  const m = new Map<string, string>();
  for (const kv of list ?? []) {
    const eq = kv.indexOf('=');
    if (eq > 0) m.set(kv.slice(0, eq), kv.slice(eq + 1));
  }
  return m;
}

export interface ContractOptions {
  /** The node's ARCH_ALLOWED_ROOTS: every host path the container names must lie under one. */
  allowedRoots: readonly string[];
  /** Where a container that names no host path keeps its checkpoints (none: such a container is refused). */
  defaultCheckpointRoot?: string;
  /** The node's ARCH_ALLOWED_BUCKETS: every ARCH_CHECKPOINT_URL must be covered by one. */
  allowedBuckets?: readonly S3Location[];
  /** ARCH_DEFAULT_CHECKPOINT_URL: object storage for a container that names no place (before defaultCheckpointRoot). */
  defaultCheckpointUrl?: S3Location;
  /** How this node reaches object storage, and where it caches (required for ARCH_CHECKPOINT_URL). */
  s3?: { client: S3ClientSettings; cacheRoot: string };
}

/**
 * Parse and validate the contract. Throws ArchInputError naming the variable
 * and the fix; callers on the create path log it and start the container fresh.
 * The host paths are the container owner's input: the node's allowed roots
 * decide whether they may be used at all.
 */
export function parseContract(env: Map<string, string>, opts: ContractOptions): ArchContract {
  const { defaultCheckpointRoot } = opts;
  const enable = env.get(ENV.enable);
  if (enable === undefined || enable === '0') return { enabled: false };
  if (enable !== '1') {
    throw new ArchInputError(
      ENV.enable,
      `"${enable}" is not 0 or 1`,
      `set ${ENV.enable}=1 to enable ARCH or ${ENV.enable}=0 to disable it`,
    );
  }
  const priority = parsePriority(env.get(ENV.priority));
  const checkpointId = parseCheckpointId(env.get(ENV.checkpointId));
  const checkpointInterval = readCheckpointInterval(env.get(ENV.checkpointInterval));
  const rollbackVolumes = readRollbackVolumes(env.get(ENV.rollbackVolumes));
  const common = {
    enabled: true as const,
    priority,
    ...(checkpointId ? { checkpointId } : {}),
    ...(checkpointInterval ? { checkpointInterval } : {}),
    ...(rollbackVolumes ? { rollbackVolumes } : {}),
  };
  const allowed = (p: string, field: string) => ({
    ...common,
    allowedRoot: requireAllowedRoot(p, opts.allowedRoots, field),
  });
  const shared = env.get(ENV.sharedHostPath);
  const workdir = env.get(ENV.workdirContainerPath);
  const url = env.get(ENV.checkpointUrl);
  if (url !== undefined && url !== '') {
    const other = [ENV.sharedHostPath, ENV.checkpointHostPath, ENV.workdirContainerPath].find((k) => env.get(k));
    if (other)
      throw new ArchInputError(
        ENV.checkpointUrl,
        `is set together with ${other}`,
        `name one place for the checkpoints: ${ENV.checkpointUrl} (object storage) or ${other}, not both`,
      );
    return s3Contract(common, parseS3Url(url, ENV.checkpointUrl), opts, ENV.checkpointUrl);
  }
  const namesPlace = [ENV.sharedHostPath, ENV.checkpointHostPath, ENV.workdirContainerPath].some((k) => env.get(k));
  if (!namesPlace && opts.defaultCheckpointUrl)
    return s3Contract(common, opts.defaultCheckpointUrl, opts, 'ARCH_DEFAULT_CHECKPOINT_URL');
  if (shared !== undefined && shared !== '') {
    const sharedRoot = requireAbsolutePath(shared, ENV.sharedHostPath);
    if (workdir === undefined || workdir === '') {
      throw new ArchInputError(
        ENV.workdirContainerPath,
        `is missing while ${ENV.sharedHostPath} is set (half-set shared mode)`,
        `set ${ENV.workdirContainerPath} to the absolute path inside the container that should live on the shared filesystem, e.g. /work`,
      );
    }
    const wd = requireAbsolutePath(workdir, ENV.workdirContainerPath);
    if (wd === '/') {
      throw new ArchInputError(
        ENV.workdirContainerPath,
        'is "/"',
        'use a sub-directory such as /work: the root of the container cannot be a bind mount',
      );
    }
    return {
      ...allowed(sharedRoot, ENV.sharedHostPath),
      mode: 'shared',
      sharedRoot,
      checkpointRoot: path.join(sharedRoot, 'checkpoint'),
      workdirContainerPath: wd,
    };
  }
  if (workdir !== undefined && workdir !== '') {
    throw new ArchInputError(
      ENV.sharedHostPath,
      `is missing while ${ENV.workdirContainerPath} is set (half-set shared mode)`,
      `set ${ENV.sharedHostPath} to the shared filesystem's mount point on the host, or remove ${ENV.workdirContainerPath}`,
    );
  }
  const local = env.get(ENV.checkpointHostPath);
  if (local === undefined || local === '') {
    if (defaultCheckpointRoot)
      return { ...common, allowedRoot: defaultCheckpointRoot, mode: 'local', checkpointRoot: defaultCheckpointRoot };
    throw new ArchInputError(
      ENV.checkpointHostPath,
      'is not set',
      `set ${ENV.checkpointHostPath}=/var/lib/arch (local mode) or ${ENV.sharedHostPath} and ${ENV.workdirContainerPath} (shared mode)`,
    );
  }
  const checkpointRoot = requireAbsolutePath(local, ENV.checkpointHostPath);
  return { ...allowed(checkpointRoot, ENV.checkpointHostPath), mode: 'local', checkpointRoot };
}

function s3Contract(
  common: Omit<ContractCommon, 'allowedRoot'>,
  loc: S3Location,
  opts: ContractOptions,
  field: string,
): ArchContract {
  requireAllowedBucket(loc, opts.allowedBuckets ?? [], field);
  if (!opts.s3)
    throw new ArchInputError(field, 'object storage is not configured on this node', 'set AWS_* in the node settings');
  const checkpointRoot = path.join(opts.s3.cacheRoot, loc.bucket, ...(loc.prefix ? loc.prefix.split('/') : []));
  return {
    ...common,
    allowedRoot: opts.s3.cacheRoot,
    mode: 's3',
    s3: { loc, client: opts.s3.client, cacheRoot: opts.s3.cacheRoot },
    checkpointRoot,
  };
}

function parsePriority(v: string | undefined): number {
  if (v === undefined || v === '') return 0;
  if (!/^-?\d{1,6}$/.test(v)) {
    throw new ArchInputError(
      ENV.priority,
      `"${v}" is not an integer`,
      `set ${ENV.priority} to an integer; higher is checkpointed first (default 0)`,
    );
  }
  return Number(v);
}

/** ARCH_CHECKPOINT_INTERVAL: undefined when unset (the node's default applies). */
function readCheckpointInterval(v: string | undefined): CheckpointInterval | undefined {
  if (v === undefined || v === '') return undefined;
  if (v === 'off') return 'off';
  try {
    return { ms: parseCheckpointIntervalMs(v, ENV.checkpointInterval) };
  } catch (err) {
    if (err instanceof ArchInputError) return { invalid: err };
    throw err;
  }
}

const MAX_ROLLBACK_VOLUMES = 32;

/**
 * ARCH_ROLLBACK_VOLUMES: comma-separated absolute paths in the container
 * (where its volumes are mounted). A bad value is kept as the error, like
 * the interval's: the container keeps ARCH, without the roll-back.
 */
export function readRollbackVolumes(v: string | undefined): RollbackVolumes | undefined {
  if (v === undefined || v.trim() === '') return undefined;
  const field = ENV.rollbackVolumes;
  const fix = `set ${field} to the absolute paths in the container where its volumes are mounted, comma-separated, e.g. /results,/logs`;
  const paths: string[] = [];
  for (const raw of v.split(',').map((p) => p.trim())) {
    const bad =
      !raw.startsWith('/') ||
      [...raw].some((ch) => ch.charCodeAt(0) < 0x20) ||
      raw.split('/').some((p) => p === '..' || p === '.')
        ? `"${raw}" is not an absolute path without . or .. parts`
        : raw.replace(/\/+$/, '') === ''
          ? "the container's root (/) is not a volume"
          : undefined;
    if (bad) return { invalid: new ArchInputError(field, bad, fix) };
    const p = mountDestination(raw);
    if (!paths.includes(p)) paths.push(p);
  }
  if (paths.length > MAX_ROLLBACK_VOLUMES)
    return { invalid: new ArchInputError(field, `names ${paths.length} paths (at most ${MAX_ROLLBACK_VOLUMES})`, fix) };
  return { paths };
}

/** The volumes a container's job files roll back in (none when unset or invalid). */
export function rollbackVolumePaths(contract: EnabledContract): string[] {
  const r = contract.rollbackVolumes;
  return r && 'paths' in r ? r.paths : [];
}

/**
 * The interval a container is checkpointed at: its own, else the node's
 * default; none when it said 'off' or gave a bad value (logged at its create).
 */
export function effectiveIntervalMs(contract: EnabledContract, nodeDefaultMs: number | undefined): number | undefined {
  const i = contract.checkpointInterval;
  if (i === undefined) return nodeDefaultMs;
  if (i === 'off' || 'invalid' in i) return undefined;
  return i.ms;
}

/** A name for the checkpoint: it becomes a path part, so the container id's rules apply. */
function parseCheckpointId(v: string | undefined): string | undefined {
  if (v === undefined || v === '') return undefined;
  return validateContainerId(v, ENV.checkpointId);
}

/** The name a container's checkpoint is kept under: ARCH_CHECKPOINT_ID, else the container id. */
export function checkpointKeyOf(contract: EnabledContract, id: string): string {
  return contract.checkpointId ?? id;
}

/** Where this container's checkpoints live: <checkpointRoot>/<ns>/<ARCH_CHECKPOINT_ID or id>. */
export function checkpointDirOf(contract: EnabledContract, namespace: string, id: string): string {
  return containerDir(contract.checkpointRoot, namespace, checkpointKeyOf(contract, id));
}

/** The contract options a node's settings give. */
export function contractOptions(
  settings: {
    allowedRoots: readonly string[];
    defaultCheckpointRoot: string;
    allowedBuckets?: readonly S3Location[];
    defaultCheckpointUrl?: S3Location;
    s3?: S3ClientSettings;
    s3CacheRoot?: string;
  },
  withDefault = false,
): ContractOptions {
  return {
    allowedRoots: settings.allowedRoots,
    ...(settings.allowedBuckets ? { allowedBuckets: settings.allowedBuckets } : {}),
    ...(settings.defaultCheckpointUrl ? { defaultCheckpointUrl: settings.defaultCheckpointUrl } : {}),
    ...(settings.s3 && settings.s3CacheRoot ? { s3: { client: settings.s3, cacheRoot: settings.s3CacheRoot } } : {}),
    ...(withDefault ? { defaultCheckpointRoot: settings.defaultCheckpointRoot } : {}),
  };
}

/** This container's checkpoint store, walked from its allowed root without following symlinks. */
export function checkpointStoreOf(contract: EnabledContract, namespace: string, id: string): CheckpointStore {
  if (contract.mode === 's3')
    return new S3CheckpointStore(
      contract.s3,
      namespace,
      checkpointKeyOf(contract, id),
      checkpointDirOf(contract, namespace, id),
    );
  return new CheckpointStore(checkpointDirOf(contract, namespace, id), {
    root: contract.allowedRoot,
    field: contract.mode === 'shared' ? ENV.sharedHostPath : ENV.checkpointHostPath,
  });
}

/** Shared mode only: <sharedRoot>/work/<ns>/<ARCH_CHECKPOINT_ID or id>, bind-mounted at the workdir. */
export function workDirOf(contract: EnabledContract, namespace: string, id: string): string | undefined {
  if (contract.mode !== 'shared') return undefined;
  return containerDir(path.join(contract.sharedRoot, 'work'), namespace, checkpointKeyOf(contract, id));
}
