import fs from 'node:fs';

/**
 * What /proc says about the processes a test is after: for tests that kill
 * ARCH's own processes at a given moment (a restore's arch-runc while CRIU
 * works) and then check that nothing of the container is left.
 */

const pids = (): number[] =>
  fs
    .readdirSync('/proc')
    .filter((x) => /^\d+$/.test(x))
    .map(Number);

function argvOf(pid: number): string[] | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return undefined; // gone meanwhile
  }
}

function parentOf(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid …": comm may hold spaces, so read after its closing parenthesis.
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

/** A process's state letter (R, S, D, T, Z …), if it runs. */
export function stateOf(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/** Whether `pid` is `ancestor` or runs below it. */
export function descendsFrom(pid: number, ancestor: number): boolean {
  for (let p: number | undefined = pid; p && p > 1; p = parentOf(p)) if (p === ancestor) return true;
  return false;
}

/** The processes whose argv `match` accepts. */
export function processesMatching(match: (argv: string[]) => boolean): number[] {
  return pids().filter((p) => {
    const argv = argvOf(p);
    return !!argv && match(argv);
  });
}

/** The Node process of arch-runc's `create` of container `id` (its front has exec'd Node by then), if it runs. */
export function archRuncCreateOf(id: string): number | undefined {
  return processesMatching((a) => a.includes('create') && a.includes('--bundle') && a.includes(id)).find((p) => {
    try {
      return fs.readlinkSync(`/proc/${p}/exe`).includes('node');
    } catch {
      return false;
    }
  });
}

/** Whether a process whose argv[0] (or a later word, through CRIU's loader) ends in `/<name>` runs below `ancestor`. */
export function runsBelow(ancestor: number, name: string): boolean {
  return processesMatching((a) => a.some((w) => w.endsWith(`/${name}`))).some((p) => descendsFrom(p, ancestor));
}

/** Processes in a containerd container's cgroup (its --cgroup ends in /<namespace>/<id>). */
export function processesOfContainer(namespace: string, id: string): number[] {
  return pids().filter((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/cgroup`, 'utf8').includes(`/${namespace}/${id}\n`);
    } catch {
      return false;
    }
  });
}
