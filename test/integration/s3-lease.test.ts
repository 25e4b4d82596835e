import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { RECORD_SUFFIX } from '../../core/host-dirs.js';
import { claimNextLease, type Lease } from '../../core/lease.js';
import { closeS3Clients, S3CheckpointStore } from '../../core/s3-store.js';
import { leaseClaimFile } from '../../core/store.js';
import { loadTrust } from '../../core/trust.js';
import { objectsIn, startS3Server, type S3TestServer } from '../support/s3-server.js';

/**
 * The lease's compare-and-swap (core/lease.ts) when the job's checkpoints
 * live in a bucket: a claim is a conditional create (If-None-Match: *) on a
 * real S3 server (versitygw on loopback), so of two nodes taking the same
 * parked job at the same instant exactly one gets it. What a restore
 * reads from the bucket is signed before any of it reaches the node. And a
 * prefix carries an ownership record, as a checkpoint directory does: ARCH
 * writes into it and removes it only for the container that record names.
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

describe('a prefix belongs to the container its ownership record names', () => {
  const owner = (containerId: string, key: string) => ({ namespace: 'default', key, containerId, node: 'node-a' });
  const prefixDir = (j: string) => path.join(s3.root, BUCKET, 'p', 'default', j);
  const recordFile = (j: string) => path.join(s3.root, BUCKET, 'p', 'default', `${j}${RECORD_SUFFIX}`);
  const recordOf = (j: string) => JSON.parse(fs.readFileSync(recordFile(j), 'utf8')) as Record<string, unknown>;

  test('the first write records its container; another container naming the prefix cannot remove it; its own can, record and all', async () => {
    const j = 'owned-job';
    const a = storeFor('node-a', j);
    await a.writeLease('{"mine":"a"}\n', owner('ctr-a', j));
    expect(recordOf(j)).toMatchObject({ kind: 'checkpoint', containerId: 'ctr-a', key: j, createdByArch: true });
    // A second container naming the same ARCH_CHECKPOINT_URL + ARCH_CHECKPOINT_ID, exiting 0.
    expect(await storeFor('node-b', j).remove({ namespace: 'default', id: 'ctr-b' })).toEqual({
      removed: false,
      why: 'it belongs to container default/ctr-a',
    });
    expect(await a.remove({ namespace: 'other', id: 'ctr-a' })).toMatchObject({ removed: false });
    expect(await a.readLease()).toBe('{"mine":"a"}\n');
    expect(await a.remove({ namespace: 'default', id: 'ctr-a' })).toEqual({ removed: true });
    expect(objectsIn(prefixDir(j))).toEqual([]);
    expect(fs.existsSync(recordFile(j))).toBe(false);
  });

  test('a newer container of the same job (restored from it) holds it from then on: the old one no longer removes it', async () => {
    const j = 'passed-on';
    await storeFor('node-a', j).writeLease('{}\n', owner('ctr-old', j));
    const b = storeFor('node-b', j);
    await b.takeOver(owner('ctr-new', j));
    expect(recordOf(j)).toMatchObject({ containerId: 'ctr-new', createdByArch: true });
    expect(await storeFor('node-a', j).remove({ namespace: 'default', id: 'ctr-old' })).toEqual({
      removed: false,
      why: 'it belongs to container default/ctr-new',
    });
    expect(await b.remove({ namespace: 'default', id: 'ctr-new' })).toEqual({ removed: true });
  });

  test('a prefix holding objects ARCH did not write: never written into, never removed', async () => {
    const j = 'precious';
    const s = storeFor('node-a', j);
    await s.at.put('data.bin', Buffer.from("not ARCH's\n"));
    expect(await s.remove({ namespace: 'default', id: 'ctr-x' })).toEqual({
      removed: false,
      why: 'it has no ownership record (ARCH did not create it)',
    });
    await expect(s.writeLease('{}\n', owner('ctr-x', j))).rejects.toMatchObject({
      field: 'ARCH_CHECKPOINT_URL',
      message: expect.stringMatching(
        /s3:\/\/arch-lease\/p\/default\/precious" exists and is not an ARCH checkpoint .*data\.bin/,
      ),
    });
    await expect(s.begin(owner('ctr-x', j))).rejects.toMatchObject({ field: 'ARCH_CHECKPOINT_URL' });
    expect(objectsIn(prefixDir(j)).map((o) => o.rel)).toEqual(['data.bin']);
    expect(fs.existsSync(recordFile(j))).toBe(false);
  });

  test('nothing there: nothing to remove, and no record is written by asking', async () => {
    const j = 'never-used';
    expect(await storeFor('node-a', j).remove({ namespace: 'default', id: 'ctr' })).toEqual({
      removed: false,
      why: 'it does not exist',
    });
    expect(fs.existsSync(recordFile(j))).toBe(false);
  });
});
