import fsp from 'node:fs/promises';
import path from 'node:path';
import { Runc } from './runc.js';
import type { RuncState } from './runc-state-files.js';
import { findRuncRoots, namespacesOf, type RuncRootsFound } from './runc-roots.js';
import type { Settings } from './settings.js';

/**
 * `runc list` of every runc root base and containerd namespace of this node,
 * all started at once (each is a process: a reclaim notice has no time to
 * queue them). core/node-containers.ts reads what they list.
 *
 * A module of its own, with nothing heavy behind it, so that a command can
 * start the listing first and load the rest while runc runs on the other
 * core: `arch-cli ls --local` and `arch-cli finalize` do (in arch-cli's
 * bundles it is a small bundle of its own, scripts/bundle-cli.ts).
 */
export interface NamespaceListing {
  base: string;
  namespace: string;
  runc: Runc;
  /** What runc listed; a failure is the reader's to report (it never goes unhandled here). */
  states: Promise<RuncState[]>;
}

export interface RuncListing {
  roots: RuncRootsFound;
  /** When the roots were found, in ms since this process started (finalize's timeline). */
  rootsFoundAt: number;
  namespaces: NamespaceListing[];
}

export interface ListingOptions {
  namespaces?: string[];
  /** Only these runc root bases (default: every one core/runc-roots.ts finds). */
  runcRootBases?: string[];
  /** The roots core/runc-roots.ts found already. */
  roots?: RuncRootsFound;
}

export async function startRuncListing(settings: Settings, opts: ListingOptions = {}): Promise<RuncListing> {
  const roots: RuncRootsFound = opts.roots
    ? opts.roots
    : opts.runcRootBases
      ? {
          searched: opts.runcRootBases.map((base) => ({ base, source: 'caller', exists: true })),
          bases: opts.runcRootBases,
          warnings: [],
        }
      : await findRuncRoots(settings);
  // process.uptime(), not performance.now(): the `performance` global loads perf_hooks (~1 ms) on first use.
  const rootsFoundAt = process.uptime() * 1000;
  const perBase = await Promise.all(
    roots.bases.map(async (base) =>
      // Namespaces are the directories (the worker keeps a marker file here: shim-state.ts).
      (opts.namespaces ?? (await namespacesOf(base))).map((namespace) => {
        const runc = new Runc(settings, path.join(base, namespace));
        let started!: () => void;
        const running = new Promise<void>((r) => (started = r));
        const states = listed(runc, !!opts.namespaces, started);
        states.catch(() => undefined); // read (and reported) by the caller, maybe after other awaits
        return {
          listing: { base, namespace, runc, states },
          running: Promise.race([
            running,
            states.then(
              () => {},
              () => {},
            ),
          ]),
        };
      }),
    ),
  );
  // Returned once every runc runs: the caller's next work (loading modules, a thread's) does not hold them back.
  await Promise.all(perBase.flat().map((n) => n.running));
  return { roots, rootsFoundAt, namespaces: perBase.flat().map((n) => n.listing) };
}

async function listed(runc: Runc, asked: boolean, onStarted: () => void): Promise<RuncState[]> {
  // A namespace asked for that this base does not have: nothing here (runc would say so as an error).
  if (asked && !(await isDir(runc.root))) return [];
  return runc.list({ onStarted });
}

const isDir = (p: string) =>
  fsp.stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );
