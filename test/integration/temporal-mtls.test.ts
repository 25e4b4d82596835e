import { execa } from 'execa';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { writeArchConfig } from '../support/arch-env.js';
import { cleanupStaleNodes, startNode, stopAllNodes } from '../support/containerd-node.js';
import { makeTestPki, type TestPki } from '../support/tls.js';
import { REPO_ROOT } from '../support/images.js';
import {
  nodeHasPoller,
  startTemporal,
  startWorker,
  stopAllTemporal,
  waitUntil,
  type TestTemporal,
} from '../support/temporal.js';

/**
 * mTLS to Temporal through the usual settings (TEMPORAL_TLS_CERT,
 * TEMPORAL_TLS_KEY, TEMPORAL_TLS_CA). The dev server speaks plain gRPC, so a
 * TLS front on loopback stands where a real cluster's frontend would: it
 * offers h2, shows a certificate of the test CA and requires a client
 * certificate of that CA, then hands the bytes to the dev server.
 */
let temporal: TestTemporal;
let pki: TestPki;
let dir: string;
let front: tls.Server;
let frontAddress: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-mtls-'));
  pki = await makeTestPki(path.join(dir, 'pki'));
  temporal = await startTemporal();
  const [host, port] = temporal.address.split(':');
  front = tls.createServer(
    {
      key: fs.readFileSync(pki.key),
      cert: fs.readFileSync(pki.cert),
      ca: fs.readFileSync(pki.ca),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
    },
    (client) => {
      const upstream = net.connect(Number(port), host);
      client.pipe(upstream).pipe(client);
      const end = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end);
      upstream.on('error', end);
    },
  );
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  frontAddress = `127.0.0.1:${(front.address() as net.AddressInfo).port}`;
});

afterAll(async () => {
  await stopAllTemporal(); // workers first, then the server
  await stopAllNodes();
  await new Promise((resolve) => front?.close(resolve));
  fs.rmSync(dir, { recursive: true, force: true });
});

function cli(args: string[], tlsEnv: Record<string, string>) {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    TEMPORAL_ADDRESS: frontAddress,
    TEMPORAL_NAMESPACE: temporal.namespace,
    ARCH_CONFIG: '/dev/null',
    ...tlsEnv,
  };
  for (const k of ['TEMPORAL_TLS', 'TEMPORAL_TLS_CERT', 'TEMPORAL_TLS_KEY', 'TEMPORAL_TLS_CA'])
    if (!(k in tlsEnv)) delete env[k];
  return execa(path.join(REPO_ROOT, 'bin/arch-cli'), args, { env, extendEnv: false, reject: false, timeout: 60_000 });
}

test("a client certificate and the server's CA from the settings: arch-cli talks to Temporal over mTLS", async () => {
  const r = await cli(['schedule', 'ls'], {
    TEMPORAL_TLS_CERT: pki.cert,
    TEMPORAL_TLS_KEY: pki.key,
    TEMPORAL_TLS_CA: pki.ca,
  });
  expect(r.stderr).toBe('');
  expect(r.exitCode).toBe(0);
  expect(String(r.stdout)).toMatch(/no ARCH schedules/);
});

test('without a client certificate, or trusting another CA: refused, with the address in the error', async () => {
  const noCert = await cli(['schedule', 'ls'], { TEMPORAL_TLS_CA: pki.ca });
  expect(noCert.exitCode).not.toBe(0);
  const otherCa = await cli(['schedule', 'ls'], {
    TEMPORAL_TLS_CERT: pki.cert,
    TEMPORAL_TLS_KEY: pki.key,
    TEMPORAL_TLS_CA: pki.otherCa,
  });
  expect(otherCa.exitCode).not.toBe(0);
  for (const r of [noCert, otherCa]) expect(String(r.stderr)).toContain(frontAddress);
});

test('a certificate without its key is a clear settings error', async () => {
  const r = await cli(['schedule', 'ls'], { TEMPORAL_TLS_CERT: pki.cert, TEMPORAL_TLS_CA: pki.ca });
  expect(r.exitCode).toBe(2);
  expect(String(r.stderr)).toMatch(/TEMPORAL_TLS_KEY: is not set but TEMPORAL_TLS_CERT is/);
});

test("arch-worker over mTLS (its own TLS stack): it polls its node's task queue through the TLS front", async () => {
  await cleanupStaleNodes();
  const archConfig = writeArchConfig(path.join(dir, 'cfg'), { ARCH_NODE_NAME: 'mtls-a' });
  const node = await startNode('mtls-a', { env: { ARCH_CONFIG: archConfig } });
  const worker = await startWorker(node, {
    temporal,
    archConfig,
    dir: path.join(dir, 'worker'),
    env: {
      TEMPORAL_ADDRESS: frontAddress,
      TEMPORAL_TLS_CERT: pki.cert,
      TEMPORAL_TLS_KEY: pki.key,
      TEMPORAL_TLS_CA: pki.ca,
    },
  });
  // Ready means its pollers started; the server lists one once its first poll arrives through the front.
  await waitUntil(
    'a poller on the node queue',
    async () => (await nodeHasPoller(temporal.client, temporal.namespace, 'mtls-a')) || undefined,
    15_000,
    100,
  );
  await worker.stop();
});
