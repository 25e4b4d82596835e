import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { ArchInputError, CheckpointUnusableError } from '../../contract/errors.js';
import { loadSettings } from '../../core/settings.js';
import { FORMAT_VERSION, verifyCheckpointDir, type Manifest } from '../../core/manifest.js';
import { CheckpointStore } from '../../core/store.js';
import {
  fetchCheckpoint,
  fetchFile,
  loadTransferTls,
  manifestDigest,
  OfferGoneError,
  sameCheckpoint,
  TransferServer,
  type Offer,
} from '../../core/transfer.js';
import { makeTestPki } from '../support/tls.js';

/**
 * The node-to-node checkpoint transfer (node-local storage): a real HTTP
 * server on loopback, two checkpoint stores, every byte verified on arrival.
 */
let root: string;
let server: TransferServer;
let source: CheckpointStore;
let published: { dir: string; manifest: Manifest };
let digest: string;

const log = pino({ level: 'silent' });

function meta(): Omit<Manifest, 'files'> {
  return {
    formatVersion: FORMAT_VERSION,
    namespace: 'default',
    containerId: 'job-1',
    node: 'node-a',
    createdAt: new Date().toISOString(),
    mode: 'local',
    leaveRunning: false,
    runtime: { runc: 'test', criu: 'test' },
    timingsMs: {},
    rootfs: { files: 1, bytes: 10, deletions: 0 },
  };
}

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-transfer-'));
  source = new CheckpointStore(path.join(root, 'a', 'default', 'job-1'));
  const staging = await source.begin();
  fs.mkdirSync(path.join(staging.dir, 'criu'));
  // Large enough to be hashed on a worker thread when verified.
  fs.writeFileSync(path.join(staging.dir, 'criu', 'pages-1.img'), randomBytes(40 << 20));
  fs.writeFileSync(path.join(staging.dir, 'criu', 'inventory.img'), randomBytes(100));
  fs.writeFileSync(path.join(staging.dir, 'rootfs-diff.tar'), randomBytes(4096));
  fs.writeFileSync(path.join(staging.dir, 'deleted.files'), '{"whiteouts":[],"opaque":[]}');
  fs.writeFileSync(path.join(staging.dir, 'config.json'), '{}');
  const p = await source.publish(staging, meta(), { fsync: false });
  published = { dir: p.dir, manifest: p.manifest };
  digest = await manifestDigest(p.dir);
  // A file in the checkpoint directory that the manifest does not list must never be served.
  server = new TransferServer({ host: '127.0.0.1', port: 0, log });
  await server.start();
});

afterAll(async () => {
  await server?.stop();
  fs.rmSync(root, { recursive: true, force: true });
});

function target(name: string): CheckpointStore {
  return new CheckpointStore(path.join(root, name, 'default', 'job-1'));
}

function leftovers(store: CheckpointStore): string[] {
  return fs.existsSync(store.containerDir) ? fs.readdirSync(store.containerDir) : [];
}

test('streams a checkpoint, verifies it, publishes it; a second fetch finds it present', async () => {
  const offer = await server.offerCheckpoint(published.dir, digest, 60_000);
  expect(offer.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1\/checkpoint$/);
  const b = target('b');
  const progress: number[] = [];
  const r = await fetchCheckpoint({
    offer,
    manifestSha256: digest,
    store: b,
    fsync: true,
    onProgress: (p) => progress.push(p.bytesDone),
  });
  expect(r.kind).toBe('copied');
  expect(r.bytes).toBe(published.manifest.files.reduce((a, f) => a + f.size, 0));
  expect(progress.at(-1)).toBe(r.bytes);
  expect(await b.current()).toBe(r.dir);
  const verified = await verifyCheckpointDir(r.dir);
  expect(sameCheckpoint(verified, published.manifest)).toBe(true);
  expect(leftovers(b).filter((n) => n.startsWith('.staging'))).toEqual([]);
  const again = await fetchCheckpoint({ offer, manifestSha256: digest, store: b, fsync: false });
  expect(again.kind).toBe('present');
  expect(again.dir).toBe(r.dir);
});

