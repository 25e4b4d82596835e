import path from 'node:path';
import { ArchInputError } from './errors.js';
import { containerDir, requireAbsolutePath } from './paths.js';

/**
 * The container contract (kept exactly from the original ARCH): environment
 * variables on the container decide whether ARCH handles it and where its
 * checkpoint and work directory live.
 */
export type ArchContract =
  | { enabled: false }
  | {
      enabled: true;
      mode: 'local';
      /** ARCH_CHECKPOINT_HOST_PATH */
      checkpointRoot: string;
      priority: number;
    }
  | {
      enabled: true;
      mode: 'shared';
      /** ARCH_SHAREDFS_HOST_PATH */
      sharedRoot: string;
      /** ARCH_SHAREDFS_HOST_PATH/checkpoint */
      checkpointRoot: string;
      /** ARCH_WORKDIR_CONTAINER_PATH */
      workdirContainerPath: string;
      priority: number;
    };

export type EnabledContract = Extract<ArchContract, { enabled: true }>;

export const ENV = {
  enable: 'ARCH_ENABLE',
  checkpointHostPath: 'ARCH_CHECKPOINT_HOST_PATH',
  sharedHostPath: 'ARCH_SHAREDFS_HOST_PATH',
  workdirContainerPath: 'ARCH_WORKDIR_CONTAINER_PATH',
  priority: 'ARCH_PRIORITY',
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

/**
 * Parse and validate the contract. Throws ArchInputError naming the variable
 * and the fix; callers on the create path log it and start the container fresh.
 */
export function parseContract(env: Map<string, string>, defaultCheckpointRoot?: string): ArchContract {
  const enable = env.get(ENV.enable);
  if (enable === undefined || enable === '0') return { enabled: false };
  if (enable !== '1') {
    throw new ArchInputError(ENV.enable, `"${enable}" is not 0 or 1`, `set ${ENV.enable}=1 to enable ARCH or ${ENV.enable}=0 to disable it`);
  }
  const priority = parsePriority(env.get(ENV.priority));
  const shared = env.get(ENV.sharedHostPath);
  const workdir = env.get(ENV.workdirContainerPath);
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
      throw new ArchInputError(ENV.workdirContainerPath, 'is "/"', 'use a sub-directory such as /work: the root of the container cannot be a bind mount');
    }
    return { enabled: true, mode: 'shared', sharedRoot, checkpointRoot: path.join(sharedRoot, 'checkpoint'), workdirContainerPath: wd, priority };
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
    if (defaultCheckpointRoot) return { enabled: true, mode: 'local', checkpointRoot: defaultCheckpointRoot, priority };
    throw new ArchInputError(ENV.checkpointHostPath, 'is not set', `set ${ENV.checkpointHostPath}=/var/lib/arch (local mode) or ${ENV.sharedHostPath} and ${ENV.workdirContainerPath} (shared mode)`);
  }
  return { enabled: true, mode: 'local', checkpointRoot: requireAbsolutePath(local, ENV.checkpointHostPath), priority };
}

function parsePriority(v: string | undefined): number {
  if (v === undefined || v === '') return 0;
  if (!/^-?\d{1,6}$/.test(v)) {
    throw new ArchInputError(ENV.priority, `"${v}" is not an integer`, `set ${ENV.priority} to an integer; higher is checkpointed first (default 0)`);
  }
  return Number(v);
}

/** Where this container's checkpoints live: <checkpointRoot>/<ns>/<id>. */
export function checkpointDirOf(contract: EnabledContract, namespace: string, id: string): string {
  return containerDir(contract.checkpointRoot, namespace, id);
}

/** Shared mode only: <sharedRoot>/work/<ns>/<id>, bind-mounted at the workdir. */
export function workDirOf(contract: EnabledContract, namespace: string, id: string): string | undefined {
  if (contract.mode !== 'shared') return undefined;
  return containerDir(path.join(contract.sharedRoot, 'work'), namespace, id);
}
