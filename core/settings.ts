import fs from 'node:fs';
import os from 'node:os';
import { ArchInputError } from '../contract/errors.js';
import { parseCheckpointIntervalMs } from './checkpoint-interval.js';
import { parseManagedNamespaces } from './container-manager.js';
import { criuSearchPath } from './criu-path.js';
import { durationMs } from './duration.js';
import { requireAbsolutePath } from './paths.js';
import { parseAllowedBuckets, parseS3Url, type S3Location } from './s3-location.js';

/** When a checkpoint whose restores keep crashing is given up (core/restore-crashes.ts). */
export interface CrashSettings {
  /** ARCH_RESTORE_CRASH_LIMIT: crashes in a row before a fresh start (0: restore every time). */
  limit: number;
  /** ARCH_RESTORE_CRASH_WINDOW: a crash this soon after its restore counts. */
  windowMs: number;
}

/**
 * How this node reaches object storage: the AWS SDK's standard variables,
 * read from the node settings (never from a container's environment).
 * Unset ones fall back to the SDK's own chain (profiles, instance roles).
 */
export interface S3ClientSettings {
  region?: string;
  endpoint?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  sessionToken?: string;
  profile?: string;
  /** ARCH_S3_FORCE_PATH_STYLE: bucket in the path, not the host name (most self-hosted servers need it; default on with an endpoint). */
  forcePathStyle: boolean;
}

/**
 * Node-wide ARCH settings. One file, /etc/arch/arch.env (or $ARCH_CONFIG),
 * in KEY=VALUE shell syntax (arch-runc's front, shim/arch-runc.c, reads three
 * of its lines the same way); variables in the environment override the file.
 */
