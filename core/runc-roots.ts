import fsp from 'node:fs/promises';
import path from 'node:path';
import { errorMessage } from '../contract/errors.js';
import {
  CONTAINERD_DEFAULT_CONFIG,
  CONTAINERD_DEFAULT_RUNC_ROOT,
  criConfigOf,
  parseContainerdConfig,
} from './containerd-toml.js';
import { validateContainerId, validateNamespace } from '../contract/ids.js';
import type { Settings } from './settings.js';

/**
 * Where runc keeps its state on this node. Every client of containerd's
 * runc shim gives runc a root of its own and puts one directory per
 * containerd namespace below it (<base>/<namespace>/<id>/state.json):
 *   containerd (ctr, and the CRI plugin unless a runtime sets `Root`)
 *                    /run/containerd/runc
 *   a CRI runtime    its `Root` option in containerd's config.toml
 *   Docker 20.10+    <exec-root>/runtime-runc (default /run/docker/runtime-runc),
 *                    for every runtime it runs, namespace "moby"
 * `finalize`, `ls` and the worker look in all of them: a root they do not
 * know is a node whose containers a reclaim silently leaves behind.
 */
export const DOCKER_DEFAULT_CONFIG = '/etc/docker/daemon.json';
export const DOCKER_DEFAULT_EXEC_ROOT = '/run/docker';
/** The directory below Docker's exec-root that it gives runc as --root (moby daemon/runtime_unix.go). */
export const DOCKER_RUNC_DIR = 'runtime-runc';

export interface RuncRootBase {
  /** The base: namespaces are its subdirectories. */
  base: string;
  /** Where it comes from, for people: "ARCH_RUNC_ROOT", "containerd default", "docker exec-root (/etc/docker/daemon.json)"... */
  source: string;
  exists: boolean;
}

export interface RuncRootsFound {
  /** Every base looked at, in order, duplicates removed. */
  searched: RuncRootBase[];
  /** The ones that exist (what is listed). */
  bases: string[];
  /** Settings that name something that is not there (the setting, and what is wrong). */
  warnings: { field: string; message: string }[];
}

type RootSettings = Pick<
  Settings,
  'runcRoots' | 'discoverRuncRoots' | 'containerdConfig' | 'dockerConfig' | 'runcRootBase'
>;

const isDir = (p: string) =>
  fsp.stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );

/** The `Root` options of the CRI plugin's runtimes in a containerd config.toml (absolute ones, normalized). */
export function containerdConfigRoots(text: string): string[] {
  return criConfigOf(parseContainerdConfig(text))
    .runtimes.map((r) => r.root)
    .filter((root): root is string => !!root && path.isAbsolute(root))
    .map((root) => path.normalize(root).replace(/\/+$/, ''));
}

/** Docker's exec-root from a daemon.json ("exec-root"); undefined when the file does not set it. */
export function dockerExecRoot(text: string): string | undefined {
  const j = JSON.parse(text) as Record<string, unknown>;
  const v = j['exec-root'];
  return typeof v === 'string' && path.isAbsolute(v) ? path.normalize(v).replace(/\/+$/, '') : undefined;
}

/** A config file's text, or why not (a warning, or nothing for a default file that is absent). */
async function readOptional(
  file: string,
  field: string | undefined,
): Promise<{ text?: string; warning?: RuncRootsFound['warnings'][number] }> {
  try {
    return { text: await fsp.readFile(file, 'utf8') };
  } catch (err) {
    // A default file that is not there is a node without that client; a file named in settings is a mistake.
    if (field) return { warning: { field, message: `${file}: ${errorMessage(err)}` } };
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
      return { warning: { field: file, message: errorMessage(err) } };
    return {};
  }
}

