import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { criuBinary, realRunc } from '../../test/support/arch-env.js';
import { buildRootfs } from '../../test/support/images.js';
import type { BenchEnv } from './registry.js';
import { msSince } from './stats.js';
import { removeCgroups } from '../../test/support/containerd-node.js';
import { SPEC_FILE } from '../../core/checkpoint-layout.js';

/**
 * runc without containerd: the "raw tool" baseline. Containers live in a
 * private runc root (BASE/runc), their cgroups under /CGROUP_PARENT/ID, their
 * bundles (config.json + a private copy of the test image's rootfs) under
 * BASE/bundles. destroyAll() removes all of it.
 *
 * stdio: CRIU can only checkpoint a container whose stdio are anonymous pipes
 * (or FIFOs); a host file or /dev/null makes the dump fail, and so do the
 * socketpairs that Node's `stdio: 'pipe'` really creates (libuv). So runc is
 * started through `sh`, which makes real pipes: stdin from `:` (read end
 * only), stdout and stderr each into their own `cat` that forwards to Node.
 * runc's exit code comes back on fd 3 ("rc=N"), which is how the time of a
 * detached run/restore is taken (the sh itself lives as long as the
 * container holds the pipes).
 */
const WITH_PIPES = '{ { : | "$@" 3>&- 4>&-; echo "rc=$?" >&3; } 2>&1 1>&4 | cat >&2; } 4>&1 | cat';

export interface StandaloneOptions {
  runc: string;
  criu: string;
  /** Set CRIU_FAULT=130 (VMs whose hardware breakpoints do not fire). */
  criuNoBreakpoints: boolean;
  /** More environment for runc (and so CRIU), e.g. CRIU_CONFIG_FILE. */
  extraEnv?: Record<string, string>;
}

export interface BundleSpec {
  args: string[];
  env?: string[];
  /** OCI mounts added to runc's default ones (e.g. a tmpfs). */
  mounts?: Record<string, unknown>[];
}

interface Piped {
  child: ChildProcess;
  output: string[];
}

/**
 * A benchmark's raw tool: runc with the node's CRIU (breakpoints off, as on
 * these VMs) in BASE = <run dir>/`name`, its containers destroyed by the
 * run's cleanup however the benchmark ends.
 */
export function benchStandaloneRunc(
  env: Pick<BenchEnv, 'runDir' | 'cleanup'>,
  name: string,
  extraEnv?: Record<string, string>,
): StandaloneRunc {
  const sa = new StandaloneRunc(path.join(env.runDir, name), {
    runc: realRunc(),
    criu: criuBinary(),
    criuNoBreakpoints: true,
    ...(extraEnv ? { extraEnv } : {}),
  });
  env.cleanup.defer(`standalone runc containers (${name})`, () => sa.destroyAll());
  return sa;
}

export class StandaloneRunc {
  readonly root: string;
  readonly cgroupParent: string;
  private readonly piped = new Map<string, Piped[]>();
  private templateRootfs: Promise<string> | undefined;
  private specTemplate: Record<string, unknown> | undefined;

  constructor(
    readonly base: string,
    private readonly opts: StandaloneOptions,
  ) {
    this.root = path.join(base, 'runc');
    this.cgroupParent = cgroupParentOf(base);
    fs.mkdirSync(this.root, { recursive: true });
  }

  globals(): string[] {
    return ['--root', this.root, '--criu', this.opts.criu];
  }

  env(): NodeJS.ProcessEnv {
    return { ...process.env, ...(this.opts.criuNoBreakpoints ? { CRIU_FAULT: '130' } : {}), ...this.opts.extraEnv };
  }

  /** The test image's rootfs (busybox + counter), built once per run. */
  private rootfsTemplate(): Promise<string> {
    this.templateRootfs ??= (async () => {
      const dir = path.join(this.base, 'rootfs-template');
      await buildRootfs(dir);
      return dir;
    })();
    return this.templateRootfs;
  }

  private async spec(): Promise<Record<string, unknown>> {
    if (!this.specTemplate) {
      const dir = path.join(this.base, 'spec-template');
      await fsp.mkdir(dir, { recursive: true });
      await execa(this.opts.runc, ['spec'], { cwd: dir });
      this.specTemplate = JSON.parse(await fsp.readFile(path.join(dir, SPEC_FILE), 'utf8')) as Record<string, unknown>;
    }
    return structuredClone(this.specTemplate);
  }

