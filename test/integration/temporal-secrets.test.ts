import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection } from '@temporalio/client';
import type { Payload } from '@temporalio/common';
import { AesGcmPayloadCodec, ENCRYPTED_ENCODING, loadPayloadKeys } from '../../temporal/codec.js';
import { WORKFLOW_TASK_QUEUE } from '../../contract/names.js';
import type { MigrateInput, MigrateResult, TransferOffer } from '../../contract/types.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { runCli, runningOn, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';
import { migrateContainer } from '../../workflows/index.js';

/**
 * Security issue 10, findings 6 and 7, on the real stack (Temporal dev
 * server, three containerd nodes, arch-worker processes): a container's
 * environment and the transfer tokens never reach Temporal in plaintext, and
 * a compensated migration leaves no transfer offer that still downloads.
 * The histories are read raw from the server, without the codec, as anyone
 * who can reach Temporal would read them.
 */
let cluster: TestCluster;
let keyFile: string;
const A = 'sec-a';
const B = 'sec-b';
const C = 'sec-c'; // restores always fail here (CRIU is /bin/false): migrations to it compensate
const SECRET = `s3cr3t-${randomBytes(12).toString('hex')}`;

beforeAll(async () => {
  await cleanupStaleNodes();
  const keyDir = fs.mkdtempSync('/tmp/arch-payload-key-');
  keyFile = path.join(keyDir, 'payload.key');
  fs.writeFileSync(keyFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const withKey = { ARCH_PAYLOAD_KEY_FILE: keyFile };
  // The image only on A and C: the first move ships it to B (an image offer, a second token).
  cluster = await startCluster('secrets', [A, B, C], {
    imageOn: [A, C],
    nodeSettings: { [A]: withKey, [B]: withKey, [C]: { ...withKey, ARCH_CRIU: '/bin/false' } },
  });
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
  if (keyFile) fs.rmSync(path.dirname(keyFile), { recursive: true, force: true });
});

const cli = (args: string[]) => runCli(cluster, args, { ARCH_PAYLOAD_KEY_FILE: keyFile });

/** Every history event of every workflow on the server, raw: no codec, no converter. */
async function rawHistories(): Promise<{ workflowId: string; events: unknown[] }[]> {
  const out: { workflowId: string; events: unknown[] }[] = [];
  for await (const w of cluster.temporal.client.workflow.list()) {
    const events: unknown[] = [];
    let nextPageToken: Uint8Array | undefined;
    do {
      const r = await cluster.temporal.client.workflowService.getWorkflowExecutionHistory({
        namespace: cluster.temporal.namespace,
        execution: { workflowId: w.workflowId, runId: w.runId },
        nextPageToken,
      });
      events.push(...(r.history?.events ?? []));
      nextPageToken = r.nextPageToken?.length ? r.nextPageToken : undefined;
    } while (nextPageToken);
    out.push({ workflowId: w.workflowId, events });
  }
  return out;
}

/** All text a reader of the raw history sees: strings, and every byte field read as UTF-8. */
function visibleText(v: unknown, acc: string[] = []): string[] {
  if (typeof v === 'string') acc.push(v);
  else if (v instanceof Uint8Array) acc.push(Buffer.from(v).toString('utf8'));
  else if (Array.isArray(v)) for (const x of v) visibleText(x, acc);
  else if (v && typeof v === 'object') for (const x of Object.values(v)) visibleText(x, acc);
  return acc;
}

/**
 * Payload-shaped objects (metadata + data) anywhere in a history, except
 * search attributes (the server's index, plain by design; ARCH puts only
 * names of containers, nodes and phases there) and patch markers.
 */
function payloadsIn(v: unknown, acc: Payload[] = []): Payload[] {
  if (Array.isArray(v)) for (const x of v) payloadsIn(x, acc);
  else if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
    const o = v as Record<string, unknown>;
    if (o.data instanceof Uint8Array && o.metadata && typeof o.metadata === 'object') acc.push(o as Payload);
    // Patch markers are Temporal's own bookkeeping (the patch's name), written by the SDK's core.
    else if (o.markerName !== 'core_patch')
      for (const [k, x] of Object.entries(o)) if (k !== 'searchAttributes') payloadsIn(x, acc);
  }
  return acc;
}