/** Every runc root base this node's settings and its container clients' configs name. */
export async function findRuncRoots(settings: RootSettings): Promise<RuncRootsFound> {
  const warnings: RuncRootsFound['warnings'] = [];
  const candidates: { base: string; source: string; named: boolean }[] = settings.runcRoots.map((base) => ({
    base,
    source: 'ARCH_RUNC_ROOT',
    named: true,
  }));
  if (settings.discoverRuncRoots) {
    candidates.push({ base: CONTAINERD_DEFAULT_RUNC_ROOT, source: 'containerd default', named: false });
    const cdFile = settings.containerdConfig ?? CONTAINERD_DEFAULT_CONFIG;
    const dkFile = settings.dockerConfig ?? DOCKER_DEFAULT_CONFIG;
    // Read at once: every listing (a reclaim's finalize first) starts here.
    const [cd, dk] = await Promise.all([
      readOptional(cdFile, settings.containerdConfig ? 'ARCH_CONTAINERD_CONFIG' : undefined),
      readOptional(dkFile, settings.dockerConfig ? 'ARCH_DOCKER_CONFIG' : undefined),
    ]);
    // Their warnings in this order whichever read ended first.
    for (const w of [cd.warning, dk.warning]) if (w) warnings.push(w);
    const cdText = cd.text;
    const dkText = dk.text;
    let cdRoots: string[] = [];
    try {
      cdRoots = cdText ? containerdConfigRoots(cdText) : [];
    } catch (err) {
      warnings.push({
        field: settings.containerdConfig ? 'ARCH_CONTAINERD_CONFIG' : cdFile,
        message: `${cdFile} is not valid TOML (${errorMessage(err)}): its runtimes' Root options were not searched`,
      });
    }
    for (const base of cdRoots) candidates.push({ base, source: `containerd runtime Root (${cdFile})`, named: false });
    let execRoot: string | undefined;
    try {
      execRoot = dkText ? dockerExecRoot(dkText) : undefined;
    } catch (err) {
      warnings.push({
        field: settings.dockerConfig ? 'ARCH_DOCKER_CONFIG' : dkFile,
        message: `${dkFile} is not JSON: ${errorMessage(err)}`,
      });
    }
    candidates.push({
      base: path.join(execRoot ?? DOCKER_DEFAULT_EXEC_ROOT, DOCKER_RUNC_DIR),
      source: execRoot ? `docker exec-root (${dkFile})` : 'docker default exec-root',
      named: false,
    });
  }
  const searched: RuncRootBase[] = [];
  const seen = new Set<string>();
  // Looked at all at once, then taken in order (the first of two names for one directory wins).
  const looked = await Promise.all(
    candidates.map(async (c) => ({
      real: await fsp.realpath(c.base).catch(() => c.base),
      exists: await isDir(c.base),
    })),
  );
  for (const [i, c] of candidates.entries()) {
    // /var/run/... and /run/... are one directory: listed once.
    const { real, exists } = looked[i]!;
    if (seen.has(real)) continue;
    seen.add(real);
    if (!exists && c.named)
      warnings.push({
        field: 'ARCH_RUNC_ROOT',
        message: `${c.base} does not exist (no container has run under it, or the setting names the wrong directory)`,
      });
    searched.push({ base: c.base, source: c.source, exists });
  }
  return { searched, bases: searched.filter((s) => s.exists).map((s) => s.base), warnings };
}

/** The containerd namespaces below a runc root base (its subdirectories). */
export async function namespacesOf(base: string): Promise<string[]> {
  return (await fsp.readdir(base, { withFileTypes: true }).catch(() => []))
    .filter((e) => e.isDirectory() && !e.name.startsWith('.'))
    .map((e) => e.name);
}

/**
 * The runc root (<base>/<namespace>) that holds container `id`: the first
 * base where runc has its state. Falls back to the first base (the node's
 * own containerd's), where a container that is not there is reported missing.
 */
export async function runcRootOf(settings: RootSettings, namespace: string, id: string): Promise<string> {
  validateNamespace(namespace);
  validateContainerId(id);
  const { bases } = await findRuncRoots(settings);
  for (const base of bases) {
    const root = path.join(base, namespace);
    if (
      await fsp.access(path.join(root, id, 'state.json')).then(
        () => true,
        () => false,
      )
    )
      return root;
  }
  return path.join(settings.runcRootBase, namespace);
}

/** One line for people: the roots looked at ("absent" for those that are not there). */
export function describeSearched(found: RuncRootsFound): string {
  return found.searched.map((s) => `${s.base}${s.exists ? '' : ' (absent)'} [${s.source}]`).join(', ');
}
