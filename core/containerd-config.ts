import fs from 'node:fs';
import path from 'node:path';
import type { Check } from './doctor.js';

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

/** Checks of one containerd config file's CRI part against this node's ARCH settings. */
export function containerdConfigChecks(
  file: string,
  text: string,
  opts: { runcRootBase: string; configFile: string; hasSysResource: boolean },
): Check[] {
  const name = 'containerd CRI config';
  let conf: Map<string, TomlValue>;
  try {
    conf = readTomlTables(text);
  } catch (err) {
    return [{ name, ok: false, optional: true, detail: `${file}: ${(err as Error).message}`, fix: 'check the file' }];
  }
  const { criDisabled, restrictOomScoreAdj, runtimes } = archRuntimesOf(conf);
  if (criDisabled) return [{ name, ok: true, detail: `${file}: CRI plugin disabled (Kubernetes does not use it)` }];
  if (runtimes.length === 0) {
    return [
      {
        name,
        ok: false,
        optional: true,
        detail: `${file}: no CRI runtime runs arch-runc (pods cannot use ARCH)`,
        fix: 'add a runtime whose options.BinaryName is arch-runc (README: Other ways to put arch-runc under containerd)',
      },
    ];
  }
  const checks: Check[] = [];
  for (const r of runtimes) {
    const root = r.root ?? CONTAINERD_DEFAULT_RUNC_ROOT;
    const where = `${file}: runtime "${r.handler}"`;
    if (path.resolve(root) !== path.resolve(opts.runcRootBase)) {
      checks.push({
        name,
        ok: false,
        detail: `${where} keeps runc state in ${root}${r.root ? '' : ' (no Root: the default)'}, ARCH looks in ${opts.runcRootBase}`,
        fix: `set ARCH_RUNC_ROOT=${root} in ${opts.configFile}, or the runtime's Root option to ${opts.runcRootBase}`,
      });
    } else if (!r.root) {
      checks.push({
        name,
        ok: false,
        optional: true,
        detail: `${where} has no Root: every containerd on this host shares ${CONTAINERD_DEFAULT_RUNC_ROOT}/k8s.io`,
        fix: `with more than one containerd on the host, give each runtime its own Root (and ARCH_RUNC_ROOT the same)`,
      });
    } else {
      checks.push({ name, ok: true, detail: `${where}: Root ${root}` });
    }
  }
  if (!restrictOomScoreAdj && !opts.hasSysResource) {
    checks.push({
      name,
      ok: false,
      detail: `${file}: containerd lacks CAP_SYS_RESOURCE and restrict_oom_score_adj is not set: runc cannot set pods' oom_score_adj`,
      fix: `set restrict_oom_score_adj = true under [${CRI_TABLES[0]}] and restart containerd`,
    });
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
  const files = findContainerdConfigs();
  if (files.size === 0) {
    return [
      { name: 'containerd CRI config', ok: true, detail: `no containerd config found (${CONTAINERD_DEFAULT_CONFIG})` },
    ];
  }
  return [...files].flatMap(([file, pid]) => {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      // A running containerd with its defaults and no file: nothing of the CRI part to check.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      return [{ name: 'containerd CRI config', ok: false, optional: true, detail: `${file}: ${String(err)}` }];
    }
    return containerdConfigChecks(file, text, { ...settings, hasSysResource: hasSysResource(pid ?? 'self') });
  });
}
