import fsp from 'node:fs/promises';

/** An open file descriptor of a process, by its /proc path and what its link names. */
export interface OpenFd {
  /** /proc/<pid>/fd/<fd>: stat() through it reaches the open file itself, deleted or not. */
  proc: string;
  /** /proc/<pid>/fdinfo/<fd>: its open flags and position. */
  info: string;
  /** The file's path as the process sees it; " (deleted)" at the end once its last name is gone. */
  target: string;
}

/** The suffix the kernel gives an fd's link once the file has no name left. */
export const DELETED_SUFFIX = ' (deleted)';

/**
 * The file descriptors of `pids` whose link target `wanted` accepts (read
 * from /proc; a process that is gone, or a descriptor closed meanwhile, is
 * skipped). The checkpoint reads them while CRIU holds the processes
 * stopped, or to size a dump before it.
 */
export async function* openFds(pids: readonly number[], wanted: (target: string) => boolean): AsyncGenerator<OpenFd> {
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await fsp.readdir(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    for (const fd of fds) {
      const proc = `/proc/${pid}/fd/${fd}`;
      const target = await fsp.readlink(proc).catch(() => '');
      if (target && wanted(target)) yield { proc, info: `/proc/${pid}/fdinfo/${fd}`, target };
    }
  }
}

/**
 * Bytes of the regular files `pids` hold open after deleting them (no name
 * left: a temporary file, a spill file). CRIU copies each into the dump as a
 * ghost file, so they count towards a dump's size like memory does.
 */
export async function deletedOpenFileBytes(pids: readonly number[]): Promise<number> {
  const seen = new Set<string>();
  let bytes = 0;
  for await (const f of openFds(pids, (t) => t.startsWith('/') && t.endsWith(DELETED_SUFFIX))) {
    const st = await fsp.stat(f.proc).catch(() => undefined);
    if (!st?.isFile() || st.nlink !== 0 || seen.has(`${st.dev}:${st.ino}`)) continue;
    seen.add(`${st.dev}:${st.ino}`);
    bytes += st.size;
  }
  return bytes;
}