  /** BASE/bundles/NAME with a private rootfs copy and a config.json running `spec.args`. */
  async bundle(name: string, s: BundleSpec): Promise<string> {
    const bundle = path.join(this.base, 'bundles', name);
    await fsp.rm(bundle, { recursive: true, force: true });
    await fsp.mkdir(bundle, { recursive: true });
    await execa('cp', ['-a', await this.rootfsTemplate(), path.join(bundle, 'rootfs')]);
    const spec = await this.spec();
    const proc = spec.process as Record<string, unknown>;
    proc.terminal = false;
    proc.args = s.args;
    proc.env = ['PATH=/usr/bin:/bin', ...(s.env ?? [])];
    if (s.mounts) spec.mounts = [...(spec.mounts as Record<string, unknown>[]), ...s.mounts];
    spec.root = { path: path.join(bundle, 'rootfs'), readonly: false };
    spec.hostname = 'arch-bench';
    (spec.linux as Record<string, unknown>).cgroupsPath = `${this.cgroupParent}/${name}`;
    await fsp.writeFile(path.join(bundle, SPEC_FILE), JSON.stringify(spec, null, 1));
    return bundle;
  }

  /** Run runc with real pipes as stdio; resolves runc's wall time once runc (not the container) exits. */
  private runPiped(id: string, args: string[]): Promise<number> {
    return new Promise((resolve, reject) => {
      const t0 = process.hrtime.bigint();
      const child = spawn('sh', ['-c', WITH_PIPES, 'sh', this.opts.runc, ...this.globals(), ...args], {
        env: this.env(),
        stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
        detached: true, // own process group: cleanup kills sh and both cats at once
      });
      const p: Piped = { child, output: [] };
      const list = this.piped.get(id) ?? [];
      list.push(p);
      this.piped.set(id, list);
      // Keep reading: the container must never block on a full pipe.
      const keep = (b: Buffer) => {
        p.output.push(b.toString());
        if (p.output.length > 200) p.output.splice(0, p.output.length - 100);
      };
      child.stdout!.on('data', keep);
      child.stderr!.on('data', keep);
      let rc = '';
      const fd3 = child.stdio[3] as NodeJS.ReadableStream;
      fd3.on('data', (b: Buffer) => {
        rc += b.toString();
        const m = /rc=(\d+)/.exec(rc);
        if (!m) return;
        const ms = msSince(t0);
        if (m[1] === '0') resolve(ms);
        else reject(new Error(`runc ${args[0]} ${id} exited ${m[1]}: ${p.output.join('').slice(-2000)}`));
      });
      child.on('error', reject);
      child.on('exit', (code) => {
        if (!/rc=\d+/.test(rc))
          reject(
            new Error(`sh for runc ${args[0]} ${id} exited ${code} before runc did: ${p.output.join('').slice(-2000)}`),
          );
      });
    });
  }

  /** `runc run -d` with pipes as stdio; resolves runc's time in ms. */
  run(id: string, bundle: string): Promise<number> {
    return this.runPiped(id, ['run', '-d', '--bundle', bundle, id]);
  }

  /** `runc run -d` with stdio from /dev/null (for containers that are never checkpointed). */
  async runQuiet(id: string, bundle: string): Promise<void> {
    await execa(this.opts.runc, [...this.globals(), 'run', '-d', '--bundle', bundle, id], {
      env: this.env(),
      stdio: 'ignore',
    });
  }

  /** `runc checkpoint` (processes stop unless extra has --leave-running); resolves ms. */
  async checkpoint(id: string, imagePath: string, workPath: string, extra: string[] = []): Promise<number> {
    await fsp.mkdir(imagePath, { recursive: true });
    await fsp.mkdir(workPath, { recursive: true });
    const t0 = process.hrtime.bigint();
    const r = await execa(
      this.opts.runc,
      [...this.globals(), 'checkpoint', '--image-path', imagePath, '--work-path', workPath, ...extra, id],
      {
        env: this.env(),
        reject: false,
        all: true,
      },
    );
    const ms = msSince(t0);
    if (r.exitCode !== 0)
      throw new Error(`runc checkpoint ${id} failed: ${r.all ?? ''}${await criuLogTail(workPath, 'dump.log')}`);
    return ms;
  }

