import { createCipheriv, createDecipheriv, createHash, randomBytes, type Hash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Digest } from './digest.js';
import { ArchInputError, CheckpointUnusableError, errorMessage } from '../contract/errors.js';
import { requireAbsolutePath } from './paths.js';
import { isAlive } from './pid.js';
import { usesWorkerThreads, workerReply } from './digest.js';
import { helperThreadsBesideCriu, Nap } from './growing-files.js';
import { Worker } from 'node:worker_threads';
import { settingsVars } from './settings.js';
import { keyLines, parseKeyText } from './key-text.js';
import { DirectAppender, DirectBuffer, DirectReader, DIRECT_ALIGN, writeAll } from './direct-append.js';

/**
 * Encryption at rest of a checkpoint's page images and writable-layer
 * archive ("sealing"), opt-in through ARCH_STORE_KEY_FILE.
 *
 * Format (SEAL_ALG): a sealed file is a sequence of chunks, each the
 * AES-256-GCM ciphertext of up to `chunkBytes` plaintext bytes followed by
 * its 16-byte tag; no header: everything needed to open it (key id, nonce
 * base, chunk size, plaintext size) is in the signed manifest. Chunk i uses
 * the nonce `nonceBase XOR i` (big-endian in the last 8 bytes; a random
 * nonce base per file, so no (key, nonce) pair repeats) and authenticates,
 * as AAD, the checkpoint's random seal id, the file's path, i and whether it
 * is the last chunk: a chunk cannot be moved within a file, to another file
 * or to another checkpoint, and a file cannot be cut short at a chunk
 * boundary (the last chunk says it is last, and the manifest says how many).
 * Chunks keep a large file streaming: it is sealed while CRIU writes it and
 * opened chunk by chunk, each authenticated before its plaintext is written.
 */
export const SEAL_ALG = 'aes-256-gcm-chunked-v1';
export const SEAL_CHUNK_BYTES = 4 * 1024 * 1024;
const TAG_BYTES = 16;
const NONCE_BYTES = 12;
/** GCM runs at memory speed when fed pieces that stay in the L2 cache (3 GB/s here, vs 0.3 GB/s for 4 MiB at once). */
const CIPHER_PIECE = 64 * 1024;

/** What the manifest records for one sealed file. */
export interface SealedFile {
  path: string;
  alg: string;
  keyId: string;
  /** Nonce base, 24 hex digits. */
  nonce: string;
  chunkBytes: number;
  plainSize: number;
}

export interface StoreKey {
  id: string;
  key: Buffer;
}

/** ARCH_STORE_KEY_FILE's keys: the first seals, all open (rotation). */
export interface StoreKeys {
  file: string;
  keys: StoreKey[];
}

export const STORE_KEY_SETTING = 'ARCH_STORE_KEY_FILE';

/** A key's public name: never the key (domain-separated from the payload key's id). */
export function storeKeyId(key: Buffer): string {
  return createHash('sha256').update('arch-store-key:').update(key).digest('hex').slice(0, 16);
}

export function parseStoreKey(v: string, where: string): StoreKey {
  const key = parseKeyText(v);
  if (!key) {
    throw new ArchInputError(
      STORE_KEY_SETTING,
      `${where} is not a 32-byte key (64 hex digits or base64)`,
      'create one with `openssl rand -hex 32 > FILE; chmod 600 FILE`, the same file on every node of the cluster',
    );
  }
  return { id: storeKeyId(key), key };
}

/**
 * The store keys the node's settings name (environment over the settings
 * file), or undefined when ARCH_STORE_KEY_FILE is unset: sealing is opt-in.
 * A named file that cannot be read, holds no valid key, or that anyone but
 * its owner may access is an error, never a silent fall back to plaintext.
 */