/** Transfer offers in the decoded payloads of histories (what the workflows passed around). */
async function offersIn(histories: { events: unknown[] }[]): Promise<TransferOffer[]> {
  const codec = new AesGcmPayloadCodec(loadPayloadKeys({ ARCH_PAYLOAD_KEY_FILE: keyFile }).keys);
  const found: TransferOffer[] = [];
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      if (typeof o.token === 'string' && typeof o.url === 'string') found.push(o as unknown as TransferOffer);
      Object.values(o).forEach(walk);
    }
  };
  for (const h of histories) {
    for (const p of await codec.decode(payloadsIn(h.events))) {
      try {
        walk(JSON.parse(Buffer.from(p.data ?? []).toString('utf8')));
      } catch {
        // binary/null and other non-JSON payloads
      }
    }
  }
  return found;
}

function httpGet(url: string, token: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers: { authorization: `Bearer ${token}` } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      })
      .on('error', reject);
  });
}

test("after a migration, no workflow history holds the container's secret or a transfer token; the CLI still shows the result", async () => {
  await cluster.runCounter(A, 'secretive', [`SECRET_TOKEN=${SECRET}`]);
  await cluster.waitCount(A, 'secretive', 3);
  const r = await cli(['--json', 'migrate', 'default/secretive', '--from', A, '--to', B, '--wait']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const res = r.json as MigrateResult & { workflowId: string };
  expect(res.outcome).toBe('migrated');
  expect(await runningOn(cluster, 'secretive')).toEqual([B]);
  // The restored container still has its environment (read on the node, not from Temporal).
  const task = await cluster.nodes[B]!.containerd.task('secretive');
  expect(fs.readFileSync(`/proc/${task!.pid}/environ`, 'utf8').split('\0')).toContain(`SECRET_TOKEN=${SECRET}`);

  const histories = await rawHistories();
  expect(histories.map((h) => h.workflowId)).toContain(res.workflowId);
  const offers = await offersIn(histories);
  // The checkpoint's offer and the image's: the workflows did pass tokens around...
  const kinds = new Map(offers.map((o) => [o.token, o.url.replace(/^.*\/v1\//, '')]));
  expect([...kinds.values()].sort()).toEqual(['checkpoint', 'file']);
  for (const h of histories) {
    const text = visibleText(h.events).join('\n');
    // ...but a reader of the server sees neither them nor the environment.
    expect(text).not.toContain(SECRET);
    for (const o of offers) expect(text).not.toContain(o.token);
  }
  // Every payload of the migration is encrypted.
  const mine = histories.find((h) => h.workflowId === res.workflowId)!;
  const encodings = new Set(payloadsIn(mine.events).map((p) => Buffer.from(p.metadata?.encoding ?? []).toString()));
  expect([...encodings]).toEqual([ENCRYPTED_ENCODING]);

  // With the key, the CLI shows the result in full.
  const status = await cli(['--json', 'status', res.workflowId]);
  expect(status.code).toBe(0);
  expect((status.json as { result: MigrateResult }).result).toMatchObject({
    outcome: 'migrated',
    runningOn: B,
    from: A,
    to: B,
  });
});

test('a compensated migration leaves no offer behind: its token no longer downloads the checkpoint', async () => {
  const before = new Set((await rawHistories()).map((h) => h.workflowId));
  // Through the CLI, as a user would (it encrypts when it has the key).
  const r = await cli(['migrate', 'default/secretive', '--from', B, '--to', C, '--wait']);
  expect(r.code).toBe(4);
  // The failure message is readable with the key (it is encrypted in the history).
  expect(r.stderr).toMatch(/could not move to sec-c .*it runs again on sec-b/);
  expect(await runningOn(cluster, 'secretive')).toEqual([B]);

  const histories = (await rawHistories()).filter((h) => !before.has(h.workflowId));
  expect(histories.length).toBe(1);
  const offers = await offersIn(histories);
  const checkpointOffers = offers.filter((x) => x.url.endsWith('/v1/checkpoint'));
  expect(checkpointOffers.length).toBeGreaterThanOrEqual(1);
  for (const offer of checkpointOffers) {
    expect(offer.url.startsWith(cluster.workers[B]!.transferUrl)).toBe(true);
    expect([404, 410]).toContain(await httpGet(`${offer.url}?path=manifest.json`, offer.token));
  }
  for (const h of histories) expect(visibleText(h.events).join('\n')).not.toContain(SECRET);
});

test('a worker with a key refuses plaintext payloads: a workflow started without the key never runs an activity', async () => {
  // Anyone who reaches Temporal can start this (a client without any codec); only the key makes it ARCH's own.
  const connection = await Connection.connect({ address: cluster.temporal.address });
  const plain = new Client({ connection, namespace: cluster.temporal.namespace });
  const handle = await plain.workflow.start(migrateContainer, {
    taskQueue: WORKFLOW_TASK_QUEUE,
    workflowId: `test-sec-plain-${randomBytes(3).toString('hex')}`,
    args: [{ namespace: 'default', id: 'secretive', from: B, to: A } satisfies MigrateInput],
  });
  try {
    // The workers say why (the workflow task fails and is retried until someone terminates it).
    await waitUntil(
      'a worker refusing the plaintext input',
      () =>
        Object.values(cluster.workers).some(
          (w) =>
            fs.existsSync(w.archLog) &&
            fs.readFileSync(w.archLog, 'utf8').includes('refusing a payload that is not encrypted'),
        ),
      30_000,
      250,
    );
    await sleep(1000);
    expect((await handle.describe()).status.name).toBe('RUNNING');
    const h = await handle.fetchHistory();
    expect(h.events?.some((e) => e.activityTaskScheduledEventAttributes)).toBe(false);
    expect(await runningOn(cluster, 'secretive')).toEqual([B]);
  } finally {
    await handle.terminate('test: plaintext workflow').catch(() => undefined);
    await connection.close().catch(() => undefined);
  }
});

test('codec server: the UI origin may decode; other origins are refused', async () => {
  const { startCodecServer } = await import('../../temporal/codec-server.js');
  const codec = new AesGcmPayloadCodec(loadPayloadKeys({ ARCH_PAYLOAD_KEY_FILE: keyFile }).keys);
  const server = await startCodecServer({ codec, host: '127.0.0.1', port: 0, origins: ['http://localhost:8233'] });
  try {
    const [enc] = await codec.encode([
      { metadata: { encoding: Buffer.from('json/plain') }, data: Buffer.from(JSON.stringify({ hello: SECRET })) },
    ]);
    const body = JSON.stringify({
      payloads: [
        {
          metadata: Object.fromEntries(
            Object.entries(enc!.metadata!).map(([k, v]) => [k, Buffer.from(v).toString('base64')]),
          ),
          data: Buffer.from(enc!.data!).toString('base64'),
        },
      ],
    });
    const post = (origin: string) =>
      fetch(`${server.url}/decode`, {
        method: 'POST',
        headers: { origin, 'content-type': 'application/json', 'x-namespace': 'default' },
        body,
      });
    const ok = await post('http://localhost:8233');
    expect(ok.status).toBe(200);
    expect(ok.headers.get('access-control-allow-origin')).toBe('http://localhost:8233');
    const decoded = (await ok.json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
    expect(Buffer.from(decoded.payloads[0]!.metadata.encoding!, 'base64').toString()).toBe('json/plain');
    expect(JSON.parse(Buffer.from(decoded.payloads[0]!.data, 'base64').toString())).toEqual({ hello: SECRET });
    const pre = await fetch(`${server.url}/decode`, {
      method: 'OPTIONS',
      headers: {
        origin: 'http://localhost:8233',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type,x-namespace',
      },
    });
    expect(pre.status).toBe(204);
    expect(pre.headers.get('access-control-allow-headers')).toMatch(/x-namespace/);
    expect((await post('http://evil.example')).status).toBe(403);
  } finally {
    await server.close();
  }
});