export interface Settings {
  /** The real runc that arch-runc hands calls to. */
  runc: string;
  /** The CRIU binary runc must use (passed as runc --criu). */
  criu: string;
  /** Export CRIU_FAULT=130 to CRIU: needed where hardware breakpoints do not fire (some VMs). */
  criuNoBreakpoints: boolean;
  /** How CRIU locks container networks while it works (core/criu-network-lock.ts). */
  criuNetworkLock: NetworkLockSetting;
  /** fsync checkpoint files before publishing them. */
  fsync: boolean;
  /** Stage the dump of a checkpoint left running in a tmpfs when it fits (core/dump-staging.ts). */
  stageDumpsInMemory: boolean;
  /** ARCH_SEAL_DIRECT (internal, default off): sealed files' ciphertext written and read around the page cache (core/direct-append.ts). */
  sealDirect: boolean;
  /** ARCH_UNSEAL_THREADS (internal, 1 or 2, default 1): threads that decrypt a sealed restore's page images. */
  unsealThreads: 1 | 2;
  /** ARCH_STORE_FORMAT: 1 (whole files, the default) or 2 (chunked, compressed, deduplicated: README "Checkpoint store v2"). */
  storeFormat: 1 | 2;
  /** ARCH_KEEP: checkpoints of a container kept in store format 2 (the current one and the ones before it). */
  keep: number;
  /** ARCH_EMPTYDIR_MAX_BYTES: a pod's emptyDir larger than this is not kept with a checkpoint (core/pod-volumes.ts); Infinity: no limit. */
  emptyDirMaxBytes: number;
  /**
   * ARCH_KEPT_FILES_MAX_BYTES: the bytes of the files a job rewrites in place (its work dir's, its own
   * volumes') a checkpoint keeps whole (core/work-files.ts); Infinity: no limit.
   */
  keptFilesMaxBytes: number;
  logFile: string | undefined;
  logLevel: string;
  nodeName: string;
  /**
   * The node's own containerd's runc root base: where containers that ARCH
   * itself creates (restores through containerd) get their runc state. The
   * first ARCH_RUNC_ROOT entry, else containerd's default.
   */
  runcRootBase: string;
  /** ARCH_RUNC_ROOT: runc root bases named in settings (a list; core/runc-roots.ts adds the discovered ones). */
  runcRoots: string[];
  /** ARCH_DISCOVER_RUNC_ROOTS: also look where containerd's and Docker's configs put runc's state. */
  discoverRuncRoots: boolean;
  /** ARCH_CONTAINERD_CONFIG: containerd's config.toml to read runtime roots from (default /etc/containerd/config.toml). */
  containerdConfig: string | undefined;
  /** ARCH_DOCKER_CONFIG: dockerd's daemon.json to read exec-root from (default /etc/docker/daemon.json). */
  dockerConfig: string | undefined;
  /** ARCH_MANAGED_NAMESPACES: containerd namespace -> the manager that creates its containers (core/container-manager.ts). */
  managedNamespaces: Record<string, string>;
  /** Checkpoint root for containers that set no ARCH_*_HOST_PATH. */
  defaultCheckpointRoot: string;
  /**
   * ARCH_ALLOWED_ROOTS: the only host directories under which a container's
   * ARCH_CHECKPOINT_HOST_PATH / ARCH_SHAREDFS_HOST_PATH may lie (core/host-dirs.ts).
   * The default checkpoint root is always one of them.
   */
  allowedRoots: string[];
  /** ARCH_ALLOWED_BUCKETS: the only buckets (or bucket/prefix) a container's ARCH_CHECKPOINT_URL may name; the default URL's is always one. */
  allowedBuckets: S3Location[];
  /** ARCH_DEFAULT_CHECKPOINT_URL: object storage for containers that name no checkpoint place (before the default path). */
  defaultCheckpointUrl?: S3Location;
  s3: S3ClientSettings;
  /** ARCH_S3_CACHE_PATH: node-local directory where checkpoints in object storage are staged and their small files cached. */
  s3CacheRoot: string;
  temporalCli: string;
  /** TLS for the checkpoint transfer server (PEM files): this node serves over https when both are set. */
  transferTlsCert: string | undefined;
  transferTlsKey: string | undefined;
  /** CA that signed the other nodes' transfer certificates: when set, this node fetches only over verified https. */
  transferTlsCa: string | undefined;
  temporalAddress: string;
  temporalNamespace: string;
  configFile: string;
  /** ARCH_DEFAULT_CHECKPOINT_INTERVAL: periodic checkpoints of ARCH containers that set no ARCH_CHECKPOINT_INTERVAL (none when unset). */
  defaultCheckpointIntervalMs?: number;
  /** ARCH_MAX_CONCURRENT_CHECKPOINTS: periodic checkpoints this node takes at once (its disk is the limit). */
  maxConcurrentCheckpoints?: number;
  /** ARCH_RESTORE_CRASH_LIMIT and ARCH_RESTORE_CRASH_WINDOW: when a checkpoint whose restores keep crashing is given up (core/restore-crashes.ts). */
  restoreCrashes: CrashSettings;
}

export const DEFAULT_CONFIG_FILE = '/etc/arch/arch.env';

export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2]!.trim();
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) v = v.slice(1, -1);
    out[m[1]!] = v;
  }
  return out;
}

function parseBool(v: string | undefined, field: string, dflt: boolean): boolean {
  if (v === undefined || v === '') return dflt;
  if (['1', 'true', 'yes', 'on'].includes(v.toLowerCase())) return true;
  if (['0', 'false', 'no', 'off'].includes(v.toLowerCase())) return false;
  throw new ArchInputError(field, `"${v}" is not a boolean`, `set ${field}=1 or ${field}=0`);
}

/** ARCH_CRIU_NETWORK_LOCK's values (core/criu-network-lock.ts says what they do). */
export const NETWORK_LOCKS = ['auto', 'iptables', 'nftables', 'skip'] as const;
export type NetworkLockSetting = (typeof NETWORK_LOCKS)[number];

function parseNetworkLock(v: string | undefined): NetworkLockSetting {
  if (v === undefined || v === '') return 'auto';
  if ((NETWORK_LOCKS as readonly string[]).includes(v)) return v as NetworkLockSetting;
  throw new ArchInputError(
    'ARCH_CRIU_NETWORK_LOCK',
    `"${v}" is not a network lock method`,
    `set ARCH_CRIU_NETWORK_LOCK to one of ${NETWORK_LOCKS.join(', ')} (auto: nftables where CRIU supports it)`,
  );
}

/**
 * The settings file's variables with the environment over them: what every
 * ARCH setting is read from (node settings here, cloud settings in core/cloud).
 */