test('a manifest that is not the one taken is refused; the target store stays untouched', async () => {
  const offer = await server.offerCheckpoint(published.dir, digest, 60_000);
  const c = target('c');
  await expect(fetchCheckpoint({ offer, manifestSha256: 'f'.repeat(64), store: c, fsync: false })).rejects.toThrow(
    CheckpointUnusableError,
  );
  expect(await c.current()).toBeNull();
  expect(leftovers(c)).toEqual([]);
});

test('bytes changed at the source after the checkpoint: sha256 mismatch, nothing published', async () => {
  const offer = await server.offerCheckpoint(published.dir, digest, 60_000);
  const pages = path.join(published.dir, 'criu', 'pages-1.img');
  const original = fs.readFileSync(pages);
  const tampered = Buffer.from(original);
  tampered[12345] = tampered[12345]! ^ 0xff;
  fs.writeFileSync(pages, tampered);
  const d = target('d');
  try {
    await expect(fetchCheckpoint({ offer, manifestSha256: digest, store: d, fsync: false })).rejects.toThrow(
      /pages-1.img: sha256 mismatch/,
    );
    expect(await d.current()).toBeNull();
    expect(leftovers(d).filter((n) => n.startsWith('.staging'))).toEqual([]);
  } finally {
    fs.writeFileSync(pages, original);
  }
});

