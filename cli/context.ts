/**
 * What every command gets: settings, global flags, output, a lazily connected
 * client. The Temporal client (and everything that loads it) is imported only
 * when a command asks for it: it takes most of a second to load, and local
 * commands (`finalize` on a reclaim notice above all) must not pay for it.
 */
import type { Client } from '@temporalio/client';
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import type { Settings } from '../core/settings.js';
import { isValidNodeName, NODE_NAME_RULE } from '../contract/names.js';
import type { GlobalOpts } from './connect.js';
import { makeOut, type Out } from './output.js';

export interface CliContext {
  settings: Settings;
  globals(): GlobalOpts;
  out(): Out;
  client(): Promise<Client>;
  close(): Promise<void>;
}

export function makeContext(settings: Settings, program: Command): CliContext {
  let client: Promise<Client> | undefined;
  const globals = () => program.opts<GlobalOpts>();
  return {
    settings,
    globals,
    out: () => makeOut(!!globals().json),
    client: () => (client ??= import('./connect.js').then((m) => m.connect(settings, globals()))),
    async close() {
      if (client) await (await client.catch(() => undefined))?.connection.close().catch(() => undefined);
    },
  };
}

/** commander argParser for node names. */
export function nodeArg(v: string): string {
  if (!isValidNodeName(v)) throw new InvalidArgumentError(`"${v}" is not a node name (${NODE_NAME_RULE})`);
  return v;
}

export function nodeList(v: string): string[] {
  const nodes = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (nodes.length === 0) throw new InvalidArgumentError('give at least one node, e.g. node-b or node-b,node-c');
  return nodes.map(nodeArg);
}

/** A short random suffix for workflow ids (readable, unique enough per container). */
export function suffix(): string {
  return `${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '')}-${Math.random().toString(16).slice(2, 6)}`;
}