export function loadStoreKeys(vars: Record<string, string | undefined> = settingsVars().vars): StoreKeys | undefined {
  const named = vars[STORE_KEY_SETTING];
  if (!named) return undefined;
  const file = requireAbsolutePath(named, STORE_KEY_SETTING);
  let body: string;
  try {
    // O_NOFOLLOW: the mode checked is that of the file read.
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile())
        throw new ArchInputError(
          STORE_KEY_SETTING,
          `${file} is not a regular file`,
          "point it at the cluster's store key file",
        );
      if ((st.mode & 0o077) !== 0) {
        throw new ArchInputError(
          STORE_KEY_SETTING,
          `${file} has mode 0${(st.mode & 0o777).toString(8)}: group or other users may access the key`,
          `chmod 600 ${file} (mode 0600 is required)`,
        );
      }
      body = fs.readFileSync(fd, 'utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    if (err instanceof ArchInputError) throw err;
    throw new ArchInputError(
      STORE_KEY_SETTING,
      `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      "point it at the cluster's store key file (mode 0600, readable by root), or unset it to store checkpoints unencrypted",
    );
  }
  const lines = keyLines(body);
  if (lines.length === 0)
    throw new ArchInputError(
      STORE_KEY_SETTING,
      `${file} holds no key`,
      'write one with `openssl rand -hex 32 > FILE` (the same on every node)',
    );
  return { file, keys: lines.map((l, i) => parseStoreKey(l, `${file}, line ${i + 1},`)) };
}

/** The store keys of the node whose settings file this is (environment over the file), as trustOf does for signing keys. */
export function storeKeysOf(settings: { configFile: string }): StoreKeys | undefined {
  return loadStoreKeys(settingsVars({ ...process.env, ARCH_CONFIG: settings.configFile }).vars);
}

/**
 * A restore's lookup of the key a checkpoint names: `storeKeysOf`, with a
 * key file that cannot be read kept as the reason (keyFor puts it in the
 * 'sealed-key' refusal) instead of failing here.
 */
export function storeKeyLookup(settings: { configFile: string }): (entry: Pick<SealedFile, 'keyId'>) => StoreKey {
  let keys: StoreKeys | undefined;
  let problem: string | undefined;
  try {
    keys = storeKeysOf(settings);
  } catch (err) {
    problem = errorMessage(err);
  }
  return (entry) => keyFor(entry, keys, problem);
}

/** A new checkpoint's seal id: random, recorded in the signed manifest, bound into every chunk. */
export function newSealId(): string {
  return randomBytes(16).toString('hex');
}

export function chunkCount(plainSize: number, chunkBytes: number): number {
  return Math.max(1, Math.ceil(plainSize / chunkBytes));
}

/** Bytes of the stored file for `plainSize` bytes of plaintext. */
export function sealedSize(plainSize: number, chunkBytes: number): number {
  return plainSize + chunkCount(plainSize, chunkBytes) * TAG_BYTES;
}

export function chunkNonce(base: Buffer, index: number): Buffer {
  const n = Buffer.from(base);
  const hi = Math.floor(index / 2 ** 32);
  n.writeUInt32BE((n.readUInt32BE(4) ^ hi) >>> 0, 4);
  n.writeUInt32BE((n.readUInt32BE(8) ^ index) >>> 0, 8);
  return n;
}

export function chunkAad(sealId: string, file: string, index: number, final: boolean): Buffer {
  const tail = Buffer.alloc(9);
  tail.writeBigUInt64BE(BigInt(index));
  tail[8] = final ? 1 : 0;
  return Buffer.concat([Buffer.from(`arch-seal-v1\0${sealId}\0${file}\0`), tail]);
}

export function sealChunk(key: Buffer, nonce: Buffer, aad: Buffer, plain: Buffer): Buffer[] {
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const out: Buffer[] = [];
  for (let o = 0; o < plain.length; o += CIPHER_PIECE) out.push(c.update(plain.subarray(o, o + CIPHER_PIECE)));
  out.push(c.final(), c.getAuthTag());
  return out;
}

/** One chunk's plaintext, or a CheckpointUnusableError: nothing unauthenticated is returned. */
export function openChunk(key: Buffer, nonce: Buffer, aad: Buffer, sealed: Buffer, what: string): Buffer[] {
  const d = createDecipheriv('aes-256-gcm', key, nonce);
  d.setAAD(aad);
  d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  const body = sealed.subarray(0, sealed.length - TAG_BYTES);
  const out: Buffer[] = [];
  for (let o = 0; o < body.length; o += CIPHER_PIECE) out.push(d.update(body.subarray(o, o + CIPHER_PIECE)));
  try {
    out.push(d.final());
  } catch {
    throw new CheckpointUnusableError(
      'corrupt',
      `${what} failed authentication (altered, truncated, reordered or from another file)`,
    );
  }
  return out;
}

/**
 * Seals one file that may still be growing (CRIU's page images, the layer
 * archive being written): pumpOne() seals a full chunk that is followed by
 * more data (the last chunk must say it is last), finish() the rest. The
 * stored bytes are hashed as they are written: the manifest's sha256 of a
 * sealed file is that of its ciphertext, computed here for free while the
 * chunk is in the cache (see SealFollower for why it is kept).
 */
class FileSealer {
  private pos = 0;
  private index = 0;
  private synced = 0;
  private syncing = false;
  private readonly hash: Hash = createHash('sha256');
  private readonly nonce = randomBytes(NONCE_BYTES);
  private readonly out: DirectAppender;

  constructor(
    readonly rel: string,
    private readonly src: number,
    private readonly dst: number,
    dstPath: string,
    private readonly key: StoreKey,
    private readonly sealId: string,
    private readonly chunkBytes: number,
    private readonly buf: Buffer,
    private readonly writeback: boolean,
    direct: DirectBuffer | undefined,
  ) {
    this.out = new DirectAppender(dst, dstPath, direct);
  }

  /** Seal at most one chunk; true when one was sealed. */
  pumpOne(final: boolean): boolean {
    const size = fs.fstatSync(this.src).size;
    if (size < this.pos) throw new Error(`${this.rel} shrank while it was sealed (${size} < ${this.pos} bytes)`);
    const left = size - this.pos;
    if (final ? left === 0 && this.index > 0 : left <= this.chunkBytes) return false;
    const n = Math.min(left, this.chunkBytes);
    const last = final && left <= this.chunkBytes;
    let got = 0;
    while (got < n) {
      const r = fs.readSync(this.src, this.buf, got, n - got, this.pos + got);
      if (r === 0) throw new Error(`${this.rel}: short read at ${this.pos + got}`);
      got += r;
    }
    const out = sealChunk(
      this.key.key,
      chunkNonce(this.nonce, this.index),
      chunkAad(this.sealId, this.rel, this.index, last),
      this.buf.subarray(0, n),
    );
    for (const b of out) this.hash.update(b);
    this.out.append(out);
    this.pos += n;
    this.index++;
    this.startWriteback();
    return true;
  }

  /**
   * Start the disk write of what is sealed so far (fdatasync every 32 MiB,
   * one at a time), so the publishing fsync has little left: the data
   * through the page cache, and the new blocks' metadata either way
   * (direct writes that extend a file left ext4 ~140 ms of journal to
   * commit at the end for 256 MiB).
   */
  private startWriteback(): void {
    const written = this.out.length;
    if (!this.writeback || this.syncing || written - this.synced < 32 * 1024 * 1024) return;
    this.syncing = true;
    fs.fdatasync(this.dst, () => {
      this.synced = written;
      this.syncing = false;
    });
  }

  async finish(): Promise<SealResult> {
    while (this.pumpOne(true)) await yieldTurn();
    this.out.finish();
    return {
      stored: { size: this.out.length, sha256: this.hash.digest('hex') },
      sealed: {
        path: this.rel,
        alg: SEAL_ALG,
        keyId: this.key.id,
        nonce: this.nonce.toString('hex'),
        chunkBytes: this.chunkBytes,
        plainSize: this.pos,
      },
    };
  }

  async close(): Promise<void> {
    while (this.syncing) await sleep(1); // never close an fd with a datasync in flight
    this.out.close();
    fs.closeSync(this.src);
    fs.closeSync(this.dst);
  }
}

const yieldTurn = () => new Promise<void>((r) => setImmediate(r));

/** A directory whose matching files are sealed into `dest` as `prefix + name`, or as `rel` (plain data: it is handed to a worker thread). */
export interface SealSource {
  dir: string;
  pattern: RegExp;
  prefix?: string;
  rel?: string;
}

/** One sealed file: the digest of what was stored, and the manifest's seal entry. */
export interface SealResult {
  stored: Digest;
  sealed: SealedFile;
}

export interface SealOptions {
  writeback?: boolean;
  chunkBytes?: number;
  /** Write the ciphertext around the page cache (core/direct-append.ts) where the store's filesystem allows. */
  direct?: boolean;
  /** Worker threads to seal on (0 or 1; default: one where a core is left beside CRIU's and this thread's). */
  threads?: number;
}

/** Direct writes go out a MiB at a time: large enough for the disk, a small buffer to touch. */
const DIRECT_WRITE_BYTES = 1024 * 1024;

/**
 * The sealing loop itself, on whichever thread runs it (a worker's, see
 * SealFollower): follows the sources, seals each full chunk as soon as it is
 * there, a chunk per turn of the event loop.
 */
export class SealLoop {
  private readonly files = new Map<string, FileSealer>();
  private stopped = false;
  private readonly nap = new Nap();
  private readonly loop: Promise<void>;
  private readonly buf: Buffer;
  private readonly direct: DirectBuffer | undefined;

  constructor(
    private readonly sources: SealSource[],
    private readonly dest: string,
    private readonly key: StoreKey,
    private readonly sealId: string,
    private readonly opts: SealOptions = {},
  ) {
    this.buf = Buffer.allocUnsafe(opts.chunkBytes ?? SEAL_CHUNK_BYTES);
    this.direct = opts.direct ? new DirectBuffer(DIRECT_WRITE_BYTES) : undefined;
    this.loop = this.run();
    this.loop.catch(() => undefined); // observed by finish()
  }

  private scan(): void {
    for (const s of this.sources) {
      let names: string[] = [];
      try {
        names = fs.readdirSync(s.dir);
      } catch {
        continue; // not created yet
      }
      for (const name of names) {
        const rel = s.rel ?? (s.prefix ?? '') + name;
        if (!s.pattern.test(name) || this.files.has(rel)) continue;
        const src = fs.openSync(path.join(s.dir, name), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        const dstPath = path.join(this.dest, rel);
        fs.mkdirSync(path.dirname(dstPath), { recursive: true, mode: 0o700 });
        const dst = fs.openSync(dstPath, 'wx', 0o600);
        this.files.set(
          rel,
          new FileSealer(
            rel,
            src,
            dst,
            dstPath,
            this.key,
            this.sealId,
            this.buf.length,
            this.buf,
            !!this.opts.writeback,
            this.direct,
          ),
        );
      }
    }
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      this.scan();
      let sealed = false;
      for (const f of this.files.values()) sealed = f.pumpOne(false) || sealed;
      if (sealed) await yieldTurn();
      else if (!this.stopped) await this.nap.for(2);
    }
  }

  /** Every matching file sealed to its end, sorted by path. */
  async finish(): Promise<[string, SealResult][]> {
    this.stopped = true;
    this.nap.wake();
    try {
      await this.loop;
      this.scan();
      const out: [string, SealResult][] = [];
      for (const [rel, f] of [...this.files].sort(([a], [b]) => a.localeCompare(b))) out.push([rel, await f.finish()]);
      return out;
    } finally {
      await this.closeAll();
    }
  }

  async cancel(): Promise<void> {
    this.stopped = true;
    this.nap.wake();
    await this.loop.catch(() => undefined);
    await this.closeAll();
  }

  private async closeAll(): Promise<void> {
    for (const f of this.files.values()) await f.close().catch(() => undefined);
    this.files.clear();
  }
}

/** What seal-worker.ts is started with. */
export interface SealWorkerData {
  sources: SealSource[];
  dest: string;
  key: { id: string; key: Uint8Array };
  sealId: string;
  opts: SealOptions;
}

/** From dist/core/seal.js and from the bundles alike (see digest.ts's workerFile). */
const sealWorkerFile = (): URL => new URL('../core/seal-worker.js', import.meta.url);

/**
 * Seal files while another process writes them (CRIU's page images, the
 * layer archive), so little is left to seal once CRIU is done (the
 * container is still frozen then). On a worker thread where a core is left
 * for one beside CRIU's and this thread's (helperThreadsBesideCriu); on 2
 * cores, or where a process may start no worker thread (usesWorkerThreads),
 * the same loop runs here instead, a chunk per turn of the event loop: a
 * worker's own start-up took ~80 ms of CPU from CRIU's core.
 * finish() is called once every writer is done; cancel() abandons it.
 *
 * The ciphertext's sha256 is kept in the manifest although GCM
 * authenticates every chunk: with it the signature binds the exact bytes
 * the signing node wrote, so a node that holds the cluster's store key but
 * is not a trusted signer still cannot substitute a page image (GCM alone
 * would only prove "someone with the key"); and the existing size/digest
 * verification and transfers keep working unchanged.
 */
export class SealFollower {
  private readonly here?: SealLoop;
  private readonly worker?: Worker;
  private readonly reply?: Promise<{ files?: [string, SealResult][]; error?: string }>;

  constructor(sources: SealSource[], dest: string, key: StoreKey, sealId: string, opts: SealOptions = {}) {
    if (!usesWorkerThreads() || (opts.threads ?? helperThreadsBesideCriu(1)) === 0) {
      this.here = new SealLoop(sources, dest, key, sealId, opts);
      return;
    }
    const data: SealWorkerData = { sources, dest, key: { id: key.id, key: key.key }, sealId, opts };
    this.worker = new Worker(sealWorkerFile(), { workerData: data });
    this.reply = workerReply(this.worker);
    this.reply.catch(() => undefined); // observed by finish() or cancel()
  }

  /** Every matching file sealed to its end: stored digests and the manifest's seal entries, by path. */
  async finish(): Promise<Map<string, SealResult>> {
    if (this.here) return new Map(await this.here.finish());
    try {
      this.worker!.postMessage('finish');
      const r = await this.reply!;
      if (r.error !== undefined || !r.files) throw new Error(`sealing failed: ${r.error ?? 'no result'}`);
      return new Map(r.files);
    } finally {
      await this.worker!.terminate();
    }
  }

  /** Stop and close every file (the worker closes its own: a terminated thread leaves its descriptors open). */
  async cancel(): Promise<void> {
    if (this.here) return this.here.cancel();
    try {
      this.worker!.postMessage('cancel');
      await this.reply!.catch(() => undefined);
    } finally {
      await this.worker!.terminate();
    }
  }
}

/** Seal one complete file (e.g. a page image runc dumped elsewhere). */
export async function sealFile(
  src: string,
  destDir: string,
  rel: string,
  key: StoreKey,
  sealId: string,
  chunkBytes = SEAL_CHUNK_BYTES,
): Promise<{ stored: Digest; sealed: SealedFile }> {
  const f = new SealFollower(
    [{ dir: path.dirname(src), pattern: new RegExp(`^${escapeRe(path.basename(src))}$`), rel }],
    destDir,
    key,
    sealId,
    { chunkBytes },
  );
  const r = (await f.finish()).get(rel);
  if (!r) throw new Error(`${src} is not there to seal`);
  return r;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The key a sealed file needs, or a clear 'sealed-key' refusal naming its id and the setting. */
export function keyFor(entry: Pick<SealedFile, 'keyId'>, keys: StoreKeys | undefined, keysProblem?: string): StoreKey {
  const k = keys?.keys.find((x) => x.id === entry.keyId);
  if (k) return k;
  const have = keys
    ? `this node's ${STORE_KEY_SETTING} (${keys.file}) holds key id(s) ${keys.keys.map((x) => x.id).join(', ')}`
    : keysProblem
      ? `this node's ${STORE_KEY_SETTING} cannot be used: ${keysProblem}`
      : `this node has no ${STORE_KEY_SETTING}`;
  throw new CheckpointUnusableError(
    'sealed-key',
    `the checkpoint is encrypted with store key id ${entry.keyId}, and ${have}; give every node of the cluster the same key file (the first line seals, every line opens)`,
  );
}

/** A direct read of one sealed chunk needs the aligned blocks around it. */
export const DIRECT_READ_BYTES = SEAL_CHUNK_BYTES + TAG_BYTES + 2 * DIRECT_ALIGN;

/** One thread's buffers for opening sealed files, reused for every file. */
export interface OpenBuffers {
  /** Ordinary reads (the page cache). */
  plain?: Buffer;
  /** Direct reads (core/direct-append.ts); none: through the page cache. */
  direct?: DirectBuffer;
}

/**
 * Decrypt a sealed file into `dest` (mode 0600), chunk by chunk: each chunk
 * is authenticated before its plaintext is written, and the file must hold
 * exactly the chunks the manifest implies (the last one marked last).
 * With `sha256` (the manifest's digest of the stored file), the ciphertext
 * is hashed as it is read and must match before this returns: a caller that
 * hands the plaintext on only then (the restore's seal gate) gives CRIU
 * nothing but the signing node's exact bytes, with no second read.
 * With an Unsealer, its worker thread decrypts chunks too, each thread
 * taking the next chunk not yet taken (then the digest is a pass of its
 * own once both are done); else all on this thread, yielding between
 * chunks. The ciphertext is read around the page cache where `bufs.direct`
 * allows. Throws CheckpointUnusableError.
 */
export async function openSealedFile(
  src: string,
  dest: string,
  entry: SealedFile,
  sealId: string,
  key: StoreKey,
  opts: { bufs?: OpenBuffers; signal?: AbortSignal; helper?: Unsealer; sha256?: string } = {},
): Promise<void> {
  const { signal, helper, sha256 } = opts;
  const bufs = opts.bufs ?? {};
  const fd = fs.openSync(src, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  let out: number | undefined;
  let reader: DirectReader | undefined;
  try {
    const size = fs.fstatSync(fd).size;
    if (size !== sealedSize(entry.plainSize, entry.chunkBytes)) {
      throw new CheckpointUnusableError(
        'truncated',
        `${entry.path}: ${size} bytes, its seal says ${sealedSize(entry.plainSize, entry.chunkBytes)}`,
      );
    }
    out = fs.openSync(dest, 'wx', 0o600);
    reader = new DirectReader(fd, src, entry.chunkBytes <= SEAL_CHUNK_BYTES ? bufs.direct : undefined);
    const need = entry.chunkBytes + TAG_BYTES;
    const plainBuf = reader.direct
      ? Buffer.alloc(0)
      : bufs.plain && bufs.plain.length >= need
        ? bufs.plain
        : Buffer.allocUnsafe(need);
    const job: OpenJob = { src, dest, entry, sealId, key: { id: key.id, key: key.key }, direct: !!bufs.direct };
    const next = new Int32Array(new SharedArrayBuffer(4));
    const stop = () => Atomics.store(next, 0, CHUNKS_STOPPED); // the helper takes no further chunk
    signal?.addEventListener('abort', stop, { once: true });
    const helped = helper && chunkCount(entry.plainSize, entry.chunkBytes) > 1 ? helper.help(job, next) : undefined;
    // In order on this thread alone: the chunks are hashed as they are read.
    const hash = sha256 && !helped ? createHash('sha256') : undefined;
    try {
      await openChunks(reader, out, job, next, plainBuf, signal, hash);
    } catch (err) {
      stop();
      await helped?.catch(() => undefined);
      throw err;
    } finally {
      signal?.removeEventListener('abort', stop);
    }
    await helped;
    if (sha256) {
      const got = hash ? hash.digest('hex') : await hashStored(reader, size, plainBuf, signal);
      if (got !== sha256)
        throw new CheckpointUnusableError('corrupt', `${entry.path}: sha256 mismatch (stored bytes altered)`);
    }
  } finally {
    reader?.close();
    fs.closeSync(fd);
    if (out !== undefined) fs.closeSync(out);
  }
}

/** The sha256 of a whole stored file, read through `reader` a chunk at a time (yielding between chunks). */
async function hashStored(reader: DirectReader, size: number, buf: Buffer, signal?: AbortSignal): Promise<string> {
  const h = createHash('sha256');
  const step = SEAL_CHUNK_BYTES;
  const b = reader.direct || buf.length >= step ? buf : Buffer.allocUnsafe(step);
  for (let pos = 0; pos < size; pos += step) {
    const view = reader.read(pos, Math.min(step, size - pos), b);
    if (view.length === 0) throw new CheckpointUnusableError('truncated', `ends at ${pos} bytes while hashed`);
    h.update(view);
    await yieldTurn();
    signal?.throwIfAborted();
  }
  return h.digest('hex');
}

/** What openSealedFile hands its helper thread (plain data). */
export interface OpenJob {
  src: string;
  dest: string;
  entry: SealedFile;
  sealId: string;
  key: { id: string; key: Uint8Array };
  /** Read the ciphertext around the page cache where allowed. */
  direct: boolean;
}

const CHUNKS_STOPPED = 0x3fffffff;

/**
 * Decrypt chunks of `job` through `reader` into `out` until none is left:
 * each thread working on the file takes the next index from the shared
 * counter `next`, so a helper that starts late, or a thread that is slowed,
 * leaves more to the other. Plaintext goes to its own offset (chunk i at
 * i x chunkBytes), so the order of the writes does not matter. `hash`
 * (one thread only: the chunks are then taken in order) gets every stored
 * byte read.
 */
export async function openChunks(
  reader: DirectReader,
  out: number,
  job: OpenJob,
  next: Int32Array,
  b: Buffer,
  signal?: AbortSignal,
  hash?: Hash,
): Promise<void> {
  const { entry } = job;
  const chunks = chunkCount(entry.plainSize, entry.chunkBytes);
  const nonce = Buffer.from(entry.nonce, 'hex');
  const key = Buffer.from(job.key.key);
  for (let i = Atomics.add(next, 0, 1); i < chunks; i = Atomics.add(next, 0, 1)) {
    const plain = Math.min(entry.chunkBytes, entry.plainSize - i * entry.chunkBytes);
    const n = plain + TAG_BYTES;
    const sealed = reader.read(i * (entry.chunkBytes + TAG_BYTES), n, b);
    if (sealed.length < n) throw new CheckpointUnusableError('truncated', `${entry.path}: ends inside chunk ${i}`);
    hash?.update(sealed);
    writeAll(
      out,
      openChunk(
        key,
        chunkNonce(nonce, i),
        chunkAad(job.sealId, entry.path, i, i === chunks - 1),
        sealed,
        `${entry.path}: chunk ${i + 1} of ${chunks}`,
      ),
      i * entry.chunkBytes,
    );
    if (i + 1 < chunks) await yieldTurn();
    signal?.throwIfAborted();
  }
}

/** From dist/core/seal.js and from the bundles alike (see digest.ts's workerFile). */
const unsealWorkerFile = (): URL => new URL('../core/unseal-worker.js', import.meta.url);

/**
 * A worker thread that helps openSealedFile decrypt large files (a sealed
 * restore's page images) on the other core. Started ahead of its first use
 * (its module loads meanwhile); one file at a time; close() ends it.
 */
export class Unsealer {
  private readonly worker = new Worker(unsealWorkerFile());
  private busy: Promise<unknown> = Promise.resolve();

  constructor() {
    this.worker.unref(); // an idle helper never keeps the process alive
  }

  /** Decrypt chunks of `job` alongside the caller until `next` passes the last one. */
  help(job: OpenJob, next: Int32Array): Promise<void> {
    const w = this.worker;
    const run = this.busy.then(
      () =>
        new Promise<void>((resolve, reject) => {
          const done = () => {
            w.off('message', onMessage);
            w.off('error', onError);
            w.unref();
          };
          const onMessage = (m: { error?: string; reason?: string }) => {
            done();
            if (m.error === undefined) resolve();
            else reject(m.reason ? new CheckpointUnusableError(m.reason, m.error) : new Error(m.error));
          };
          const onError = (err: Error) => {
            done();
            reject(err);
          };
          w.on('message', onMessage);
          w.on('error', onError);
          w.ref(); // awaited: keeps the process alive until it answers
          w.postMessage({ job, next });
        }),
    );
    this.busy = run.catch(() => undefined);
    return run;
  }

  async close(): Promise<void> {
    await this.busy;
    await this.worker.terminate();
  }
}

/**
 * Scratch directories for plaintext: on a tmpfs (memory), never on the
 * store's disk. /run/arch/seal where /run is a tmpfs (root-only), else
 * /dev/shm (a 0700 directory of a random name: other users can neither
 * enter it nor plant one in its place). A directory is named after the
 * process that made it, so one left by a killed process is removed by the
 * next one (and a reboot empties tmpfs anyway).
 */
const TMPFS_MAGIC = 0x01021994;
const SCRATCH_PREFIX = 'arch-seal-';
export const SCRATCH_ROOTS = ['/run/arch/seal', '/dev/shm'];

export interface Scratch {
  dir: string;
  remove(): Promise<void>;
}

/**
 * A new scratch directory on the first tmpfs with room for `needBytes`;
 * an ArchInputError when none has (the caller refuses rather than write
 * plaintext to a disk: that is what the key was set for).
 */
export async function makeScratch(needBytes: number, roots = SCRATCH_ROOTS): Promise<Scratch> {
  const seen: string[] = [];
  for (const root of roots) {
    if (root.startsWith('/run/')) await fsp.mkdir(root, { recursive: true, mode: 0o700 }).catch(() => undefined);
    if (tmpfsFreeBytes(root) === undefined) {
      seen.push(`${root}: not a tmpfs`);
      continue;
    }
    await removeDeadScratch(root);
    const free = tmpfsFreeBytes(root) ?? 0; // what the dead ones' removal left
    if (free < needBytes) {
      seen.push(`${root}: ${mib(free)} free`);
      continue;
    }
    const dir = await fsp.mkdtemp(path.join(root, `${SCRATCH_PREFIX}${process.pid}-`));
    await fsp.chmod(dir, 0o700);
    return { dir, remove: () => fsp.rm(dir, { recursive: true, force: true }) };
  }
  throw new ArchInputError(
    STORE_KEY_SETTING,
    `is set, and no tmpfs has room for this checkpoint's plaintext (${mib(needBytes)} needed; ${seen.join('; ')})`,
    'make /dev/shm (or a tmpfs on /run) larger, e.g. `mount -o remount,size=50% /dev/shm`: encrypted checkpoints never write plaintext to a disk',
  );
}

function mib(n: number): string {
  return `${Math.round(n / (1024 * 1024))} MiB`;
}

/** The room left on the tmpfs at `dir`; undefined where `dir` is absent or not on a tmpfs. */
function tmpfsFreeBytes(dir: string): number | undefined {
  try {
    const st = fs.statfsSync(dir);
    return st.type === TMPFS_MAGIC ? st.bavail * st.bsize : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The scratch roots makeScratch could use now, with the room left on each
 * (`arch-cli doctor` shows them). A root under /run that is not there yet
 * counts as /run itself: makeScratch creates it on first use.
 */
export function scratchRoom(roots = SCRATCH_ROOTS): { root: string; freeBytes: number }[] {
  const out: { root: string; freeBytes: number }[] = [];
  for (const root of roots) {
    const at = root.startsWith('/run/') && !fs.existsSync(root) ? '/run' : root;
    const freeBytes = tmpfsFreeBytes(at);
    if (freeBytes !== undefined) out.push({ root, freeBytes });
  }
  return out;
}

/** Scratch directories of processes that are gone (killed mid-checkpoint or mid-restore). */
export async function removeDeadScratch(root: string): Promise<void> {
  for (const name of await fsp.readdir(root).catch(() => [] as string[])) {
    if (!name.startsWith(SCRATCH_PREFIX)) continue;
    const pid = Number(name.slice(SCRATCH_PREFIX.length).split('-')[0]);
    if (pid === process.pid || (Number.isInteger(pid) && pid > 0 && isAlive(pid))) continue; // in use
    await fsp.rm(path.join(root, name), { recursive: true, force: true }).catch(() => undefined);
  }
}

/** Scratch directories present now (tests: none may be left behind). */
export async function listScratch(roots = SCRATCH_ROOTS): Promise<string[]> {
  const out: string[] = [];
  for (const root of roots)
    for (const n of await fsp.readdir(root).catch(() => [] as string[]))
      if (n.startsWith(SCRATCH_PREFIX)) out.push(path.join(root, n));
  return out;
}
