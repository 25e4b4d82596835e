import fsp from 'node:fs/promises';
import path from 'node:path';
import { CgroupFreezer } from './cgroup-freezer.js';
import { freeMemBytes } from './free-memory.js';
import { deletedOpenFileBytes } from './open-files.js';
import { makeScratch, type Scratch } from './seal.js';

/**
 * A checkpoint that leaves the job running is staged in memory (a tmpfs
 * scratch dir) when it fits, and moved to the store after the thaw. CRIU
 * writes the pages while the job is frozen: into a tmpfs that costs the
 * memory copy, into a disk filesystem's page cache it cost 2-4x as much on
 * these VMs, and varied with what the page cache held (bench/periodic.ts).
 * Hashing, fsync and publishing then happen from the store's staging dir as
 * before, while the job runs.
 */

/**
 * Bytes a dump of the container puts in its image dir: its anonymous and
 * shared memory (what CRIU dumps) from its cgroup (v2), the files its
 * processes hold open after deleting them (CRIU copies those whole), plus a
 * margin for the other images and the layer archive. Unknown (cgroup v1, no
 * pid): only the margin and those files.
 */
export async function dumpSizeEstimate(pid: number): Promise<number> {
  const margin = 64 * 1024 * 1024;
  if (pid <= 0) return margin;
  const [memory, ghosts] = await Promise.all([cgroupMemoryBytes(pid), ghostBytes(pid)]);
  return memory + ghosts + margin;
}

async function cgroupMemoryBytes(pid: number): Promise<number> {
  try {
    const line = (await fsp.readFile(`/proc/${pid}/cgroup`, 'utf8')).split('\n').find((l) => l.startsWith('0::'));
    if (!line) return 0;
    const stat = await fsp.readFile(path.join('/sys/fs/cgroup', line.slice(3), 'memory.stat'), 'utf8');
    const get = (k: string) => Number(new RegExp(`^${k} (\\d+)$`, 'm').exec(stat)?.[1] ?? 0);
    return get('anon') + get('shmem');
  } catch {
    return 0;
  }
}

async function ghostBytes(pid: number): Promise<number> {
  const group = await CgroupFreezer.of(pid).catch(() => undefined);
  const pids = group ? await group.pids().catch(() => [pid]) : [pid];
  return deletedOpenFileBytes(pids);
}

/**
 * A tmpfs scratch dir for the dump of the container with `pid`, or why not
 * (the dump then goes to the disk, as it always did). It must fit the tmpfs
 * and leave the node half of its available memory: the staged copy holds
 * memory until it is moved, and the node's jobs (this one included) must not
 * be pushed towards the OOM killer by a checkpoint.
 */
export async function memoryStaging(
  pid: number,
  roots?: string[],
): Promise<{ scratch: Scratch; bytes: number } | { why: string }> {
  if (pid <= 0) return { why: 'the container has no process to size its dump by' };
  const bytes = await dumpSizeEstimate(pid);
  const available = await freeMemBytes();
  if (available < 2 * bytes)
    return { why: `${mib(bytes)} to stage, ${mib(available)} of memory available (twice the dump is needed)` };
  try {
    return { scratch: await makeScratch(bytes, roots), bytes };
  } catch {
    return { why: `no tmpfs has ${mib(bytes)} free` };
  }
}

/**
 * Everything staged in `from` moved under `to` (same layout), then `from`
 * emptied: renamed where both are one filesystem, else copied (the kernel
 * copies: no large buffers in this process) and the memory freed file by
 * file. `to` is the store's staging dir: nothing is published until the
 * caller publishes it, so a move that fails leaves nothing half-published.
 */
export async function moveStaged(from: string, to: string): Promise<void> {
  await fsp.mkdir(to, { recursive: true });
  for (const e of await fsp.readdir(from, { withFileTypes: true })) {
    const src = path.join(from, e.name);
    const dst = path.join(to, e.name);
    if (e.isDirectory()) {
      await moveStaged(src, dst);
      continue;
    }
    if (!e.isFile()) continue; // CRIU and the layer capture write regular files only
    try {
      await fsp.rename(src, dst);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      await fsp.copyFile(src, dst);
      await fsp.unlink(src);
    }
  }
}

function mib(n: number): string {
  return `${Math.round(n / (1024 * 1024))} MiB`;
}
