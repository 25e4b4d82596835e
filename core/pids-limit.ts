import path from 'node:path';
import { readSmallFile } from './manifest.js';
import type { OciSpec } from './oci-spec.js';
import { wireFields } from './protobuf-wire.js';

/**
 * A container's pids limit (pids.max) counts every process and thread in its
 * cgroup, and a restore needs more of them than the job has: CRIU's restorer
 * forks in the job's cgroup, and restores each tmpfs mount's files (a Docker
 * container's /dev, /dev/shm) by running tar and its gzip there. Measured
 * with Docker: a job of 2 processes restored under --pids-limit 6 and
 * failed under 5, with only CRIU's "Can't restore tmpfs content" or
 * "Restoring FAILED" to say so. The job ran there, and its fresh start does:
 * without the reason, its progress was lost to nothing a user could act on.
 */
export const RESTORE_EXTRA_PIDS = 4;

/** pstree.img: one entry per process, each with its threads' ids (CRIU's images/pstree.proto, magic.h). */
const PSTREE_MAGIC = 0x50273030;
const PSTREE_THREADS = 5;
const MAX_PSTREE_IMG = 16 << 20;

/** The container's pids limit (linux.resources.pids.limit), undefined when it has none. */
export function pidsLimitOf(spec: OciSpec): number | undefined {
  const resources = spec.linux?.resources as { pids?: { limit?: unknown } } | undefined;
  const limit = resources?.pids?.limit;
  return typeof limit === 'number' && limit > 0 ? limit : undefined;
}

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
 * The cause and the fix when a restore that failed was likely short of
 * pids: the checkpoint's processes and threads, with what the restore adds,
 * are over the container's limit. Undefined otherwise.
 */
export async function pidsLimitShortfall(criuDir: string, spec: OciSpec): Promise<string | undefined> {
  const limit = pidsLimitOf(spec);
  if (limit === undefined) return undefined;
  const tasks = await checkpointTaskCount(criuDir);
  if (tasks === undefined || tasks + RESTORE_EXTRA_PIDS <= limit) return undefined;
  return (
    `the container's pids limit (${limit}) leaves the restore too few: the job has ${tasks} processes and threads, ` +
    `and a restore runs up to ${RESTORE_EXTRA_PIDS} more in its cgroup (CRIU's restorer, tar for tmpfs contents). ` +
    `Fix: raise the limit to ${tasks + RESTORE_EXTRA_PIDS} or more (docker run --pids-limit, the kubelet's podPidsLimit)`
  );
}
