import type { MountSpec } from '../../contract/types.js';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createNodeContext, type NodeContext } from '../../core/context.js';
import { readLogLines, writeArchConfig } from './arch-env.js';
import { startNode, type StartNodeOptions, type TestNode } from './containerd-node.js';
import { COUNTER_FILES, ensureTestImage, REPO_ROOT } from './images.js';

/** A containerd "node" whose runc is arch-runc, with its own ARCH settings file. */
export interface ArchTestNode extends TestNode {
  archConfig: string;
  archLog: string;
  ctx: NodeContext;
  image: string;
  /** ctr run the counter through arch-runc; returns the file its stdout goes to. */
  runCounter(
    id: string,
    env: string[],
    opts?: { namespace?: string; mounts?: MountSpec[]; netHost?: boolean },
  ): Promise<string>;
  count(id: string, namespace?: string): number;
  waitCount(id: string, atLeast: number, namespace?: string): Promise<number>;
  logLines(): Record<string, unknown>[];
}

export const ARCH_RUNC_BIN = path.join(REPO_ROOT, 'bin/arch-runc');

export async function waitFor<T>(
  what: string,
  fn: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 20_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(100);
  }
}

export async function startArchNode(
  name: string,
  overrides: Record<string, string | undefined> = {},
  nodeOpts: Omit<StartNodeOptions, 'env'> = {},
): Promise<ArchTestNode> {
  // The settings file must exist before containerd starts: its shims inherit ARCH_CONFIG.
  const cfgDir = fs.mkdtempSync(path.join('/tmp', `arch-${name}-`));
  const removeCfg = () => fs.rmSync(cfgDir, { recursive: true, force: true });
  const archConfig = writeArchConfig(cfgDir, { ARCH_NODE_NAME: name, ...overrides });
  const node = await startNode(name, { ...nodeOpts, env: { ARCH_CONFIG: archConfig } }).catch((err: unknown) => {
    removeCfg();
    throw err;
  });
  // Settings and logs stay readable while the node runs (failure messages quote them), and go with it.
  const stopNode = node.stop.bind(node);
  node.stop = async () => {
    try {
      await stopNode();
    } finally {
      removeCfg();
    }
  };
  // Now that the node's runc root is known, record it for finalize/list.
  writeArchConfig(cfgDir, { ARCH_NODE_NAME: name, ARCH_RUNC_ROOT: node.runcRootBase, ...overrides });
  const ctx = createNodeContext('test', { ...process.env, ARCH_CONFIG: archConfig });
  const image = await ensureTestImage(node.containerd);
  const archLog = path.join(cfgDir, 'arch.log');
  const n = node as ArchTestNode;
  Object.assign(n, {
    archConfig,
    archLog,
    ctx,
    image,
    async runCounter(
      id: string,
      env: string[],
      opts: { namespace?: string; mounts?: MountSpec[]; netHost?: boolean } = {},
    ) {
      const cd = opts.namespace ? node.containerd.withNamespace(opts.namespace) : node.containerd;
      if (opts.namespace) await ensureTestImage(cd);
      const logFile = path.join(node.dir, `${opts.namespace ?? 'default'}-${id}-${Date.now()}.out`);
      await cd.run({
        image,
        id,
        env,
        logFile,
        runcBinary: ARCH_RUNC_BIN,
        detach: true,
        mounts: opts.mounts,
        netHost: opts.netHost,
      });
      return logFile;
    },
    count(id: string, namespace?: string) {
      return Number(node.readContainerFile(id, COUNTER_FILES.count, namespace).trim());
    },
    async waitCount(id: string, atLeast: number, namespace?: string) {
      return waitFor(`${name}/${id} count >= ${atLeast}`, () => {
        const c = n.count(id, namespace);
        return c >= atLeast ? c : undefined;
      });
    },
    logLines: () => readLogLines(archLog),
  });
  return n;
}
