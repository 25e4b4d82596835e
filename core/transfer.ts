/**
 * Moving a checkpoint between nodes with node-local storage.
 *
 * The target pulls: the source's worker runs a small HTTP server that serves
 * only what it was told to offer (one checkpoint directory, or one file such
 * as an exported image), each under a random bearer token that expires. The
 * target streams every file into a staging directory of its own checkpoint
 * store, hashing while it writes, compares size and sha256 with the
 * manifest, and publishes atomically. The manifest itself is bound to the
 * checkpoint by its sha256, which the orchestrator got from the source: a
 * transfer can never deliver a different (or tampered) checkpoint.
 *
 * Why pull: the node that restores is the one that must trust the bytes, so
 * it is the one that verifies; and a target that dies mid-transfer leaves
 * only a staging directory (removed on the next begin()).
 *
 * Shared storage needs none of this: the target finds the same manifest
 * already published and `receiveCheckpoint` reports it as present.
 *
 * A sealed checkpoint (core/seal.ts) moves as it is stored: ciphertext on the
 * wire and on the target's disk, its seal section carried over in the
 * manifest the target signs. Neither side decrypts; the node that restores
 * needs the same ARCH_STORE_KEY_FILE (one store key per cluster, like the
 * payload key), else the container starts fresh with reason `sealed-key`.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { StreamDigest, type Digest } from './digest.js';
import { ArchInputError, CheckpointUnusableError } from '../contract/errors.js';
import { readPemFile } from './pem-file.js';
import type { Logger } from './log.js';
import { parseManifest, type Manifest } from './manifest.js';
import { loadTrust, verifyManifestSignature, type Trust } from './trust.js';
import type { Settings } from './settings.js';
import type { CheckpointStore } from './store.js';
import { MANIFEST_FILE, SIGNATURE_FILE } from './checkpoint-layout.js';
import { chunkKeysOf, decodeChunk, isChunkId, type ChunkKeys } from './chunk-codec.js';
import { ChunkDir, type ChunkStore, type ChunkWriteStats } from './chunk-dir.js';
import { storeKeyLookup } from './seal.js';
import { loadSettings } from './settings.js';

export interface Offer {
  url: string;
  token: string;
  expiresAt: string;
}

type Served =
  | {
      kind: 'checkpoint';
      dir: string;
      manifestSha256: string;
      files: Map<string, number>;
      /** Store format 2: the ids of the chunks the offered manifest refers to, and where they are. */
      chunks: Set<string>;
      chunkDir: ChunkDir;
    }
  | { kind: 'file'; file: string; size: number; onDone?: () => void };

interface Entry {
  tokenHash: Buffer;
  /** Gone after this (ms epoch); each request moves it to at least now + OFFER_IDLE_MS. */
  expires: number;
  /** ...but never past this: a token that keeps being used is still not forever. */
  hardExpires: number;
  served: Served;
}

/**
 * Offer lifetimes. An offer is a bearer token that travels through Temporal
 * (encrypted, but readable by every node of the cluster): it must die soon.
 * The workflows withdraw it as soon as the bytes are across or the move is
 * abandoned; the expiry covers what they cannot (a workflow that stalls, a
 * withdraw that does not arrive). offerTtlFor() sizes it to the transfer;
 * a transfer still fetching files keeps it alive, up to 3 times that.
 */
export const OFFER_MIN_BYTES_PER_SEC = 8 << 20;
export const OFFER_IDLE_MS = 2 * 60_000;
const OFFER_HARD_FACTOR = 3;

/** Time for the target to start fetching (baseMs) plus the bytes at a slow rate. */
export function offerTtlFor(baseMs: number, bytes: number): number {
  return baseMs + Math.ceil((bytes / OFFER_MIN_BYTES_PER_SEC) * 1000);
}

export interface TransferServerOptions {
  /** Listen address; port 0 = any free port. */
  host: string;
  port: number;
  /** Host name other nodes use to reach this one (default: host, or the hostname when host is a wildcard). */
  advertiseHost?: string;
  /** Serve over https with this certificate (its names must include the advertised host). */
  tls?: { cert: Buffer; key: Buffer };
  log: Logger;
}

/** A node's transfer TLS material, read from the files its settings name. */
export interface TransferTls {
  /** Server side: this node's certificate and key. */
  server?: { cert: Buffer; key: Buffer };
  /** Client side: fetch only over https verified against this CA. */
  ca?: Buffer;
}

