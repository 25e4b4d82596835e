import path from 'node:path';
import { readSmallFile } from './manifest.js';
import type { OciSpec } from './oci-spec.js';
import { wireFields } from './protobuf-wire.js';

/**
 * A restore needs more of its container's resources than the job had at
 * its checkpoint: CRIU's restorer runs inside the job's processes, in its
 * cgroup, and restores each tmpfs mount's files (a Docker container's /dev,
 * /dev/shm) by running tar and its gzip there. A job close to its limits
 * runs, and its fresh start does, but its restore fails with nothing in
 * CRIU's words a user could act on ("killed by signal 9", "Can't restore
 * tmpfs content", "Restoring FAILED"). Measured with Docker: a job of 128
 * MiB restored under a 134 MiB memory limit and was killed under 131 MiB
 * (512 MiB restored under 520 MiB); a job of 2 processes restored under
 * --pids-limit 6 and failed under 5.
 */
export const RESTORE_EXTRA_PIDS = 4;

/** A container limit from linux.resources: memory.limit (bytes) or pids.limit; undefined when it has none. */
export function resourceLimitOf(spec: OciSpec, kind: 'memory' | 'pids'): number | undefined {
  const resources = spec.linux?.resources as Record<string, { limit?: unknown } | undefined> | undefined;
  const limit = resources?.[kind]?.limit;
  return typeof limit === 'number' && limit > 0 ? limit : undefined;
}

/** pstree.img: one entry per process, each with its threads' ids (CRIU's images/pstree.proto, magic.h). */
const PSTREE_MAGIC = 0x50273030;
const PSTREE_THREADS = 5;
const MAX_PSTREE_IMG = 16 << 20;

/** How many processes and threads the checkpoint in `criuDir` holds; undefined when its pstree.img cannot be read. */
export async function checkpointTaskCount(criuDir: string): Promise<number | undefined> {
  const img = await readSmallFile(path.join(criuDir, 'pstree.img'), MAX_PSTREE_IMG).catch(() => undefined);
  if (!img || img.length < 8 || img.readUInt32LE(4) !== PSTREE_MAGIC) return undefined;
  let tasks = 0;
  try {
    for (let i = 8; i + 4 <= img.length;) {
      const len = img.readUInt32LE(i);
      i += 4;
      if (i + len > img.length) return undefined;
      let threads = 0;
      for (const f of wireFields(img.subarray(i, i + len))) {
        if (f.no !== PSTREE_THREADS) continue;
        // Repeated uint32: one varint per thread, or packed in one length-delimited field.
        threads += f.wire === 2 ? [...f.bytes].filter((b) => b < 0x80).length : 1;
      }
      tasks += Math.max(1, threads);
      i += len;
    }
  } catch {
    return undefined; // malformed: CRIU says so itself
  }
  return tasks;
}

/**
 * The limit a failed restore most likely ran into, with the fix:
 * `memory-limit` when CRIU saw a process it restored killed (SIGKILL: the
 * out-of-memory killer of the container's memory limit), `pids-limit` when
 * the checkpoint's processes and threads (`criuDir`'s pstree.img) with what
 * the restore adds are over the container's pids limit. Undefined otherwise.
 */
export async function restoreLimitCause(
  message: string,
  criuDir: string,
  spec: OciSpec,
): Promise<{ reason: 'memory-limit' | 'pids-limit'; fix: string } | undefined> {
  const memory = resourceLimitOf(spec, 'memory');
  if (memory !== undefined && /killed by signal 9/.test(message)) {
    const mib = Math.round(memory / 2 ** 20);
    return {
      reason: 'memory-limit',
      fix:
        `a process was killed (SIGKILL) while CRIU restored it, most likely by the out-of-memory killer of the ` +
        `container's memory limit (${mib} MiB): a restore needs a few MiB more than the job had at its checkpoint. ` +
        `Fix: give the container 16 MiB or more above what the job uses (docker run --memory, a pod's ` +
        `resources.limits.memory)`,
    };
  }
  const pids = resourceLimitOf(spec, 'pids');
  if (pids === undefined) return undefined;
  const tasks = await checkpointTaskCount(criuDir);
  if (tasks === undefined || tasks + RESTORE_EXTRA_PIDS <= pids) return undefined;
  return {
    reason: 'pids-limit',
    fix:
      `the container's pids limit (${pids}) leaves the restore too few: the job has ${tasks} processes and threads, ` +
      `and a restore runs up to ${RESTORE_EXTRA_PIDS} more in its cgroup (CRIU's restorer, tar for tmpfs contents). ` +
      `Fix: raise the limit to ${tasks + RESTORE_EXTRA_PIDS} or more (docker run --pids-limit, the kubelet's podPidsLimit)`,
  };
}
