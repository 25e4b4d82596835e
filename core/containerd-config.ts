import fs from 'node:fs';
import path from 'node:path';
import type { Check } from './doctor-check.js';
import { errorMessage } from '../contract/errors.js';
import {
  archRuntimesOf,
  CONTAINERD_DEFAULT_CONFIG,
  CONTAINERD_DEFAULT_RUNC_ROOT,
  CRI_PLUGINS,
  parseContainerdConfig,
  type CriRuntime,
  type TomlTable,
} from './containerd-toml.js';

/**
 * `arch-cli doctor`'s look at containerd's CRI configuration (what
 * Kubernetes uses): every runtime handler whose runc is arch-runc must
 *  - keep runc's state where ARCH looks for it: the shim runs runc with
 *    --root ROOT/NAMESPACE, ROOT = the runtime's `Root` option or
 *    /run/containerd/runc; `arch-cli ls`/`finalize` and the worker read
 *    ARCH_RUNC_ROOT. Without `Root`, two containerd instances on one host
 *    share /run/containerd/runc/k8s.io (same ids collide there);
 *  - set `restrict_oom_score_adj = true` where containerd lacks
 *    CAP_SYS_RESOURCE (some VMs and nested setups): runc cannot lower a
 *    container's oom_score_adj below containerd's, and every pod fails.
 */

const CAP_SYS_RESOURCE = 24;

/** Where restrict_oom_score_adj goes, as the fix names it. */
const CRI_TABLE = `plugins."${CRI_PLUGINS[0]}"`;

export interface ContainerdConfigFile {
  file: string;
  text: string;
  /** The containerd reading it has CAP_SYS_RESOURCE (can set any oom_score_adj). */
  hasSysResource: boolean;
}

const NAME = 'containerd CRI config';

/**
 * Checks of the CRI part of every containerd config on the host. Which
 * containerd is this node's is not a setting: it is the one whose arch-runc
 * runtime keeps runc's state in ARCH_RUNC_ROOT. Others are fine as long as
 * no two share a runc root.
 */
export function containerdConfigChecks(
  files: ContainerdConfigFile[],
  opts: { runcRootBase: string; configFile: string },
): Check[] {
  const checks: Check[] = [];
  const found: { file: string; runtime: CriRuntime; root: string }[] = [];
  for (const f of files) {
    let conf: TomlTable;
    try {
      conf = parseContainerdConfig(f.text);
    } catch (err) {
      checks.push({ name: NAME, ok: false, optional: true, detail: `${f.file}: ${(err as Error).message}` });
      continue;
    }
    const { criDisabled, restrictOomScoreAdj, runtimes } = archRuntimesOf(conf);
    if (criDisabled) {
      checks.push({ name: NAME, ok: true, detail: `${f.file}: CRI plugin disabled (Kubernetes does not use it)` });
      continue;
    }
    if (runtimes.length === 0) {
      checks.push({
        name: NAME,
        ok: false,
        optional: true,
        detail: `${f.file}: no CRI runtime runs arch-runc (pods cannot use ARCH)`,
        fix: 'add a runtime whose options.BinaryName is arch-runc (README: Other ways to put arch-runc under containerd)',
      });
      continue;
    }
    for (const runtime of runtimes) {
      found.push({ file: f.file, runtime, root: path.resolve(runtime.root ?? CONTAINERD_DEFAULT_RUNC_ROOT) });
    }
    if (!restrictOomScoreAdj && !f.hasSysResource) {
      checks.push({
        name: NAME,
        ok: false,
        detail: `${f.file}: containerd lacks CAP_SYS_RESOURCE and restrict_oom_score_adj is not set: runc cannot set a pod's oom_score_adj, pods fail to start`,
        fix: `set restrict_oom_score_adj = true under [${CRI_TABLE}] and restart containerd`,
      });
    }
  }
  const shared = new Set<string>();
  for (const root of new Set(found.map((x) => x.root))) {
    const owners = [...new Set(found.filter((x) => x.root === root).map((x) => x.file))];
    if (owners.length < 2) continue;
    shared.add(root);
    checks.push({
      name: NAME,
      ok: false,
      detail: `${owners.join(' and ')} keep runc state in the same ${root}/k8s.io: a container id of one collides with the other's`,
      fix: "give each containerd's arch-runc runtime a Root of its own, and each node's ARCH_RUNC_ROOT the same",
    });
  }
  const base = path.resolve(opts.runcRootBase);
  const ours = found.filter((x) => x.root === base);
  if (found.length > 0 && ours.length === 0) {
    checks.push({
      name: NAME,
      ok: false,
      detail: `no arch-runc runtime keeps runc state in ARCH_RUNC_ROOT=${base} (found: ${found.map((x) => `${x.file} "${x.runtime.handler}" ${x.root}`).join(', ')}): arch-cli ls and finalize would not see its pods`,
      fix: `set ARCH_RUNC_ROOT in ${opts.configFile} to the Root of this node's containerd, or that runtime's Root to ${base}`,
    });
  }
  for (const x of found) {
    if (shared.has(x.root)) continue;
    const where = `${x.file}: runtime "${x.runtime.handler}"`;
    if (x.root !== base) checks.push({ name: NAME, ok: true, detail: `${where}: Root ${x.root} (another node)` });
    else if (x.runtime.root) checks.push({ name: NAME, ok: true, detail: `${where}: Root ${x.root}` });
    else {
      checks.push({
        name: NAME,
        ok: false,
        optional: true,
        detail: `${where} has no Root: a second containerd on this host would share ${CONTAINERD_DEFAULT_RUNC_ROOT}/k8s.io`,
        fix: 'set Root (README: Other ways to put arch-runc under containerd); each containerd needs its own',
      });
    }
  }
  return checks;
}