export function loadTransferTls(settings: Settings): TransferTls {
  return {
    server:
      settings.transferTlsCert && settings.transferTlsKey
        ? {
            cert: readPemFile(settings.transferTlsCert, 'ARCH_TRANSFER_TLS_CERT'),
            key: readPemFile(settings.transferTlsKey, 'ARCH_TRANSFER_TLS_KEY'),
          }
        : undefined,
    ca: settings.transferTlsCa ? readPemFile(settings.transferTlsCa, 'ARCH_TRANSFER_TLS_CA') : undefined,
  };
}

const TOKEN_BYTES = 32;

export class TransferServer {
  private readonly offers = new Map<string, Entry>();
  private server: http.Server | undefined;
  private baseUrl = '';
  private sweeper: NodeJS.Timeout | undefined;

  constructor(private readonly opts: TransferServerOptions) {}

  get url(): string {
    return this.baseUrl;
  }

  async start(): Promise<string> {
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
      this.handle(req, res).catch((err: unknown) => {
        this.opts.log.warn({ phase: 'transfer', err: (err as Error).message }, 'transfer request failed');
        if (!res.headersSent) res.writeHead(500).end();
        else res.destroy();
      });
    };
    const server: http.Server = this.opts.tls
      ? https.createServer({ cert: this.opts.tls.cert, key: this.opts.tls.key }, onRequest)
      : http.createServer(onRequest);
    // Page images are large: no socket timeout while a response streams.
    server.requestTimeout = 0;
    server.timeout = 0;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => resolve());
    });
    this.server = server;
    const addr = server.address();
    const port = typeof addr === 'object' && addr ? addr.port : this.opts.port;
    const wildcard = this.opts.host === '0.0.0.0' || this.opts.host === '::' || this.opts.host === '';
    const host = this.opts.advertiseHost || (wildcard ? os.hostname() : this.opts.host);
    this.baseUrl = `${this.opts.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
    this.sweeper = setInterval(() => this.sweep(), 60_000).unref();
    return this.baseUrl;
  }

  async stop(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  /** Offer one published checkpoint directory, pinned to its manifest digest. `ttlMs` may depend on its size. */
  async offerCheckpoint(
    dir: string,
    manifestSha256: string,
    ttlMs: number | ((bytes: number) => number),
  ): Promise<Offer> {
    const text = await fsp.readFile(path.join(dir, MANIFEST_FILE));
    if (sha256(text) !== manifestSha256) {
      throw new CheckpointUnusableError(
        'replaced',
        `the checkpoint in ${dir} is not the one requested (manifest digest differs)`,
      );
    }
    const manifest = parseManifest(text.toString('utf8'));
    const files = new Map(manifest.files.map((f) => [f.path, f.size]));
    const chunkedFiles = manifest.chunked?.files ?? [];
    const chunks = new Set(chunkedFiles.flatMap((f) => f.chunks.map((c) => c.id)));
    const bytes = [...manifest.files, ...chunkedFiles].reduce((a, f) => a + f.size, 0);
    const ttl = typeof ttlMs === 'number' ? ttlMs : ttlMs(bytes);
    // A published checkpoint directory sits in its container's directory, beside `chunks/`.
    const chunkDir = new ChunkDir(path.dirname(dir));
    return this.add({ kind: 'checkpoint', dir, manifestSha256, files, chunks, chunkDir }, ttl, 'checkpoint');
  }

  /** Offer one file (e.g. an exported image archive); onDone runs when the offer goes. */
  async offerFile(file: string, ttlMs: number, onDone?: () => void): Promise<Offer> {
    const st = await fsp.stat(file);
    return this.add({ kind: 'file', file, size: st.size, onDone }, ttlMs, 'file');
  }

  withdraw(token: string): boolean {
    const key = tokenKey(token);
    const e = this.offers.get(key);
    if (!e) return false;
    this.offers.delete(key);
    if (e.served.kind === 'file') e.served.onDone?.();
    return true;
  }

  private add(served: Served, ttlMs: number, kind: string): Offer {
    if (!this.server) throw new Error('transfer server is not started');
    const token = randomBytes(TOKEN_BYTES).toString('hex');
    const now = Date.now();
    const expires = now + ttlMs;
    this.offers.set(tokenKey(token), {
      tokenHash: createHash('sha256').update(token).digest(),
      expires,
      hardExpires: now + OFFER_HARD_FACTOR * ttlMs,
      served,
    });
    return { url: `${this.baseUrl}/v1/${kind}`, token, expiresAt: new Date(expires).toISOString() };
  }

  private sweep(): void {
    const now = Date.now();
    for (const [k, e] of this.offers) {
      if (e.expires < now) {
        this.offers.delete(k);
        if (e.served.kind === 'file') e.served.onDone?.();
      }
    }
  }

  private lookup(req: http.IncomingMessage): Entry | undefined {
    const auth = req.headers.authorization ?? '';
    const m = /^Bearer ([0-9a-f]{64})$/.exec(auth);
    if (!m) return undefined;
    const e = this.offers.get(tokenKey(m[1]!));
    if (!e || e.expires < Date.now()) return undefined;
    // The map lookup already matched; compare digests in constant time anyway.
    const h = createHash('sha256').update(m[1]!).digest();
    if (!timingSafeEqual(h, e.tokenHash)) return undefined;
    this.touch(e);
    return e;
  }

  /** In use: not idle-expired while a transfer still fetches its files. */
  private touch(e: Entry): void {
    e.expires = Math.min(e.hardExpires, Math.max(e.expires, Date.now() + OFFER_IDLE_MS));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'GET') return void res.writeHead(405).end();
    const e = this.lookup(req);
    if (!e)
      return void res
        .writeHead(404, { 'content-type': 'text/plain' })
        .end('no such offer (expired, withdrawn, or the node restarted)\n');
    const url = new URL(req.url ?? '/', 'http://x');
    let file: string;
    let size: number;
    if (e.served.kind === 'file') {
      if (url.pathname !== '/v1/file') return void res.writeHead(404).end();
      file = e.served.file;
      size = e.served.size;
    } else {
      const rel = url.searchParams.get('path') ?? '';
      if (url.pathname !== '/v1/checkpoint') return void res.writeHead(404).end();
      const chunk = url.searchParams.get('chunk');
      if (chunk !== null) return this.serveChunk(e, e.served, chunk, res);
      if (rel === MANIFEST_FILE || rel === SIGNATURE_FILE) {
        file = path.join(e.served.dir, rel);
        const st = await fsp.stat(file).catch(() => undefined);
        if (!st) return void res.writeHead(404).end(); // an unsigned checkpoint: the receiver decides
        size = st.size;
      } else {
        // Only paths the manifest lists: the offer never exposes anything else on the node.
        const s = e.served.files.get(rel);
        if (s === undefined) return void res.writeHead(404).end();
        file = path.join(e.served.dir, rel);
        size = s;
      }
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
    await pipeline(fs.createReadStream(file, { highWaterMark: 1 << 20 }), res);
    this.touch(e);
  }

  /**
   * One stored chunk (compressed, encrypted if it was), only one the offered
   * manifest refers to: the id is checked against that list, never turned
   * into a path before; ChunkDir.get opens it without following a symlink.
   * 410 when the store no longer has it: the target fails with `truncated`.
   */
  private async serveChunk(
    e: Entry,
    served: Extract<Served, { kind: 'checkpoint' }>,
    id: string,
    res: http.ServerResponse,
  ): Promise<void> {
    if (!isChunkId(id) || !served.chunks.has(id)) return void res.writeHead(404).end();
    const bytes = await served.chunkDir.get(id);
    if (!bytes) return void res.writeHead(410).end();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length) });
    res.end(bytes);
    this.touch(e);
  }
}

function tokenKey(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A fetch that failed in a way retrying the same offer cannot fix. */
export class OfferGoneError extends Error {
  constructor(url: string) {
    super(`transfer offer at ${url} is gone (expired, withdrawn, or the source worker restarted)`);
    this.name = 'OfferGoneError';
  }
}

export interface FetchProgress {
  bytesDone: number;
  bytesTotal: number;
  files: number;
}

interface GetOptions {
  signal?: AbortSignal;
  /** Fetch only over https verified against this CA (a node with ARCH_TRANSFER_TLS_CA). */
  ca?: Buffer;
}

function get(offer: Offer, query: string, o: GetOptions): Promise<http.IncomingMessage> {
  const url = `${offer.url}${query}`;
  const secure = url.startsWith('https:');
  if (o.ca && !secure) {
    // No silent downgrade: this node was told to trust only verified peers.
    return Promise.reject(
      new ArchInputError(
        'ARCH_TRANSFER_TLS_CA',
        `is set on this node, but the source offers plain http (${offer.url})`,
        'set ARCH_TRANSFER_TLS_CERT and ARCH_TRANSFER_TLS_KEY on the source node too',
      ),
    );
  }
  const options = {
    headers: { authorization: `Bearer ${offer.token}` },
    signal: o.signal,
    ...(secure && o.ca ? { ca: o.ca } : {}),
  };
  return new Promise((resolve, reject) => {
    const req = (secure ? https : http).get(url, options, (res) => {
      if (res.statusCode === 200) return resolve(res);
      res.resume();
      if (res.statusCode === 404) reject(new OfferGoneError(offer.url));
      else if (res.statusCode === 410)
        reject(new CheckpointUnusableError('truncated', `${url}: the source no longer has it`));
      else reject(new Error(`GET ${offer.url}: HTTP ${res.statusCode}`));
    });
    req.on('error', (err: NodeJS.ErrnoException) =>
      reject(
        TLS_TRUST_ERRORS.has(err.code ?? '')
          ? new ArchInputError(
              'ARCH_TRANSFER_TLS_CA',
              `the source's certificate at ${offer.url} is not trusted (${err.message})`,
              "set ARCH_TRANSFER_TLS_CA on this node to the CA that signed the source node's ARCH_TRANSFER_TLS_CERT, whose names must include the host it advertises",
            )
          : err,
      ),
    );
  });
}

