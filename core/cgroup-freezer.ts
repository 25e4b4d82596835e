import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Freeze, thaw and signal a container's processes through its cgroup, as
 * `runc pause`, `runc resume` and `runc kill --all` do, without starting a
 * runc process for each: on the checkpoint path the container is frozen the
 * whole time, so every exec saved is downtime saved. runc reads the freezer
 * state itself, so `runc state` still says "paused" while frozen.
 *
 * cgroup v1 (the freezer controller) and v2 (cgroup.freeze, cgroup.kill).
 * `of()` returns undefined when the layout is not one of these; callers then
 * use runc.
 */
const CGROUP_ROOT = '/sys/fs/cgroup';

export class CgroupFreezer {
  private constructor(
    readonly version: 1 | 2,
    /** The container's cgroup directory (v1: in the freezer hierarchy). */
    readonly dir: string,
  ) {}

  /** The freezer of the cgroup that process `pid` (the container's init) is in. */
  static async of(pid: number, root = CGROUP_ROOT): Promise<CgroupFreezer | undefined> {
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    let lines: string[];
    try {
      lines = (await fsp.readFile(`/proc/${pid}/cgroup`, 'utf8')).split('\n');
    } catch {
      return undefined;
    }
    const v1 = lines.map((l) => /^\d+:([^:]*):(.*)$/.exec(l)).find((m) => m?.[1]?.split(',').includes('freezer'));
    if (v1 && fs.existsSync(path.join(root, 'freezer', v1[2]!, 'freezer.state'))) {
      return new CgroupFreezer(1, path.join(root, 'freezer', v1[2]!));
    }
    const v2 = lines.map((l) => /^0::(.*)$/.exec(l)).find(Boolean);
    if (v2 && v2[1] !== '/' && fs.existsSync(path.join(root, v2[1]!, 'cgroup.freeze'))) {
      return new CgroupFreezer(2, path.join(root, v2[1]!));
    }
    return undefined;
  }

  /** The freezer of a cgroup already found by of() (a freeze guard's watcher gets it as plain data). */
  static at(version: 1 | 2, dir: string): CgroupFreezer {
    if ((version !== 1 && version !== 2) || !path.isAbsolute(dir) || path.normalize(dir) !== dir) {
      throw new Error(`not a cgroup freezer: v${String(version)} ${dir}`);
    }
    return new CgroupFreezer(version, dir);
  }

  async freeze(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    if (this.version === 1) await this.freezeV1(deadline);
    else {
      await fsp.writeFile(path.join(this.dir, 'cgroup.freeze'), '1');
      // Freezing is asynchronous: tasks stop at their next chance.
      while (!(await this.frozen())) {
        if (Date.now() > deadline) break;
        await sleep(1);
      }
    }
    if (!(await this.frozen())) {
      await this.thaw().catch(() => undefined);
      throw new Error(`${this.dir}: processes did not freeze within ${timeoutMs} ms`);
    }
  }

  /**
   * A v1 freezer can stay FREEZING for good while new processes keep
   * appearing in the cgroup (a shell loop forking every few ms): a task
   * forked during the freeze may be missed, and the kernel does not try
   * again by itself. So the request is written again until it holds, with
   * an occasional thaw and pause to let a burst of forks settle, as runc's
   * own v1 freezer does (cgroup v2 has no such race). Seen here: a ticker
   * forking `sleep` every 10 ms stuck FREEZING for 10 s after one write.
   */
  private async freezeV1(deadline: number): Promise<void> {
    const state = path.join(this.dir, 'freezer.state');
    for (let attempt = 1; Date.now() <= deadline; attempt++) {
      if (attempt % 50 === 0) {
        await fsp.writeFile(state, 'THAWED');
        await sleep(10);
      }
      await fsp.writeFile(state, 'FROZEN');
      if (await this.frozen()) return;
      await sleep(attempt % 25 === 0 ? 10 : 1);
    }
  }

  async thaw(): Promise<void> {
    if (this.version === 1) await fsp.writeFile(path.join(this.dir, 'freezer.state'), 'THAWED');
    else await fsp.writeFile(path.join(this.dir, 'cgroup.freeze'), '0');
  }

  async frozen(): Promise<boolean> {
    if (this.version === 1)
      return (await fsp.readFile(path.join(this.dir, 'freezer.state'), 'utf8')).trim() === 'FROZEN';
    return /^frozen 1$/m.test(await fsp.readFile(path.join(this.dir, 'cgroup.events'), 'utf8'));
  }

  /**
   * Has anyone asked for a freeze that is not undone? Unlike frozen(), also
   * true while v1 is still FREEZING or v2 tasks have not all stopped yet: a
   * watcher that must leave the container running looks at the request.
   */
  async freezeRequested(): Promise<boolean> {
    if (this.version === 1)
      return (await fsp.readFile(path.join(this.dir, 'freezer.state'), 'utf8')).trim() !== 'THAWED';
    return (await fsp.readFile(path.join(this.dir, 'cgroup.freeze'), 'utf8')).trim() === '1';
  }

  /**
   * Send `signal` to every process of the cgroup and of the cgroups below it
   * (a container running its own cgroups); a process gone meanwhile is skipped.
   */
  signalAll(signal: NodeJS.Signals): Promise<number> {
    return signalCgroupTree(this.dir, signal);
  }

  /** Every process of the cgroup and of the cgroups below it (a container running its own cgroups). */
  pids(): Promise<number[]> {
    return cgroupTreePids(this.dir);
  }

  /**
   * SIGKILL every process of the cgroup, then thaw so they die (a frozen
   * process only acts on the signal once thawed). The pids cannot be reused
   * meanwhile: frozen processes do not exit.
   */
  async killAndThaw(): Promise<void> {
    const killFile = path.join(this.dir, 'cgroup.kill');
    if (this.version === 2 && fs.existsSync(killFile)) await fsp.writeFile(killFile, '1');
    else await this.signalAll('SIGKILL');
    await this.thaw();
  }
}

/** Every process of cgroup directory `dir` and of the cgroups below it. */
export async function cgroupTreePids(dir: string): Promise<number[]> {
  const pids: number[] = [];
  const visit = async (d: string): Promise<void> => {
    for (const line of (await fsp.readFile(path.join(d, 'cgroup.procs'), 'utf8')).split('\n')) {
      const pid = Number(line);
      if (Number.isInteger(pid) && pid > 0) pids.push(pid);
    }
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await visit(path.join(d, e.name));
    }
  };
  await visit(dir);
  return pids;
}

/** Send `signal` to every process of cgroup directory `dir` and below; returns how many got it (one gone meanwhile is skipped). */
export async function signalCgroupTree(dir: string, signal: NodeJS.Signals): Promise<number> {
  let sent = 0;
  for (const pid of await cgroupTreePids(dir)) {
    try {
      process.kill(pid, signal);
      sent++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }
  return sent;
}
