import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { Containerd } from '../../core/containerd.js';
import { waitFor } from './arch-node.js';

/**
 * The node's own containerd, default config and socket: what a user has
 * after `apt-get install containerd`. .ci/run starts it; when it is not
 * running (a developer's machine), the test starts it and stops it again.
 */
export const SYSTEM_ADDRESS = '/run/containerd/containerd.sock';

export interface SystemContainerd {
  address: string;
  stop(): Promise<void>;
}

async function answers(address: string): Promise<boolean> {
  if (!fs.existsSync(address)) return false;
  return new Containerd({ address }).ping().catch(() => false);
}

export async function ensureSystemContainerd(logFile: string): Promise<SystemContainerd> {
  if (await answers(SYSTEM_ADDRESS)) return { address: SYSTEM_ADDRESS, stop: async () => undefined };
  const out = fs.openSync(logFile, 'a');
  const child: ChildProcess = spawn('containerd', [], { stdio: ['ignore', out, out], detached: false });
  fs.closeSync(out);
  await waitFor('system containerd', async () => ((await answers(SYSTEM_ADDRESS)) ? true : undefined), 30_000);
  return {
    address: SYSTEM_ADDRESS,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          resolve();
        }, 10_000);
        child.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      });
    },
  };
}
