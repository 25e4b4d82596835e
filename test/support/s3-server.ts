import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';

/**
 * A real S3-compatible server for tests: versitygw (built by
 * scripts/install-test-clients.sh) with its POSIX backend, serving a temp
 * directory on a free loopback port. Each bucket is a directory there and
 * each object a file below it, so a test can count what was written, or
 * damage an object, with plain fs calls.
 */
export const VERSITYGW = process.env.ARCH_VERSITYGW ?? '/opt/arch/test-tools/bin/versitygw';

export interface S3TestServer {
  endpoint: string;
  port: number;
  /** The served directory: <root>/<bucket>/<key>. */
  root: string;
  accessKey: string;
  secretKey: string;
  /** Node settings (arch.env) that reach this server. */
  settings(): Record<string, string>;
  createBucket(name: string): Promise<void>;
  /** Stop the process (the data stays); start() serves it again on the same port (a no-op while it serves). */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Stop and remove the directory. */
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function waitListening(port: number, child: ChildProcess, log: string): Promise<void> {
  const until = Date.now() + 20_000;
  while (Date.now() < until) {
    if (child.exitCode !== null)
      throw new Error(`versitygw exited (${child.exitCode}): ${fs.readFileSync(log, 'utf8').slice(-2000)}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`versitygw did not listen on 127.0.0.1:${port} within 20 s`);
}

export async function startS3Server(): Promise<S3TestServer> {
  if (!fs.existsSync(VERSITYGW))
    throw new Error(`${VERSITYGW} is missing: run scripts/install-test-clients.sh (it builds versitygw)`);
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-s3-'));
  const root = path.join(base, 'data');
  fs.mkdirSync(root);
  const log = path.join(base, 'versitygw.log');
  const port = await freePort();
  const accessKey = 'archtestaccess';
  const secretKey = 'archtestsecret1234567890';
  let child: ChildProcess | undefined;
  const start = async () => {
    // Already serving: a second process could not bind the port, and would hide the first from stop().
    if (child && child.exitCode === null && child.signalCode === null) return;
    const out = fs.openSync(log, 'a');
    child = spawn(
      VERSITYGW,
      ['--access', accessKey, '--secret', secretKey, '--port', `127.0.0.1:${port}`, 'posix', root],
      { stdio: ['ignore', out, out] },
    );
    fs.closeSync(out);
    await waitListening(port, child, log);
  };
  // SIGKILL, as a crash: on SIGTERM versitygw goes on serving the connections a client keeps open.
  const stop = async () => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  };
  // Stopped even when the test process ends without calling close().
  const onExit = () => child?.kill('SIGKILL');
  process.once('exit', onExit);
  await start();
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    port,
    root,
    accessKey,
    secretKey,
    settings: () => ({
      AWS_ENDPOINT_URL_S3: endpoint,
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: accessKey,
      AWS_SECRET_ACCESS_KEY: secretKey,
    }),
    async createBucket(name) {
      const c = new S3Client({
        endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: { accessKeyId: accessKey, secretAccessKey: secretKey },
      });
      try {
        await c.send(new CreateBucketCommand({ Bucket: name }));
      } finally {
        c.destroy();
      }
    },
    stop,
    start,
    async close() {
      await stop();
      process.removeListener('exit', onExit);
      fs.rmSync(base, { recursive: true, force: true });
    },
  };
}

/** Every file below `dir` (objects of a bucket), with sizes. */
export function objectsIn(dir: string): { rel: string; bytes: number }[] {
  const out: { rel: string; bytes: number }[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push({ rel: path.relative(dir, p), bytes: fs.statSync(p).size });
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  return out;
}