export function settingsVars(env: NodeJS.ProcessEnv = process.env): {
  vars: Record<string, string | undefined>;
  configFile: string;
} {
  const configFile = env.ARCH_CONFIG || DEFAULT_CONFIG_FILE;
  let fileVars: Record<string, string> = {};
  try {
    fileVars = parseEnvFile(fs.readFileSync(configFile, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  return { vars: { ...fileVars, ...env }, configFile };
}

export function loadSettings(env: NodeJS.ProcessEnv = process.env): Settings {
  const { vars, configFile } = settingsVars(env);
  const get = (k: string): string | undefined => vars[k];
  const logFile = get('ARCH_LOG_FILE');
  const optionalPath = (k: string): string | undefined => (get(k) ? requireAbsolutePath(get(k)!, k) : undefined);
  const transferTlsCert = optionalPath('ARCH_TRANSFER_TLS_CERT');
  const transferTlsKey = optionalPath('ARCH_TRANSFER_TLS_KEY');
  if (!transferTlsCert !== !transferTlsKey) {
    const [set, unset] = transferTlsCert
      ? ['ARCH_TRANSFER_TLS_CERT', 'ARCH_TRANSFER_TLS_KEY']
      : ['ARCH_TRANSFER_TLS_KEY', 'ARCH_TRANSFER_TLS_CERT'];
    throw new ArchInputError(
      unset,
      `is not set but ${set} is`,
      `set both (PEM certificate and its private key) or neither`,
    );
  }
  const defaultCheckpointRoot = requireAbsolutePath(
    get('ARCH_DEFAULT_CHECKPOINT_PATH') || '/var/lib/arch/checkpoints',
    'ARCH_DEFAULT_CHECKPOINT_PATH',
  );
  const runcRoots = parsePathList(get('ARCH_RUNC_ROOT'), 'ARCH_RUNC_ROOT');
  const defaultCheckpointUrl = get('ARCH_DEFAULT_CHECKPOINT_URL')
    ? parseS3Url(get('ARCH_DEFAULT_CHECKPOINT_URL')!, 'ARCH_DEFAULT_CHECKPOINT_URL')
    : undefined;
  const endpoint = get('AWS_ENDPOINT_URL_S3') || get('AWS_ENDPOINT_URL') || undefined;
  return {
    runc: get('ARCH_RUNC') || 'runc',
    criu: get('ARCH_CRIU') || 'criu',
    criuNoBreakpoints: parseBool(get('ARCH_CRIU_NO_BREAKPOINTS'), 'ARCH_CRIU_NO_BREAKPOINTS', false),
    criuNetworkLock: parseNetworkLock(get('ARCH_CRIU_NETWORK_LOCK')),
    fsync: parseBool(get('ARCH_FSYNC'), 'ARCH_FSYNC', true),
    stageDumpsInMemory: parseBool(get('ARCH_STAGE_DUMPS_IN_MEMORY'), 'ARCH_STAGE_DUMPS_IN_MEMORY', true),
    sealDirect: parseBool(get('ARCH_SEAL_DIRECT'), 'ARCH_SEAL_DIRECT', false),
    unsealThreads: parseUnsealThreads(get('ARCH_UNSEAL_THREADS')),
    storeFormat: parseStoreFormat(get('ARCH_STORE_FORMAT')),
    keep: parseKeep(get('ARCH_KEEP')),
    emptyDirMaxBytes: parseEmptyDirMaxBytes(get('ARCH_EMPTYDIR_MAX_BYTES')),
    keptFilesMaxBytes: parseKeptFilesMaxBytes(get('ARCH_KEPT_FILES_MAX_BYTES')),
    logFile: logFile ? requireAbsolutePath(logFile, 'ARCH_LOG_FILE') : undefined,
    logLevel: get('ARCH_LOG_LEVEL') || 'info',
    nodeName: get('ARCH_NODE_NAME') || os.hostname(),
    runcRootBase: runcRoots[0] ?? '/run/containerd/runc',
    runcRoots,
    discoverRuncRoots: parseBool(get('ARCH_DISCOVER_RUNC_ROOTS'), 'ARCH_DISCOVER_RUNC_ROOTS', true),
    containerdConfig: optionalPath('ARCH_CONTAINERD_CONFIG'),
    dockerConfig: optionalPath('ARCH_DOCKER_CONFIG'),
    managedNamespaces: parseManagedNamespaces(get('ARCH_MANAGED_NAMESPACES')),
    defaultCheckpointRoot,
    allowedRoots: parseAllowedRoots(get('ARCH_ALLOWED_ROOTS'), defaultCheckpointRoot),
    allowedBuckets: [
      ...parseAllowedBuckets(get('ARCH_ALLOWED_BUCKETS')),
      ...(defaultCheckpointUrl ? [defaultCheckpointUrl] : []),
    ],
    ...(defaultCheckpointUrl ? { defaultCheckpointUrl } : {}),
    s3: {
      region: get('AWS_REGION') || get('AWS_DEFAULT_REGION') || undefined,
      endpoint,
      accessKeyId: get('AWS_ACCESS_KEY_ID') || undefined,
      secretAccessKey: get('AWS_SECRET_ACCESS_KEY') || undefined,
      sessionToken: get('AWS_SESSION_TOKEN') || undefined,
      profile: get('AWS_PROFILE') || undefined,
      forcePathStyle: parseBool(get('ARCH_S3_FORCE_PATH_STYLE'), 'ARCH_S3_FORCE_PATH_STYLE', !!endpoint),
    },
    s3CacheRoot: requireAbsolutePath(get('ARCH_S3_CACHE_PATH') || '/var/lib/arch/s3-cache', 'ARCH_S3_CACHE_PATH'),
    temporalCli: get('ARCH_TEMPORAL_CLI') || 'temporal',
    transferTlsCert,
    transferTlsKey,
    transferTlsCa: optionalPath('ARCH_TRANSFER_TLS_CA'),
    temporalAddress: get('TEMPORAL_ADDRESS') || 'localhost:7233',
    temporalNamespace: get('TEMPORAL_NAMESPACE') || 'default',
    configFile,
    defaultCheckpointIntervalMs: optionalInterval(get('ARCH_DEFAULT_CHECKPOINT_INTERVAL')),
    maxConcurrentCheckpoints: parseCount(get('ARCH_MAX_CONCURRENT_CHECKPOINTS'), 'ARCH_MAX_CONCURRENT_CHECKPOINTS', 1),
    restoreCrashes: {
      limit: parseRestoreCrashLimit(get('ARCH_RESTORE_CRASH_LIMIT')),
      windowMs: parseRestoreCrashWindowMs(get('ARCH_RESTORE_CRASH_WINDOW')),
    },
  };
}

export function parseRestoreCrashLimit(v: string | undefined): number {
  if (v === undefined || v === '') return 3;
  if (/^(0|[1-9]\d{0,2})$/.test(v)) return Number(v);
  throw new ArchInputError(
    'ARCH_RESTORE_CRASH_LIMIT',
    `is "${v}"`,
    'set how many restores of one checkpoint in a row may crash before the job starts fresh: a whole number (default 3; 0 restores every time)',
  );
}

export function parseRestoreCrashWindowMs(v: string | undefined): number {
  if (v === undefined || v === '') return 60_000;
  const ms = durationMs(v);
  if (ms === undefined || ms < 1000 || ms > 86_400_000)
    throw new ArchInputError(
      'ARCH_RESTORE_CRASH_WINDOW',
      `is "${v}"`,
      'set how soon after its restore a crash counts, e.g. 60s or 5m (1s to 24h; default 60s)',
    );
  return ms;
}

export function parseStoreFormat(v: string | undefined): 1 | 2 {
  if (v === undefined || v === '' || v === '1') return 1;
  if (v === '2') return 2;
  throw new ArchInputError(
    'ARCH_STORE_FORMAT',
    `is "${v}"`,
    'set 1 (whole files) or 2 (chunked and compressed), or leave it unset (1)',
  );
}

export function parseUnsealThreads(v: string | undefined): 1 | 2 {
  if (v === undefined || v === '' || v === '1') return 1;
  if (v === '2') return 2;
  throw new ArchInputError('ARCH_UNSEAL_THREADS', `is "${v}"`, 'set 1 or 2, or leave it unset (1)');
}

export function parseKeep(v: string | undefined): number {
  if (v === undefined || v === '') return 2;
  if (/^[1-9][0-9]{0,3}$/.test(v)) return Number(v);
  throw new ArchInputError(
    'ARCH_KEEP',
    `is "${v}"`,
    'set how many checkpoints of a container to keep: a whole number from 1 (default 2)',
  );
}

/** ARCH_EMPTYDIR_MAX_BYTES's default: a few seconds of reading while the job is stopped, on these disks. */
export const DEFAULT_EMPTYDIR_MAX_BYTES = 4 * 1024 ** 3;
/** ARCH_KEPT_FILES_MAX_BYTES's default: the same reading while the job is stopped. */
export const DEFAULT_KEPT_FILES_MAX_BYTES = 4 * 1024 ** 3;

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };

/** A size: bytes, or a number with KiB, MiB, GiB or TiB (e.g. 512MiB, 4GiB); `unlimited` for no limit. */
function parseMaxBytes(v: string | undefined, field: string, dflt: number, none: string): number {
  if (v === undefined || v === '') return dflt;
  if (v === 'unlimited') return Infinity;
  const m = /^(\d{1,15}(?:\.\d{1,6})?)\s*(B|KiB|MiB|GiB|TiB)?$/.exec(v);
  if (!m)
    throw new ArchInputError(
      field,
      `is "${v}"`,
      `set a size such as 512MiB or 16GiB (0: ${none}), or unlimited (default ${dflt / 1024 ** 3}GiB)`,
    );
  return Math.floor(Number(m[1]) * SIZE_UNITS[m[2] ?? '']!);
}

export const parseEmptyDirMaxBytes = (v: string | undefined): number =>
  parseMaxBytes(v, 'ARCH_EMPTYDIR_MAX_BYTES', DEFAULT_EMPTYDIR_MAX_BYTES, 'keep no emptyDir');

export const parseKeptFilesMaxBytes = (v: string | undefined): number =>
  parseMaxBytes(v, 'ARCH_KEPT_FILES_MAX_BYTES', DEFAULT_KEPT_FILES_MAX_BYTES, 'keep no rewritten file');

function optionalInterval(v: string | undefined): number | undefined {
  return v ? parseCheckpointIntervalMs(v, 'ARCH_DEFAULT_CHECKPOINT_INTERVAL') : undefined;
}

function parseCount(v: string | undefined, field: string, dflt: number): number {
  if (v === undefined || v === '') return dflt;
  if (!/^[1-9]\d{0,3}$/.test(v))
    throw new ArchInputError(field, `"${v}" is not a positive integer`, `set ${field} to e.g. 1 or 4`);
  return Number(v);
}

/** Default of ARCH_ALLOWED_ROOTS. */
export const DEFAULT_ALLOWED_ROOTS = ['/var/lib/arch'];

/** A list setting of absolute paths separated by ":" or "," (empty or unset: none), duplicates removed. */
export function parsePathList(v: string | undefined, field: string): string[] {
  const listed = (v ?? '')
    .split(/[:,]/)
    .map((s) => s.trim())
    .filter(Boolean);
  return [...new Set(listed.map((r) => requireAbsolutePath(r, field)))];
}

/** ARCH_ALLOWED_ROOTS: absolute directories separated by ":" or ","; "/" alone is refused (it would allow everything). */
export function parseAllowedRoots(v: string | undefined, defaultCheckpointRoot: string): string[] {
  const listed = parsePathList(v, 'ARCH_ALLOWED_ROOTS');
  const roots = listed.length ? listed : DEFAULT_ALLOWED_ROOTS;
  if (roots.includes('/')) {
    throw new ArchInputError(
      'ARCH_ALLOWED_ROOTS',
      'contains "/"',
      'list only the directories that hold checkpoints and shared work dirs, e.g. /var/lib/arch:/mnt/shared',
    );
  }
  return [...new Set([...roots, defaultCheckpointRoot])];
}

/** Environment for runc calls that reach CRIU: runc passes its own env to criu. */
export function criuEnv(settings: Pick<Settings, 'criuNoBreakpoints'>): Record<string, string> {
  return { PATH: criuSearchPath(), ...(settings.criuNoBreakpoints ? { CRIU_FAULT: '130' } : {}) };
}
