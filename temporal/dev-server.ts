/**
 * The embedded default: a Temporal CLI dev server (`temporal server
 * start-dev`, installed by install.sh) with ARCH's search attributes
 * registered at start. Used by `arch-cli dev` (persistent SQLite file) and
 * by the tests (temporary file, random loopback ports).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { devServerSearchAttributeArgs } from '../contract/search-attributes.js';
import { isReachable } from './connection.js';

export interface DevServerOptions {
  temporalCli: string;
  /** Bind address of the frontend (and UI). Loopback by default: the dev server has no auth. */
  ip?: string;
  /** 0 or absent = a free port. */
  port?: number;
  uiPort?: number;
  headless?: boolean;
  /** SQLite file; absent = in-memory (history lost when the server stops). */
  dbFile?: string;
  namespace?: string;
  /** stdout/stderr of the server go here (appended); absent = discarded. */
  logFile?: string;
  /** Keep running after this process exits (arch-cli dev --detach). */
  detached?: boolean;
  startTimeoutMs?: number;
}

export interface DevServer {
  address: string;
  namespace: string;
  uiUrl: string | undefined;
  pid: number;
  /** SIGTERM this server (and only it), SIGKILL after a grace period. */
  stop(): Promise<void>;
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export function devServerArgs(o: DevServerOptions & { port: number; uiPort: number }): string[] {
  const args = ['server', 'start-dev', '--ip', o.ip ?? '127.0.0.1', '--port', String(o.port), '--log-level', 'warn'];
  if (o.headless) args.push('--headless');
  else args.push('--ui-port', String(o.uiPort));
  if (o.dbFile) args.push('--db-filename', o.dbFile);
  if (o.namespace && o.namespace !== 'default') args.push('--namespace', o.namespace);
  // One partition per task queue: on a single dev server, partitions only add
  // forwarding hops between a task and the node's poller (tens of ms per activity).
  args.push(
    '--dynamic-config-value',
    'matching.numTaskqueueReadPartitions=1',
    '--dynamic-config-value',
    'matching.numTaskqueueWritePartitions=1',
  );
  args.push(...devServerSearchAttributeArgs());
  return args;
}

/** An exit during start-up, before the frontend answered. */
class ExitedAtStart extends Error {}

/**
 * Start the dev server and wait until it answers. Ports this function picks
 * are free when picked, but another process may bind one before the server
 * does (the server then exits at once): it is started again on new ports,
 * twice at most. Ports the caller chose are used once.
 */
export async function startDevServer(o: DevServerOptions): Promise<DevServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startDevServerOnce(o);
    } catch (err) {
      if (!(err instanceof ExitedAtStart) || o.port || o.uiPort || attempt >= 3) throw err;
    }
  }
}

async function startDevServerOnce(o: DevServerOptions): Promise<DevServer> {
  const ip = o.ip ?? '127.0.0.1';
  const port = o.port || (await freePort(ip));
  const uiPort = o.uiPort || (o.headless ? 0 : await freePort(ip));
  const namespace = o.namespace ?? 'default';
  if (o.dbFile) fs.mkdirSync(path.dirname(o.dbFile), { recursive: true });
  let out: number | 'ignore' = 'ignore';
  if (o.logFile) {
    fs.mkdirSync(path.dirname(o.logFile), { recursive: true });
    out = fs.openSync(o.logFile, 'a');
  }
  const child: ChildProcess = spawn(o.temporalCli, devServerArgs({ ...o, ip, port, uiPort }), {
    stdio: ['ignore', out, out],
    detached: o.detached ?? false,
  });
  if (typeof out === 'number') fs.closeSync(out);
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let spawnError: Error | undefined;
  const exitPromise = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve();
    });
    child.once('error', (err) => {
      spawnError = err;
      exited = { code: null, signal: null };
      resolve();
    });
  });
  if (o.detached) child.unref();
  const address = `${ip.includes(':') ? `[${ip}]` : ip}:${port}`;
  const stop = async (): Promise<void> => {
    if (exited || child.pid === undefined) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exitPromise;
    clearTimeout(t);
  };
  const deadline = Date.now() + (o.startTimeoutMs ?? 60_000);
  // The frontend answers only once the namespace and search attributes exist.
  while (!(await isReachable({ address, namespace }, 1000))) {
    if (exited) {
      const why = spawnError ? spawnError.message : `exited with ${exited.code ?? exited.signal}`;
      throw new ExitedAtStart(`temporal dev server (${o.temporalCli}) ${why}${o.logFile ? `; see ${o.logFile}` : ''}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(
        `temporal dev server did not answer on ${address} within ${o.startTimeoutMs ?? 60_000} ms${o.logFile ? `; see ${o.logFile}` : ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return { address, namespace, uiUrl: o.headless ? undefined : `http://${ip}:${uiPort}`, pid: child.pid!, stop };
}
