import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { claimNextLease, type Lease } from '../../core/lease.js';
import { closeS3Clients, S3CheckpointStore } from '../../core/s3-store.js';
import { leaseClaimFile } from '../../core/store.js';
import { loadTrust } from '../../core/trust.js';
import { objectsIn, startS3Server, type S3TestServer } from '../support/s3-server.js';

/**
 * The lease's compare-and-swap (core/lease.ts) when the job's checkpoints
 * live in a bucket: a claim is a conditional create (If-None-Match: *) on a
 * real S3 server (versitygw on loopback), so of two nodes taking the same
 * parked job at the same instant exactly one gets it. And what a restore
 * reads from the bucket is signed before any of it reaches the node.
 */

let s3: S3TestServer;
let work: string;
const BUCKET = 'arch-lease';

function storeFor(node: string, key: string): S3CheckpointStore {
  const client = {
    region: 'us-east-1',
    endpoint: s3.endpoint,
    accessKeyId: s3.accessKey,
    secretAccessKey: s3.secretKey,
    forcePathStyle: true,
  };
  return new S3CheckpointStore(
    { loc: { bucket: BUCKET, prefix: 'p' }, client, cacheRoot: path.join(work, node) },
    'default',
    key,
    path.join(work, node, key),
  );
}

const parked = (j: string): Lease => ({
  format: 1,
  state: 'parked',
  node: 'old',
  generation: 1,
  at: '',
  reason: 'checkpointed',
  containerId: j,
});

beforeAll(async () => {
  work = fs.mkdtempSync('/tmp/arch-s3lease-');
  s3 = await startS3Server();
  await s3.createBucket(BUCKET);
}, 60_000);

afterAll(async () => {
  closeS3Clients();
  await s3?.close();
  fs.rmSync(work, { recursive: true, force: true });
});

test('two nodes taking the same parked job at once: exactly one claims its next generation in the bucket, the other is refused', async () => {
  const jobs = Array.from({ length: 20 }, (_, i) => `job-${i}`);
  const race = (node: string) =>
    Promise.all(
      jobs.map(async (j) => {
        const r = await claimNextLease(
          storeFor(node, j),
          parked(j),
          node,
          new Set([node]),
          j,
          { namespace: 'default', key: j },
          `default/${j}`,
        );
        return [j, r.refusal ?? 'won'] as const;
      }),
    );
  const [a, b] = await Promise.all([race('node-a'), race('node-b')]);
  const byJob = new Map(a.map(([j, r]) => [j, { a: r, b: '' }]));
  for (const [j, r] of b) byJob.get(j)!.b = r;
  for (const j of jobs) {
    const { a: ra, b: rb } = byJob.get(j)!;
    const winners = [ra === 'won' ? 'node-a' : undefined, rb === 'won' ? 'node-b' : undefined].filter(Boolean);
    expect({ j, winners: winners.length }).toEqual({ j, winners: 1 });
    const loser = ra === 'won' ? rb : ra;
    expect(loser).toMatch(
      new RegExp(`^default/${j}: another node \\(${String(winners[0])}\\) took the job at generation 2`),
    );
    const claim = JSON.parse(
      fs.readFileSync(path.join(s3.root, BUCKET, 'p', 'default', j, leaseClaimFile(2)), 'utf8'),
    ) as { node: string };
    expect(claim.node).toBe(winners[0]);
  }
});

test('a claim not used is given back, and claims older than the one before are removed', async () => {
  const j = 'job-given-back';
  const a = storeFor('node-a', j);
  const b = storeFor('node-b', j);
  expect(
    await a.claimLease(2, JSON.stringify({ node: 'node-a' }), {
      namespace: 'default',
      key: j,
      containerId: j,
      node: 'n',
    }),
  ).toBeUndefined();
  expect(
    await b.claimLease(2, JSON.stringify({ node: 'node-b' }), {
      namespace: 'default',
      key: j,
      containerId: j,
      node: 'n',
    }),
  ).toContain('node-a');
  await a.releaseLeaseClaim(2);
  expect(
    await b.claimLease(2, JSON.stringify({ node: 'node-b' }), {
      namespace: 'default',
      key: j,
      containerId: j,
      node: 'n',
    }),
  ).toBeUndefined();
  for (const g of [3, 4])
    expect(await b.claimLease(g, '{}', { namespace: 'default', key: j, containerId: j, node: 'n' })).toBeUndefined();
  const claims = objectsIn(path.join(s3.root, BUCKET, 'p', 'default', j))
    .map((o) => o.rel)
    .filter((r) => r.startsWith('lease.claim-'))
    .sort();
  expect(claims).toEqual([leaseClaimFile(3), leaseClaimFile(4)]);
});

test('a checkpoint in the bucket that no trusted node signed: refused before anything its manifest lists reaches the node', async () => {
  const key = path.join(work, 'node.key');
  fs.writeFileSync(key, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, {
    mode: 0o600,
  });
  const trust = loadTrust({ ARCH_CONFIG: path.join(work, 'none.env'), ARCH_SIGNING_KEY: key, ARCH_TRUSTED_KEYS: '' });
  // Planted by whoever can write the bucket: a manifest listing a large file, no signature, named current.
  const j = 'planted';
  const store = storeFor('node-a', j);
  const name = 'ckpt-20261203T000000Z-0123abcd';
  await store.at.put(`${name}/manifest.json`, Buffer.from(JSON.stringify({ files: [{ path: 'big', size: 1 << 20 }] })));
  await store.at.put(`${name}/big`, Buffer.alloc(1 << 20, 7));
  await store.at.put('current', Buffer.from(`${name}\n`));
  await expect(store.current(trust)).rejects.toMatchObject({ reason: 'unsigned' });
  expect(fs.existsSync(path.join(work, 'node-a', j))).toBe(false);
});