/** Certificate verification failures: configuration, not a transient network error. */
const TLS_TRUST_ERRORS = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
]);

/** Stream a response to a file, hashing as it goes. */
async function download(
  offer: Offer,
  query: string,
  dest: string,
  o: GetOptions & { onBytes?: (n: number) => void },
): Promise<Digest> {
  const res = await get(offer, query, o);
  const hash = new StreamDigest();
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      o.onBytes?.(chunk.length);
      cb(null, chunk);
    },
  });
  await fsp.mkdir(path.dirname(dest), { recursive: true });
  await pipeline(res, tap, fs.createWriteStream(dest, { flags: 'wx', highWaterMark: 1 << 20 }), { signal: o.signal });
  return hash.digest();
}

export interface FetchCheckpointOptions {
  offer: Offer;
  manifestSha256: string;
  store: CheckpointStore;
  fsync: boolean;
  signal?: AbortSignal;
  onProgress?: (p: FetchProgress) => void;
  /** Files fetched at once (default 4: many small CRIU images, a few large ones). */
  concurrency?: number;
  /** See GetOptions.ca. */
  ca?: Buffer;
  /** The receiving node's keys: the source's signature is checked with them, the copy signed (default: from the settings). */
  trust?: Trust;
  /** The receiving node's settings: its store key checks encrypted chunks, ARCH_KEEP applies to a format-2 copy (default: loadSettings()). */
  settings?: { configFile: string; keep: number };
}

