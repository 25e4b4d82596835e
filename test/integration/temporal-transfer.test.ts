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
import { ChunkDir } from '../../core/chunk-dir.js';
import { assembleChunked } from '../../core/chunked-files.js';

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

describe("store format 2: the offer serves the manifest's chunks, the target fetches those it lacks", () => {
  let v2: { dir: string; manifest: Manifest };
  let v2digest: string;
  let pages: Buffer;
  const settings = { configFile: '/nonexistent/arch.env', keep: 2 };

  beforeAll(async () => {
    const src = new CheckpointStore(path.join(root, 'a2', 'default', 'job-1'));
    const staging = await src.begin();
    fs.mkdirSync(path.join(staging.dir, 'criu'));
    // Random chunks, two equal (zero) chunks and a short last one.
    pages = Buffer.concat([randomBytes(3 << 20), Buffer.alloc(2 << 20), randomBytes(300_000)]);
    fs.writeFileSync(path.join(staging.dir, 'criu', 'pages-1.img'), pages);
    fs.writeFileSync(path.join(staging.dir, 'criu', 'inventory.img'), randomBytes(100));
    fs.writeFileSync(path.join(staging.dir, 'rootfs-diff.tar'), randomBytes(4096));
    fs.writeFileSync(path.join(staging.dir, 'deleted.files'), '{"whiteouts":[],"opaque":[]}');
    fs.writeFileSync(path.join(staging.dir, 'config.json'), '{}');
    const p = await src.publish(staging, meta(), { fsync: false, chunk: { from: staging.dir, keep: 2 } });
    v2 = { dir: p.dir, manifest: p.manifest };
    v2digest = await manifestDigest(p.dir);
    expect(v2.manifest.chunked?.files.map((f) => f.path).sort()).toEqual(['criu/pages-1.img', 'rootfs-diff.tar']);
  });

  const ids = () => [...new Set(v2.manifest.chunked!.files.flatMap((f) => f.chunks.map((c) => c.id)))];
  const sourceChunk = (id: string) => new ChunkDir(path.dirname(v2.dir)).pathOf(id);
  /** A previous (format 1) checkpoint already current on the target: a failed transfer must leave it so. */
  async function withPrevious(name: string): Promise<{ store: CheckpointStore; dir: string }> {
    const store = target(name);
    const offer = await server.offerCheckpoint(published.dir, digest, 60_000);
    const r = await fetchCheckpoint({ offer, manifestSha256: digest, store, fsync: false });
    return { store, dir: r.dir };
  }
  function chunkTemps(store: CheckpointStore): string[] {
    const d = path.join(store.containerDir, 'chunks');
    if (!fs.existsSync(d)) return [];
    return fs.readdirSync(d, { recursive: true, encoding: 'utf8' }).filter((n) => path.basename(n).startsWith('.tmp-'));
  }

  test('a v2 checkpoint arrives with its chunks, durable, and reassembles to the same bytes; a second fetch finds it present', async () => {
    const offer = await server.offerCheckpoint(v2.dir, v2digest, 60_000);
    const b = target('v2-b');
    const r = await fetchCheckpoint({ offer, manifestSha256: v2digest, store: b, fsync: true, settings });
    expect(r.kind).toBe('copied');
    expect(await b.current()).toBe(r.dir);
    const copy = (await b.readManifest())!;
    expect(copy.chunked).toEqual(v2.manifest.chunked);
    expect(sameCheckpoint(copy, v2.manifest)).toBe(true);
    for (const id of ids()) expect(fs.existsSync(new ChunkDir(b.containerDir).pathOf(id))).toBe(true);
    const out = fs.mkdtempSync(path.join(root, 'assembled-'));
    await assembleChunked(copy.chunked!.files, b.chunkDir(), out);
    expect(fs.readFileSync(path.join(out, 'criu', 'pages-1.img')).equals(pages)).toBe(true);
    expect(fs.existsSync(path.join(r.dir, 'criu', 'pages-1.img'))).toBe(false);
    const again = await fetchCheckpoint({ offer, manifestSha256: v2digest, store: b, fsync: false, settings });
    expect(again.kind).toBe('present');
  });

  test('chunks the target already has are not fetched (dedup against its own chunks dir)', async () => {
    const offer = await server.offerCheckpoint(v2.dir, v2digest, 60_000);
    const c = target('v2-c');
    const have = ids()[0]!;
    const mine = new ChunkDir(c.containerDir).pathOf(have);
    fs.mkdirSync(path.dirname(mine), { recursive: true });
    fs.copyFileSync(sourceChunk(have), mine);
    // Gone from the source after the offer: fetching it would fail with `truncated`.
    const aside = `${sourceChunk(have)}.aside`;
    fs.renameSync(sourceChunk(have), aside);
    try {
      const r = await fetchCheckpoint({ offer, manifestSha256: v2digest, store: c, fsync: false, settings });
      expect(r.kind).toBe('copied');
    } finally {
      fs.renameSync(aside, sourceChunk(have));
    }
    // Without it on the target, the same transfer fails cleanly.
    const d = await withPrevious('v2-d');
    fs.renameSync(sourceChunk(have), aside);
    try {
      await expect(
        fetchCheckpoint({ offer, manifestSha256: v2digest, store: d.store, fsync: false, settings }),
      ).rejects.toThrow(/no longer has it/);
    } finally {
      fs.renameSync(aside, sourceChunk(have));
    }
    expect(await d.store.current()).toBe(d.dir);
  });

  test('a chunk damaged on the source after the offer: corrupt, the previous checkpoint stays current, nothing staged is left', async () => {
    const offer = await server.offerCheckpoint(v2.dir, v2digest, 60_000);
    const e = await withPrevious('v2-e');
    const victim = sourceChunk(v2.manifest.chunked!.files.find((f) => f.path === 'criu/pages-1.img')!.chunks[1]!.id);
    const original = fs.readFileSync(victim);
    const bad = Buffer.from(original);
    bad[bad.length >> 1] = bad[bad.length >> 1]! ^ 0xff;
    fs.writeFileSync(victim, bad);
    try {
      const err = await fetchCheckpoint({
        offer,
        manifestSha256: v2digest,
        store: e.store,
        fsync: false,
        settings,
      }).catch((x: unknown) => x);
      expect(err).toBeInstanceOf(CheckpointUnusableError);
      expect((err as CheckpointUnusableError).reason).toBe('corrupt');
      expect((err as Error).message).toMatch(/pages-1\.img: chunk 2 of/);
    } finally {
      fs.writeFileSync(victim, original);
    }
    expect(await e.store.current()).toBe(e.dir);
    expect((await e.store.readManifest())!.chunked).toBeUndefined();
    expect(leftovers(e.store).filter((n) => n.startsWith('.staging') || n.startsWith('ckpt-')).length).toBe(1);
    expect(chunkTemps(e.store)).toEqual([]);
  });

  test('a chunk stream cut short: truncated, nothing published', async () => {
    const offer = await server.offerCheckpoint(v2.dir, v2digest, 60_000);
    // A loopback relay in front of the server that cuts every chunk's body in half.
    const upstream = new URL(offer.url);
    const relay = http.createServer((req, res) => {
      http.get({ host: upstream.hostname, port: upstream.port, path: req.url, headers: req.headers }, (up) => {
        if (!req.url?.includes('chunk=') || up.statusCode !== 200) {
          res.writeHead(up.statusCode ?? 500, up.headers);
          up.pipe(res);
          return;
        }
        void (async () => {
          const parts: Buffer[] = [];
          for await (const p of up) parts.push(p as Buffer);
          const body = Buffer.concat(parts);
          res.writeHead(200, { 'content-length': String(body.length) });
          res.write(body.subarray(0, body.length >> 1), () => res.destroy());
        })();
      });
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', () => r()));
    const port = (relay.address() as { port: number }).port;
    const f = await withPrevious('v2-f');
    try {
      const relayed: Offer = { ...offer, url: `http://127.0.0.1:${port}${upstream.pathname}` };
      const err = await fetchCheckpoint({
        offer: relayed,
        manifestSha256: v2digest,
        store: f.store,
        fsync: false,
        settings,
      }).catch((x: unknown) => x);
      expect(err).toBeInstanceOf(CheckpointUnusableError);
      expect((err as CheckpointUnusableError).reason).toBe('truncated');
    } finally {
      relay.closeAllConnections();
      await new Promise((r) => relay.close(r));
    }
    expect(await f.store.current()).toBe(f.dir);
    expect(chunkTemps(f.store)).toEqual([]);
  });

  test('the server serves only chunks the offered manifest refers to', async () => {
    const offer = await server.offerCheckpoint(v2.dir, v2digest, 60_000);
    const other = await server.offerCheckpoint(published.dir, digest, 60_000);
    const status = (o: Offer, q: string) =>
      new Promise<number>((resolve, reject) => {
        http
          .get(`${o.url}${q}`, { headers: { authorization: `Bearer ${o.token}` } }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          })
          .on('error', reject);
      });
    const id = ids()[0]!;
    expect(await status(offer, `?chunk=${id}`)).toBe(200);
    // The v1 offer of the same node does not reach the v2 checkpoint's chunks.
    expect(await status(other, `?chunk=${id}`)).toBe(404);
    expect(await status(offer, `?chunk=${'0'.repeat(64)}`)).toBe(404);
    expect(await status(offer, `?chunk=${encodeURIComponent(`../../${id}`)}`)).toBe(404);
    expect(await status(offer, `?chunk=${id.toUpperCase()}`)).toBe(404);
  });
});
