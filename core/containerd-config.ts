import fs from 'node:fs';
import path from 'node:path';
import type { Check } from './doctor.js';
import { errorMessage } from '../contract/errors.js';

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

/** containerd's runc root when a runtime sets no `Root` (runtime/v2/runc). */
export const CONTAINERD_DEFAULT_RUNC_ROOT = '/run/containerd/runc';
export const CONTAINERD_DEFAULT_CONFIG = '/etc/containerd/config.toml';
const CAP_SYS_RESOURCE = 24;

/** The CRI plugin's table in config version 2 (containerd 1.6/1.7), version 1, and version 3 (2.x). */
const CRI_TABLES = ['plugins."io.containerd.grpc.v1.cri"', 'plugins.cri', 'plugins."io.containerd.cri.v1.runtime"'];

export type TomlValue = string | number | boolean | TomlValue[];

/**
 * The subset of TOML containerd configs use: [table] headers (quoted parts
 * kept verbatim, as containerd writes them) and `key = value` with strings,
 * numbers, booleans and one-line arrays. Keys come back as "table.key".
 * Anything else is an error naming the line.
 */
export function readTomlTables(text: string): Map<string, TomlValue> {
  const out = new Map<string, TomlValue>();
  let table = '';
  text.split('\n').forEach((raw, i) => {
    const line = stripComment(raw).trim();
    if (!line) return;
    const header = /^\[\s*([^[\]]+?)\s*\]$/.exec(line);
    if (header) {
      table = header[1]!.replace(/\s*\.\s*/g, '.');
      return;
    }
    const kv = /^("[^"]*"|[A-Za-z0-9_-]+)\s*=\s*(.+)$/.exec(line);
    if (!kv) throw new Error(`line ${i + 1}: not a TOML key = value or [table]: ${raw.trim()}`);
    out.set(table ? `${table}.${kv[1]}` : kv[1]!, parseValue(kv[2]!, i + 1));
  });
  return out;
}

function stripComment(line: string): string {
  let quote: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = undefined;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === '#') return line.slice(0, i);
  }
  return line;
}

function parseValue(v: string, lineNo: number): TomlValue {
  const s = v.trim();
  if (s === 'true' || s === 'false') return s === 'true';
  if (/^[+-]?\d+(\.\d+)?$/.test(s)) return Number(s);
  if (s.startsWith('"') && s.endsWith('"') && s.length >= 2) return JSON.parse(s) as string;
  if (s.startsWith("'") && s.endsWith("'") && s.length >= 2) return s.slice(1, -1);
  if (s.startsWith('[') && s.endsWith(']')) {
    const inner = s.slice(1, -1).trim();
    return inner
      ? inner
          .split(',')
          .filter((p) => p.trim())
          .map((p) => parseValue(p, lineNo))
      : [];
  }
  throw new Error(`line ${lineNo}: value not understood: ${s}`);
}

export interface CriRuntime {
  handler: string;
  binaryName: string;
  /** The runtime's `Root` option, if set. */
  root?: string;
}

/** The CRI plugin's runtime handlers whose runc is arch-runc, and restrict_oom_score_adj. */
export function archRuntimesOf(conf: Map<string, TomlValue>): {
  criDisabled: boolean;
  restrictOomScoreAdj: boolean;
  runtimes: CriRuntime[];
} {
  const disabled = conf.get('disabled_plugins');
  const criDisabled = Array.isArray(disabled) && disabled.some((p) => p === 'io.containerd.grpc.v1.cri' || p === 'cri');
  let restrictOomScoreAdj = false;
  const runtimes: CriRuntime[] = [];
  for (const t of CRI_TABLES) {
    if (conf.get(`${t}.restrict_oom_score_adj`) === true) restrictOomScoreAdj = true;
    const prefix = `${t}.containerd.runtimes.`;
    for (const [key, value] of conf) {
      if (!key.startsWith(prefix) || !key.endsWith('.options.BinaryName') || typeof value !== 'string') continue;
      if (path.basename(value) !== 'arch-runc') continue;
      const handler = key.slice(prefix.length, -'.options.BinaryName'.length).replace(/^"(.*)"$/, '$1');
      const root = conf.get(`${prefix}${key.slice(prefix.length, -'.BinaryName'.length)}.Root`);
      runtimes.push({ handler, binaryName: value, root: typeof root === 'string' && root ? root : undefined });
    }
  }
  return { criDisabled, restrictOomScoreAdj, runtimes };
}

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
    let conf: Map<string, TomlValue>;
    try {
      conf = readTomlTables(f.text);
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
        fix: `set restrict_oom_score_adj = true under [${CRI_TABLES[0]}] and restart containerd`,
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