export interface FetchCheckpointResult {
  /** present: the store already holds this very checkpoint (an earlier attempt, or storage both nodes see). */
  kind: 'copied' | 'present';
  dir: string;
  manifest: Manifest;
  bytes: number;
  files: number;
  ms: number;
}

/** The same checkpoint, whichever node's copy: identity, origin, time and every file's digest. */
export function sameCheckpoint(a: Manifest, b: Manifest): boolean {
  if (
    a.namespace !== b.namespace ||
    a.containerId !== b.containerId ||
    a.node !== b.node ||
    a.createdAt !== b.createdAt
  )
    return false;
  if (a.files.length !== b.files.length) return false;
  if (
    !a.files.every(
      (f, i) => f.path === b.files[i]!.path && f.size === b.files[i]!.size && f.sha256 === b.files[i]!.sha256,
    )
  )
    return false;
  const ca = a.chunked?.files ?? [];
  const cb = b.chunked?.files ?? [];
  return (
    a.chunked?.keyId === b.chunked?.keyId &&
    ca.length === cb.length &&
    ca.every(
      (f, i) =>
        f.path === cb[i]!.path &&
        f.size === cb[i]!.size &&
        f.chunks.length === cb[i]!.chunks.length &&
        f.chunks.every((c, j) => c.id === cb[i]!.chunks[j]!.id && c.size === cb[i]!.chunks[j]!.size),
    )
  );
}

