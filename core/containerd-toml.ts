import path from 'node:path';
import { parse, TomlError } from 'smol-toml';

/**
 * containerd's config.toml as ARCH reads it: parsed as TOML (smol-toml, the
 * whole of TOML 1.0: containerd 1.7's `containerd config default` writes
 * arrays of tables, `[[...]]`, that a line reader misread), then the CRI
 * plugin's runtimes in it. Used by runc-root discovery (core/runc-roots.ts)
 * and by `arch-cli doctor`'s checks (core/containerd-config.ts).
 */

/** containerd's runc root when a runtime sets no `Root` (runtime/v2/runc), and its config file by default. */
export const CONTAINERD_DEFAULT_RUNC_ROOT = '/run/containerd/runc';
export const CONTAINERD_DEFAULT_CONFIG = '/etc/containerd/config.toml';

/** The CRI plugin's table in config version 2 (containerd 1.6/1.7), version 1, and version 3 (2.x). */
export const CRI_PLUGINS = ['io.containerd.grpc.v1.cri', 'cri', 'io.containerd.cri.v1.runtime'] as const;

export type TomlTable = Record<string, unknown>;

export interface CriRuntime {
  /** The runtime handler's name (what a RuntimeClass names). */
  handler: string;
  /** options.BinaryName: the runc it runs, if set. */
  binaryName?: string;
  /** options.Root: where that runc keeps its state, if set. */
  root?: string;
}

export interface CriConfig {
  criDisabled: boolean;
  restrictOomScoreAdj: boolean;
  runtimes: CriRuntime[];
}

/** The parsed file; an error names the line and what is wrong there. */
export function parseContainerdConfig(text: string): TomlTable {
  try {
    return parse(text) as TomlTable;
  } catch (err) {
    if (err instanceof TomlError) throw new Error(`line ${err.line}: ${err.message.split('\n')[0]}`);
    throw err;
  }
}

function tableAt(t: unknown, ...keys: string[]): TomlTable | undefined {
  let cur = t;
  for (const k of keys) {
    if (!cur || typeof cur !== 'object' || Array.isArray(cur)) return undefined;
    cur = (cur as TomlTable)[k];
  }
  return cur && typeof cur === 'object' && !Array.isArray(cur) && !(cur instanceof Date)
    ? (cur as TomlTable)
    : undefined;
}

const stringOf = (v: unknown): string | undefined => (typeof v === 'string' && v ? v : undefined);

/** Every runtime of the CRI plugin (under whichever config version's table the file uses), and its switches. */
export function criConfigOf(conf: TomlTable): CriConfig {
  const disabled = conf.disabled_plugins;
  const criDisabled = Array.isArray(disabled) && disabled.some((p) => (CRI_PLUGINS as readonly unknown[]).includes(p));
  let restrictOomScoreAdj = false;
  const runtimes: CriRuntime[] = [];
  for (const plugin of CRI_PLUGINS) {
    const cri = tableAt(conf, 'plugins', plugin);
    if (!cri) continue;
    if (cri.restrict_oom_score_adj === true) restrictOomScoreAdj = true;
    for (const [handler, rt] of Object.entries(tableAt(cri, 'containerd', 'runtimes') ?? {})) {
      const options = tableAt(rt, 'options');
      runtimes.push({ handler, binaryName: stringOf(options?.BinaryName), root: stringOf(options?.Root) });
    }
  }
  return { criDisabled, restrictOomScoreAdj, runtimes };
}

/** The runtimes whose runc is arch-runc. */
export function archRuntimesOf(conf: TomlTable): CriConfig {
  const c = criConfigOf(conf);
  return { ...c, runtimes: c.runtimes.filter((r) => r.binaryName && path.basename(r.binaryName) === 'arch-runc') };
}