/**
 * The config files of the running containerd processes (--config/-c, else
 * containerd's default file), each with the pid that reads it; the default
 * file alone (pid undefined) when no containerd runs.
 */
export function findContainerdConfigs(): Map<string, number | undefined> {
  const found = new Map<string, number | undefined>();
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let argv: string[];
    let cwd: string;
    try {
      argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
      if (path.basename(argv[0] ?? '') !== 'containerd') continue;
      cwd = fs.readlinkSync(`/proc/${pid}/cwd`);
    } catch {
      continue;
    }
    let config = CONTAINERD_DEFAULT_CONFIG;
    argv.forEach((a, i) => {
      if ((a === '--config' || a === '-c') && argv[i + 1]) config = argv[i + 1]!;
      else if (a.startsWith('--config=')) config = a.slice('--config='.length);
    });
    found.set(path.resolve(cwd, config), Number(pid));
  }
  if (found.size === 0 && fs.existsSync(CONTAINERD_DEFAULT_CONFIG)) found.set(CONTAINERD_DEFAULT_CONFIG, undefined);
  return found;
}

/** Does containerd (else this process) have CAP_SYS_RESOURCE in its effective set? */
export function hasSysResource(pid: number | 'self' = 'self'): boolean {
  try {
    const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return hex !== undefined && (BigInt(`0x${hex}`) & (1n << BigInt(CAP_SYS_RESOURCE))) !== 0n;
  } catch {
    return false;
  }
}

/** Every containerd config found, checked; none found is fine (ctr and Docker need none). */
export function containerdChecks(settings: { runcRootBase: string; configFile: string }): Check[] {
  const found = findContainerdConfigs();
  if (found.size === 0) {
    return [{ name: NAME, ok: true, detail: `no containerd config found (${CONTAINERD_DEFAULT_CONFIG})` }];
  }
  const files: ContainerdConfigFile[] = [];
  const unreadable: Check[] = [];
  for (const [file, pid] of found) {
    try {
      files.push({ file, text: fs.readFileSync(file, 'utf8'), hasSysResource: hasSysResource(pid ?? 'self') });
    } catch (err) {
      // A containerd running on its defaults has no file: no CRI runtime of ARCH's to check there.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        unreadable.push({ name: NAME, ok: false, optional: true, detail: `${file}: ${errorMessage(err)}` });
    }
  }
  return [...unreadable, ...containerdConfigChecks(files, settings)];
}
