import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { freePort } from '../../temporal/dev-server.js';
import { isReachable } from '../../temporal/connection.js';
import type { StatusRow } from '../../cli/commands/status.js';
import { writeArchConfig } from '../support/arch-env.js';
import { cleanupStaleNodes, startNode, stopAllNodes, type TestNode } from '../support/containerd-node.js';
import { REPO_ROOT, testWorkDir } from '../support/images.js';
import { TEMPORAL_CLI, waitUntil, withTimeout } from '../support/temporal.js';

/**
 * `arch-cli dev`, the embedded default: with nothing listening at
 * TEMPORAL_ADDRESS it starts the installed Temporal dev server (persistent
 * SQLite file, search attributes registered, UI port printed) and runs this
 * node's worker; Ctrl-C stops both. Started again on the same file, the
 * earlier workflows are still there.
 */
let node: TestNode;
let dir: string;
let archConfig: string;
let address: string;
const children = new Set<ChildProcess>();

beforeAll(async () => {
  await cleanupStaleNodes();
  dir = testWorkDir('temporal', `dev-${process.pid}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  archConfig = writeArchConfig(dir, { ARCH_TEMPORAL_CLI: TEMPORAL_CLI, ARCH_LOG_LEVEL: 'info' });
  node = await startNode('dev-a', { env: { ARCH_CONFIG: archConfig } });
  address = `127.0.0.1:${await freePort()}`;
});

/** Dev servers that `arch-cli dev` started for this test (found by their unique SQLite path). */
function ourDevServers(): number[] {
  const db = path.join(dir, 'temporal.sqlite');
  const pids: number[] = [];
  for (const p of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const argv = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (argv.includes('start-dev') && argv.includes(db)) pids.push(Number(p));
    } catch {
      // gone
    }
  }
  return pids;
}

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  // A failed test may have killed `arch-cli dev` before it could stop its server.
  for (const pid of ourDevServers()) process.kill(pid, 'SIGKILL');
  await stopAllNodes();
  if (process.env.ARCH_TEST_KEEP !== '1') fs.rmSync(dir, { recursive: true, force: true });
});

function env(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    ARCH_CONFIG: archConfig,
    TEMPORAL_ADDRESS: address,
    TEMPORAL_NAMESPACE: 'default',
    ARCH_LOG_FILE: path.join(dir, 'dev.log'),
  };
}

async function startDev(
  extra: string[] = [],
): Promise<{ child: ChildProcess; banner: Record<string, unknown>; stderr: () => string }> {
  const uiPort = await freePort();
  const child = spawn(
    path.join(REPO_ROOT, 'bin', 'arch-cli'),
    [
      '--json',
      'dev',
      '--db',
      path.join(dir, 'temporal.sqlite'),
      '--ui-port',
      String(uiPort),
      '--node',
      'dev-a',
      '--containerd-address',
      node.address,
      '--runc-root',
      node.runcRootBase,
      '--cgroup-parent',
      node.cgroupParent,
      '--transfer-listen',
      '127.0.0.1:0',
      '--state-dir',
      path.join(dir, 'state'),
      ...extra,
    ],
    { env: env(), stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.add(child);
  child.once('exit', () => children.delete(child));
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const banner = await waitUntil(
    'the dev banner',
    () => {
      try {
        return JSON.parse(out) as Record<string, unknown>;
      } catch {
        if (child.exitCode !== null) throw new Error(`arch-cli dev exited ${child.exitCode}: ${err}`);
        return undefined;
      }
    },
    90_000,
    100,
  );
  return { child, banner, stderr: () => err };
}

async function cli(args: string[]): Promise<{ code: number | null; json: unknown; stderr: string }> {
  const child = spawn(path.join(REPO_ROOT, 'bin', 'arch-cli'), ['--json', ...args], {
    env: env(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  let json: unknown;
  try {
    json = JSON.parse(out);
  } catch {
    json = undefined;
  }
  return { code, json, stderr: err };
}

async function stopDev(child: ChildProcess): Promise<number | null> {
  child.kill('SIGINT');
  const r = await withTimeout(new Promise<number | null>((resolve) => child.once('exit', resolve)), 60_000);
  if (r === 'timeout') throw new Error('arch-cli dev did not stop on SIGINT');
  return r;
}

test('starts a dev server with search attributes and a worker; state survives a restart', async () => {
  expect(await isReachable({ address, namespace: 'default' })).toBe(false);
  const first = await startDev();
  expect(first.banner).toMatchObject({ address, namespace: 'default', node: 'dev-a', startedServer: true });
  expect(String(first.banner.uiUrl)).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  expect(fs.existsSync(path.join(dir, 'temporal.sqlite'))).toBe(true);

  const connection = await Connection.connect({ address });
  try {
    const sa = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
    expect(Object.keys(sa.customAttributes ?? {})).toEqual(
      expect.arrayContaining([
        'ArchContainer',
        'ArchNamespace',
        'ArchSourceNode',
        'ArchTargetNode',
        'ArchOperation',
        'ArchPhase',
      ]),
    );
  } finally {
    await connection.close();
  }
  // The node's worker answers: an (empty) pause runs to completion.
  const p = await cli(['pause', '--node', 'dev-a', '--wait']);
  expect(p.code).toBe(0);
  expect(await stopDev(first.child)).toBe(0);
  expect(await isReachable({ address, namespace: 'default' })).toBe(false);
  expect(ourDevServers()).toEqual([]);

  // Again, on the same SQLite file: the pause is still in visibility.
  const second = await startDev();
  try {
    const s = await cli(['status', '--operation', 'pause']);
    expect(s.code).toBe(0);
    expect((s.json as StatusRow[]).some((w) => w.status === 'COMPLETED' && w.sourceNode === 'dev-a')).toBe(true);
  } finally {
    expect(await stopDev(second.child)).toBe(0);
  }
});

test('--temporal-namespace is the namespace of the server, its search attributes and the worker; -n is containerd', async () => {
  // TEMPORAL_NAMESPACE says default (env()): the flags alone pick the namespace.
  const ns = 'arch-dev-ns';
  const dev = await startDev(['--temporal-namespace', ns, '-n', 'default']);
  try {
    expect(dev.banner).toMatchObject({ address, namespace: ns, node: 'dev-a', startedServer: true });
    const connection = await Connection.connect({ address });
    try {
      const sa = await connection.operatorService.listSearchAttributes({ namespace: ns });
      expect(Object.keys(sa.customAttributes ?? {})).toEqual(expect.arrayContaining(['ArchContainer', 'ArchPhase']));
    } finally {
      await connection.close();
    }
    // The worker polls in that namespace: a pause started there (of containerd namespace default) completes.
    const p = await cli(['--temporal-namespace', ns, 'pause', '--node', 'dev-a', '-n', 'default', '--wait']);
    expect(p.stderr).toBe('');
    expect(p.code).toBe(0);
    const s = await cli(['status', '--operation', 'pause', '--temporal-namespace', ns]);
    expect((s.json as StatusRow[]).map((w) => w.status)).toEqual(['COMPLETED']);
    // The old global meaning is refused with the new name.
    const old = await cli(['--namespace', ns, 'status']);
    expect(old.code).toBe(2);
    expect(old.stderr).toMatch(/--temporal-namespace/);
  } finally {
    if (dev.child.exitCode === null) expect(await stopDev(dev.child)).toBe(0);
  }
});

test('uses an already running server instead of starting one', async () => {
  const { startDevServer } = await import('../../temporal/dev-server.js');
  const server = await startDevServer({
    temporalCli: TEMPORAL_CLI,
    ip: '127.0.0.1',
    port: Number(address.split(':')[1]),
    headless: true,
  });
  try {
    const dev = await startDev();
    expect(dev.banner.uiUrl).toBeUndefined();
    expect(dev.banner.startedServer).toBe(false);
    expect(await stopDev(dev.child)).toBe(0);
    expect(await isReachable({ address, namespace: 'default' })).toBe(true); // not ours to stop
  } finally {
    await server.stop();
  }
});

test('temporal-setup registers the search attributes on a server that lacks them, idempotently', async () => {
  const port = await freePort();
  const bare = spawn(
    TEMPORAL_CLI,
    ['server', 'start-dev', '--headless', '--ip', '127.0.0.1', '--port', String(port), '--log-level', 'error'],
    { stdio: 'ignore' },
  );
  children.add(bare);
  const exited = new Promise<void>((resolve) => bare.once('exit', () => resolve()));
  try {
    const at = `127.0.0.1:${port}`;
    await waitUntil('the bare dev server', () => isReachable({ address: at, namespace: 'default' }), 60_000, 200);
    const run = async () => {
      const child = spawn(path.join(REPO_ROOT, 'bin', 'arch-cli'), ['--json', '--address', at, 'temporal-setup'], {
        env: env(),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
      return { code, json: JSON.parse(out) as { added: string[]; present: string[] } };
    };
    const first = await run();
    expect(first.code).toBe(0);
    expect(first.json.added.sort()).toEqual([
      'ArchContainer',
      'ArchNamespace',
      'ArchOperation',
      'ArchPhase',
      'ArchSourceNode',
      'ArchTargetNode',
    ]);
    const second = await run();
    expect(second.json.added).toEqual([]);
    expect(second.json.present).toHaveLength(6);
  } finally {
    bare.kill('SIGTERM');
    await withTimeout(exited, 15_000);
    children.delete(bare);
  }
});
