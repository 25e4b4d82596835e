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

/** A file mapped into a process's memory. */
export interface MappedFile {
  /** /proc/<pid>/map_files/<range>: stat() through it reaches the mapped file itself. */
  proc: string;
  /** The file's path as the process sees it. */
  target: string;
  /** MAP_SHARED with PROT_WRITE: the process's writes reach the file through memory, no descriptor needed. */
  sharedWritable: boolean;
}

/** A /proc/<pid>/maps line: range, permissions, offset, device, inode, path (which may hold spaces). */
const MAPS_LINE = /^([0-9a-f]+-[0-9a-f]+) (\S{4}) \S+ \S+ \d+ +(\/.+)$/;

/**
 * The files `pids` map whose path `wanted` accepts (read from /proc like
 * openFds), each once per process and kind of mapping. A shared writable
 * mapping outlives its descriptor: a NumPy memmap or Java's
 * MappedByteBuffer once the file is closed, a C program's mmap.
 */
export async function* mappedFiles(
  pids: readonly number[],
  wanted: (target: string) => boolean,
): AsyncGenerator<MappedFile> {
  for (const pid of pids) {
    let maps: string;
    try {
      maps = await fsp.readFile(`/proc/${pid}/maps`, 'utf8');
    } catch {
      continue; // gone, or not ours to read
    }
    const seen = new Set<string>();
    for (const line of maps.split('\n')) {
      const m = MAPS_LINE.exec(line);
      if (!m) continue;
      const target = m[3]!;
      const sharedWritable = m[2]![1] === 'w' && m[2]![3] === 's';
      const key = `${sharedWritable ? 'w' : 'r'}${target}`;
      if (seen.has(key) || !wanted(target)) continue;
      seen.add(key);
      yield { proc: `/proc/${pid}/map_files/${m[1]}`, target, sharedWritable };
    }
  }
}

/**
 * Open files CRIU cannot checkpoint, known by their descriptor's link, with
 * what to change (each reproduced with CRIU 4.2.1). The kernel refuses to
 * pass an io_uring instance over a UNIX socket, so CRIU's parasite cannot
 * hand it over and the dump fails with only "send_fds failed (-22)"; CRIU
 * has no dumper for the other two. Said before anything is frozen, with the
 * process that holds each.
 */
const UNCHECKPOINTABLE: Record<string, { what: string; fix: string }> = {
  'anon_inode:[io_uring]': {
    what: 'an io_uring instance',
    fix: "create the container again (ARCH refuses io_uring in the containers it creates; this one is older), or turn io_uring off in the job (liburing, tokio-uring and netty's io_uring transport have their own switches)",
  },
  'anon_inode:[perf_event]': {
    what: 'a perf_event descriptor',
    fix: 'detach the profiler that opened it (perf, or an APM agent in perf_events mode: async-profiler with event=itimer does without)',
  },
  'anon_inode:[userfaultfd]': {
    what: 'a userfaultfd',
    fix: 'run what uses userfaultfd (a VMM such as QEMU or Firecracker, a memory tool) outside ARCH jobs',
  },
};

export interface Uncheckpointable {
  /** "process 42 (node) holds an io_uring instance (fd 7)" */
  said: string;
  fix: string;
}

/** What in `pids` CRIU cannot checkpoint, one per process and kind. */
export async function uncheckpointableFiles(pids: readonly number[]): Promise<Uncheckpointable[]> {
  const found = new Map<string, Uncheckpointable>();
  for await (const f of openFds(pids, (t) => Object.hasOwn(UNCHECKPOINTABLE, t))) {
    const [, pid, fd] = /^\/proc\/(\d+)\/fd\/(\d+)$/.exec(f.proc) ?? [];
    const key = `${pid}:${f.target}`;
    if (found.has(key)) continue;
    const comm = (await fsp.readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
    const kind = UNCHECKPOINTABLE[f.target]!;
    found.set(key, { said: `process ${pid}${comm ? ` (${comm})` : ''} holds ${kind.what} (fd ${fd})`, fix: kind.fix });
  }
  return [...found.values()];
}