  /** `runc restore --detach` with fresh pipes as stdio; resolves ms. */
  async restore(id: string, bundle: string, imagePath: string, workPath: string): Promise<number> {
    await fsp.mkdir(workPath, { recursive: true });
    try {
      return await this.runPiped(id, [
        'restore',
        '--detach',
        '--bundle',
        bundle,
        '--image-path',
        imagePath,
        '--work-path',
        workPath,
        id,
      ]);
    } catch (err) {
      throw new Error(
        `${err instanceof Error ? err.message : String(err)}${await criuLogTail(workPath, 'restore.log')}`,
      );
    }
  }

  async status(id: string): Promise<string | undefined> {
    const r = await execa(this.opts.runc, ['--root', this.root, 'state', id], { reject: false });
    if (r.exitCode !== 0) return undefined;
    return (JSON.parse(r.stdout) as { status: string }).status;
  }

  async waitGone(id: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status(id);
      if (s === undefined || s === 'stopped') return;
      if (Date.now() > deadline) throw new Error(`standalone ${id} still ${s} after ${timeoutMs} ms`);
      await sleep(50);
    }
  }

  /** Kill and delete one container, stop its pipe readers. */
  async remove(id: string): Promise<void> {
    await execa(this.opts.runc, ['--root', this.root, 'kill', '--all', id, 'KILL'], { reject: false });
    await this.waitGone(id).catch(() => undefined);
    await execa(this.opts.runc, ['--root', this.root, 'delete', '--force', id], { reject: false });
    this.stopPipes(id);
  }

  private stopPipes(id: string): void {
    for (const p of this.piped.get(id) ?? []) {
      if (p.child.exitCode === null && p.child.pid) {
        try {
          process.kill(-p.child.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      p.child.stdout?.destroy();
      p.child.stderr?.destroy();
      (p.child.stdio[3] as (NodeJS.ReadableStream & { destroy?: () => void }) | null)?.destroy?.();
    }
    this.piped.delete(id);
  }

  /** Remove every container of this root, the pipes, the cgroups and BASE. */
  async destroyAll(): Promise<void> {
    await destroyStandaloneBase(this.base, this.opts.runc);
    for (const id of [...this.piped.keys()]) this.stopPipes(id);
  }
}

async function criuLogTail(workPath: string, file: string): Promise<string> {
  const log = await fsp.readFile(path.join(workPath, file), 'utf8').catch(() => '');
  const lines = log
    .split('\n')
    .filter((l) => /Error|error|fail/i.test(l))
    .slice(-4);
  return lines.length ? ` (criu ${file}: ${lines.join(' | ')})` : '';
}

/** Kill and delete the containers of BASE/runc, remove their cgroups, unmount and delete BASE. */
export async function destroyStandaloneBase(base: string, runc = 'runc'): Promise<void> {
  const root = path.join(base, 'runc');
  const list = await execa(runc, ['--root', root, 'list', '-q'], { reject: false });
  const ids = list.exitCode === 0 ? list.stdout.split('\n').filter(Boolean) : [];
  for (const id of ids) await execa(runc, ['--root', root, 'kill', '--all', id, 'KILL'], { reject: false });
  for (const id of ids) {
    for (let i = 0; i < 50; i++) {
      const s = await execa(runc, ['--root', root, 'state', id], { reject: false });
      if (s.exitCode !== 0 || s.stdout.includes('"stopped"')) break;
      await sleep(50);
    }
    await execa(runc, ['--root', root, 'delete', '--force', id], { reject: false });
  }
  removeCgroupTree(cgroupParentOf(base));
  // A failed restore can leave a rootfs bind mount behind.
  const mounts = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m === base || m.startsWith(`${base}/`));
  for (const m of mounts.sort((a, b) => b.length - a.length)) await execa('umount', ['-l', m], { reject: false });
  await fsp.rm(base, { recursive: true, force: true });
}

/** cgroup parent of the containers under BASE: /arch-bench-<last three path parts of BASE> (run pid, benchmark, name). */
export function cgroupParentOf(base: string): string {
  return `/arch-bench-${path.resolve(base).split('/').filter(Boolean).slice(-3).join('-')}`;
}

/** rmdir /sys/fs/cgroup/<controller>/<parent>/... deepest first (empty cgroups only): the test nodes' own clean-up. */
export const removeCgroupTree = removeCgroups;