async function readBody(
  res: http.IncomingMessage,
  limit: number,
  tooLarge: () => CheckpointUnusableError,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res) {
    n += (c as Buffer).length;
    if (n > limit) throw tooLarge();
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

const manifestTooLarge = (limit: number) => () =>
  new CheckpointUnusableError('manifest-invalid', `manifest larger than ${limit} bytes`);

/** Stored bytes of a chunk of `size` plain bytes at most: zstd's worst case (incompressible data) plus a sealed chunk's nonce and tag. */
function storedChunkLimit(size: number): number {
  return size + (size >> 7) + (64 << 10);
}

/**
 * Store format 2: the chunks the (verified) manifest refers to, into the
 * target's chunk store. One the store already has is reused (touched, as a
 * checkpoint reuses it); each other one is checked against its id as it
 * arrives (decodeChunk: authenticated, decompressed into exactly the size
 * the manifest gives, digest) before it is staged; all staged chunks are
 * made durable together before the caller publishes the manifest. On any
 * error nothing staged is left.
 */
async function receiveChunks(
  o: FetchCheckpointOptions,
  chunked: NonNullable<Manifest['chunked']>,
  chunks: ChunkStore,
  keys: ChunkKeys | undefined,
  onBytes: (n: number) => void,
): Promise<ChunkWriteStats> {
  const stats: ChunkWriteStats = { written: 0, bytes: 0, reused: 0 };
  const wanted = new Map<string, { size: number; what: string }>();
  for (const f of chunked.files)
    f.chunks.forEach((c, i) => {
      if (!wanted.has(c.id))
        wanted.set(c.id, {
          size: c.size,
          what: `${f.path}: chunk ${i + 1} of ${f.chunks.length} (${c.id.slice(0, 12)})`,
        });
    });
  const ids = [...wanted.keys()];
  let next = 0;
  let failed = false;
  const lane = async (): Promise<void> => {
    while (next < ids.length && !failed) {
      o.signal?.throwIfAborted();
      const id = ids[next++]!;
      const { size, what } = wanted.get(id)!;
      try {
        if (await chunks.reuse(id)) {
          stats.reused++;
        } else {
          const res = await get(o.offer, `?chunk=${id}`, { signal: o.signal, ca: o.ca });
          const limit = storedChunkLimit(size);
          const stored = await readBody(
            res,
            limit,
            () => new CheckpointUnusableError('corrupt', `${what}: more than ${limit} bytes from the source`),
          ).catch((err: unknown) => {
            if (err instanceof CheckpointUnusableError) throw err;
            throw new CheckpointUnusableError(
              'truncated',
              `${what}: cut short in transfer (${(err as Error).message})`,
            );
          });
          decodeChunk(stored, id, size, `${what} from ${o.offer.url}`, keys);
          await chunks.stage(id, stored);
          stats.written++;
          stats.bytes += stored.length;
        }
        onBytes(size);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  try {
    const results = await Promise.allSettled(
      Array.from({ length: Math.min(Math.max(1, o.concurrency ?? 4), ids.length) }, lane),
    );
    const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (bad) throw bad.reason;
    await chunks.commitStaged(o.fsync);
    if (o.fsync && stats.written > 0) await chunks.syncDirs();
    return stats;
  } catch (err) {
    await chunks.dropStaged().catch(() => undefined);
    throw err;
  }
}

/** Fetch and check the offered manifest against the digest the orchestrator holds. */
export async function fetchManifest(
  offer: Offer,
  manifestSha256: string,
  o: GetOptions & { trust?: Trust } = {},
): Promise<Manifest> {
  const text = await readBody(await get(offer, `?path=${MANIFEST_FILE}`, o), 64 << 20, manifestTooLarge(64 << 20));
  const digest = sha256(text);
  if (digest !== manifestSha256) {
    throw new CheckpointUnusableError(
      'corrupt',
      `manifest from ${offer.url} does not match the checkpoint that was taken (sha256 ${digest.slice(0, 12)}…, expected ${manifestSha256.slice(0, 12)}…)`,
    );
  }
  // Signed by a node this one trusts (ARCH_TRUSTED_KEYS), before anything in it is used: the
  // receiver publishes the copy under its own signature, so it must not vouch for what nobody trusted signed.
  const sig = await readBody(await get(offer, `?path=${SIGNATURE_FILE}`, o), 4096, manifestTooLarge(4096)).catch(
    (err: unknown) => {
      if (err instanceof OfferGoneError) return undefined; // the manifest was just served: no signature file
      throw err;
    },
  );
  verifyManifestSignature(text, sig?.toString('utf8'), o.trust ?? loadTrust());
  // Untrusted input: parseManifest rejects absolute paths, "..", unknown formats.
  return parseManifest(text.toString('utf8'));
}

/**
 * Pull an offered checkpoint into `store` and publish it. Every byte is
 * verified against the manifest before anything becomes visible; on any
 * error the staging directory is removed and the store is untouched.
 */
export async function fetchCheckpoint(o: FetchCheckpointOptions): Promise<FetchCheckpointResult> {
  const t0 = Date.now();
  const manifest = await fetchManifest(o.offer, o.manifestSha256, { signal: o.signal, ca: o.ca, trust: o.trust });
  const bytesTotal = [...manifest.files, ...(manifest.chunked?.files ?? [])].reduce((a, f) => a + f.size, 0);
  const have = await o.store.readManifest().catch(() => null);
  const haveDir = await o.store.current().catch(() => null);
  if (have && haveDir && sameCheckpoint(have, manifest)) {
    return {
      kind: 'present',
      dir: haveDir,
      manifest,
      bytes: bytesTotal,
      files: manifest.files.length,
      ms: Date.now() - t0,
    };
  }
  const settings = manifest.chunked ? (o.settings ?? loadSettings()) : undefined;
  // Before anything is fetched: a node without the key the chunks were encrypted with could neither check nor restore them.
  const keys =
    manifest.chunked?.keyId && settings
      ? chunkKeysOf(storeKeyLookup(settings)({ keyId: manifest.chunked.keyId }))
      : undefined;
  const staging = await o.store.begin();
  // Digests computed while the bytes arrived: publish need not read them again.
  const known = new Map<string, Digest>();
  try {
    let bytesDone = 0;
    let filesDone = 0;
    const report = () => o.onProgress?.({ bytesDone, bytesTotal, files: filesDone });
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < manifest.files.length) {
        o.signal?.throwIfAborted();
        const f = manifest.files[next++]!;
        const dest = path.join(staging.dir, f.path);
        if (!dest.startsWith(staging.dir + path.sep))
          throw new CheckpointUnusableError('manifest-invalid', `file entry ${f.path} escapes the checkpoint`);
        const got = await download(o.offer, `?path=${encodeURIComponent(f.path)}`, dest, {
          signal: o.signal,
          ca: o.ca,
          onBytes: (n) => {
            bytesDone += n;
          },
        });
        if (got.size !== f.size)
          throw new CheckpointUnusableError(
            'truncated',
            `${f.path}: received ${got.size} bytes, manifest says ${f.size}`,
          );
        if (got.sha256 !== f.sha256)
          throw new CheckpointUnusableError('corrupt', `${f.path}: sha256 mismatch after transfer`);
        known.set(f.path, got);
        filesDone++;
        report();
      }
    };
    const ticker = setInterval(report, 1000);
    try {
      await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 4) }, lane));
      if (manifest.chunked)
        await receiveChunks(o, manifest.chunked, o.store.chunkDir(), keys, (n) => {
          bytesDone += n;
        });
    } finally {
      clearInterval(ticker);
    }
    report();
    const { files: _files, ...meta } = manifest;
    // The chunk list is carried over as it is in `meta`; publish checks every listed chunk is in place before `current` moves.
    const pub = await o.store.publish(staging, meta, {
      fsync: o.fsync,
      known,
      trust: o.trust,
      ...(settings ? { keep: settings.keep } : {}),
    });
    if (!sameCheckpoint(pub.manifest, manifest)) {
      // Only an extra file in staging could do this; a retry fetches again.
      throw new CheckpointUnusableError('corrupt', 'the published copy differs from the source checkpoint');
    }
    return {
      kind: 'copied',
      dir: pub.dir,
      manifest,
      bytes: bytesTotal,
      files: manifest.files.length,
      ms: Date.now() - t0,
    };
  } catch (err) {
    await o.store.abort(staging).catch(() => undefined);
    throw err;
  }
}

/** Stream an offered single file (e.g. an image archive) to dest; returns its size. */
export async function fetchFile(
  offer: Offer,
  dest: string,
  o: GetOptions & { onBytes?: (n: number) => void } = {},
): Promise<number> {
  const tmp = `${dest}.part-${process.pid}`;
  await fsp.rm(tmp, { force: true });
  try {
    const { size } = await download(offer, '', tmp, o);
    await fsp.rename(tmp, dest);
    return size;
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}

/** sha256 of a published checkpoint's manifest.json. */
export async function manifestDigest(dir: string): Promise<string> {
  return sha256(await fsp.readFile(path.join(dir, MANIFEST_FILE)));
}