test('withdrawn or unknown offers are gone; only listed files are served, only with the token', async () => {
  const offer = await server.offerCheckpoint(published.dir, digest, 60_000);
  expect(server.withdraw(offer.token)).toBe(true);
  await expect(fetchCheckpoint({ offer, manifestSha256: digest, store: target('e'), fsync: false })).rejects.toThrow(
    OfferGoneError,
  );
  const live = await server.offerCheckpoint(published.dir, digest, 60_000);
  fs.writeFileSync(path.join(published.dir, 'secret.txt'), 'not in the manifest');
  const get = (q: string, token?: string) =>
    new Promise<number>((resolve, reject) => {
      http
        .get(`${live.url}${q}`, { headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
        .on('error', reject);
    });
  try {
    expect(await get('?path=manifest.json', live.token)).toBe(200);
    expect(await get('?path=criu/inventory.img', live.token)).toBe(200);
    expect(await get('?path=criu/inventory.img')).toBe(404);
    expect(await get('?path=criu/inventory.img', 'a'.repeat(64))).toBe(404);
    expect(await get('?path=secret.txt', live.token)).toBe(404);
    expect(await get(`?path=${encodeURIComponent('../../../../etc/passwd')}`, live.token)).toBe(404);
  } finally {
    fs.rmSync(path.join(published.dir, 'secret.txt'));
  }
  // Expired offers are gone too.
  const short = await server.offerCheckpoint(published.dir, digest, 1);
  await new Promise((r) => setTimeout(r, 20));
  await expect(
    fetchCheckpoint({ offer: short, manifestSha256: digest, store: target('f'), fsync: false }),
  ).rejects.toThrow(OfferGoneError);
});

test('cancellation stops the transfer and leaves nothing behind', async () => {
  const offer = await server.offerCheckpoint(published.dir, digest, 60_000);
  const g = target('g');
  const ac = new AbortController();
  const p = fetchCheckpoint({
    offer,
    manifestSha256: digest,
    store: g,
    fsync: false,
    signal: ac.signal,
    concurrency: 1,
    onProgress: () => ac.abort(),
  });
  await expect(p).rejects.toThrow();
  expect(await g.current()).toBeNull();
  expect(leftovers(g).filter((n) => n.startsWith('.staging'))).toEqual([]);
});

test('single files (image archives) are offered and fetched, then removed when withdrawn', async () => {
  const file = path.join(root, 'image.tar');
  fs.writeFileSync(file, randomBytes(100_000));
  let removed = false;
  const offer: Offer = await server.offerFile(file, 60_000, () => {
    removed = true;
  });
  const dest = path.join(root, 'image-copy.tar');
  expect(await fetchFile(offer, dest)).toBe(100_000);
  expect(fs.readFileSync(dest).equals(fs.readFileSync(file))).toBe(true);
  server.withdraw(offer.token);
  expect(removed).toBe(true);
});

describe('over TLS (ARCH_TRANSFER_TLS_CERT/KEY on the source, ARCH_TRANSFER_TLS_CA on the target)', () => {
  let tlsDir: string;
  let tlsServer: TransferServer;
  let ca: Buffer;
  let otherCa: Buffer;

  /** A CA and a certificate it signs for 127.0.0.1; and an unrelated CA. */
  beforeAll(async () => {
    tlsDir = path.join(root, 'tls');
    const pki = await makeTestPki(tlsDir);
    ca = fs.readFileSync(pki.ca);
    otherCa = fs.readFileSync(pki.otherCa);
    const settings = loadSettings({
      ARCH_CONFIG: path.join(tlsDir, 'none.env'),
      ARCH_TRANSFER_TLS_CERT: pki.cert,
      ARCH_TRANSFER_TLS_KEY: pki.key,
      ARCH_TRANSFER_TLS_CA: pki.ca,
    });
    const tls = loadTransferTls(settings);
    expect(tls.ca?.equals(ca)).toBe(true);
    tlsServer = new TransferServer({ host: '127.0.0.1', port: 0, tls: tls.server, log });
    await tlsServer.start();
  });

  afterAll(async () => {
    await tlsServer?.stop();
  });

  test('a checkpoint streams over https, verified against the CA', async () => {
    expect(tlsServer.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const offer = await tlsServer.offerCheckpoint(published.dir, digest, 60_000);
    const r = await fetchCheckpoint({ offer, manifestSha256: digest, store: target('tls-1'), fsync: false, ca });
    expect(r.kind).toBe('copied');
    expect(sameCheckpoint(await verifyCheckpointDir(r.dir), published.manifest)).toBe(true);
  });

  test('a certificate the CA did not sign is refused, naming the setting to fix; nothing is published', async () => {
    const offer = await tlsServer.offerCheckpoint(published.dir, digest, 60_000);
    const store = target('tls-2');
    const err = await fetchCheckpoint({ offer, manifestSha256: digest, store, fsync: false, ca: otherCa }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ArchInputError);
    expect(String(err)).toMatch(
      /ARCH_TRANSFER_TLS_CA: the source's certificate at https:.* is not trusted .*Fix: set ARCH_TRANSFER_TLS_CA/,
    );
    expect(await store.current()).toBeNull();
  });

  test('a node that requires TLS never fetches over plain http', async () => {
    const offer = await server.offerCheckpoint(published.dir, digest, 60_000);
    await expect(
      fetchCheckpoint({ offer, manifestSha256: digest, store: target('tls-3'), fsync: false, ca }),
    ).rejects.toThrow(
      /ARCH_TRANSFER_TLS_CA: is set on this node, but the source offers plain http .*Fix: set ARCH_TRANSFER_TLS_CERT and ARCH_TRANSFER_TLS_KEY on the source/,
    );
    server.withdraw(offer.token);
  });

  test('settings: certificate without key, relative paths and unreadable files are clear errors', () => {
    const base = { ARCH_CONFIG: path.join(tlsDir, 'none.env') };
    expect(() => loadSettings({ ...base, ARCH_TRANSFER_TLS_CERT: path.join(tlsDir, 'node.pem') })).toThrow(
      /ARCH_TRANSFER_TLS_KEY: is not set but ARCH_TRANSFER_TLS_CERT is\. Fix: set both/,
    );
    expect(() => loadSettings({ ...base, ARCH_TRANSFER_TLS_CA: 'ca.pem' })).toThrow(/ARCH_TRANSFER_TLS_CA/);
    const missing = loadSettings({ ...base, ARCH_TRANSFER_TLS_CA: path.join(tlsDir, 'missing.pem') });
    expect(() => loadTransferTls(missing)).toThrow(
      /ARCH_TRANSFER_TLS_CA: cannot read .*missing\.pem \(ENOENT\)\. Fix: point it at a readable PEM file/,
    );
  });
});
