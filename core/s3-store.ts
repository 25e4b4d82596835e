import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createRequire } from 'node:module';
import type * as S3Sdk from '@aws-sdk/client-s3';
import type { S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import { ArchInputError, CheckpointUnusableError, errorMessage } from '../contract/errors.js';
import { CHECKPOINT_NAME_RE as CKPT_RE, MANIFEST_FILE, SIGNATURE_FILE } from './checkpoint-layout.js';
import { isChunkId } from './chunk-codec.js';
import { CHUNKS_DIR, type ChunkStore } from './chunk-dir.js';
import { listFiles, MAX_MANIFEST_BYTES, parseManifest } from './manifest.js';
import { formatS3Url, type S3Location } from './s3-location.js';
import type { S3ClientSettings } from './settings.js';
import { verifyManifestSignature, type Trust } from './trust.js';
import { parseOwnerRecord, RECORD_SUFFIX, type OwnerRecord } from './host-dirs.js';
import {
  CheckpointStore,
  LEASE_FILE,
  leaseClaimFile,
  staleLeaseClaims,
  type OwnedPlace,
  type StoreOwner,
} from './store.js';

/**
 * A container's checkpoints in object storage, in store format 2 (chunks),
 * with the same key layout as a checkpoint directory:
 *
 *   <prefix>/<ns>/<key>/current                 the published checkpoint's name (the one atomic PUT)
 *   <prefix>/<ns>/<key>/ckpt-<time>-<rand>/...  manifest.json, its signature and the small files
 *   <prefix>/<ns>/<key>/chunks/<2 hex>/<id>     chunks, shared by the container's checkpoints
 *   <prefix>/<ns>/<key>/lease.json              the job's lease (core/lease.ts)
 *   <prefix>/<ns>/<key>@arch.json               its ownership record (core/host-dirs.ts), beside it
 *
 * A checkpoint's objects are all written before `current` names it (a single
 * PUT is atomic): a reader on any node sees the previous complete
 * checkpoint or the new one. The node-local `containerDir`
 * (ARCH_S3_CACHE_PATH/<bucket>/<prefix>/<ns>/<key>) is where checkpoints are
 * staged before the upload, and where the small files of the current one
 * are fetched to, so everything that reads a checkpoint directory (verify,
 * restore) works unchanged; the chunks are fetched from the bucket as the
 * restore assembles them.
 */
const CURRENT_OBJECT = 'current';
const MAX_SMALL_OBJECT = 64 << 20;
const MAX_SIGNATURE_BYTES = 64 << 10;
const UPLOADS_IN_FLIGHT = 8;

/** The settings that name what went wrong with object storage, and what to do about it. */
export function describeS3Error(err: unknown, loc: S3Location, s: S3ClientSettings): ArchInputError {
  const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number }; message?: string };
  const url = formatS3Url(loc);
  const name = e?.name ?? e?.code ?? '';
  const status = e?.$metadata?.httpStatusCode;
  const endpoint = s.endpoint ?? 'the AWS default endpoint';
  if (name === 'NoSuchBucket')
    return new ArchInputError(
      'ARCH_CHECKPOINT_URL',
      `bucket "${loc.bucket}" does not exist at ${endpoint}`,
      `create the bucket, or name an existing one in ARCH_CHECKPOINT_URL (or the node's ARCH_DEFAULT_CHECKPOINT_URL)`,
    );
  if (
    ['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'AccessDenied', 'InvalidToken', 'ExpiredToken'].includes(name) ||
    status === 403 ||
    /credential/i.test(e?.message ?? '')
  )
    return new ArchInputError(
      'AWS_ACCESS_KEY_ID',
      `${endpoint} refused the credentials for ${url} (${name || status || errorMessage(err)})`,
      'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the node settings (/etc/arch/arch.env) to a key that may read and write the bucket',
    );
  return new ArchInputError(
    'AWS_ENDPOINT_URL_S3',
    `cannot reach object storage for ${url} at ${endpoint} (${[e?.code, errorMessage(err)].filter(Boolean).join(': ')})`,
    'check that the server is up and that AWS_ENDPOINT_URL_S3 and AWS_REGION in the node settings (/etc/arch/arch.env) name it',
  );
}

const requireHere = createRequire(import.meta.url);
let loaded: typeof S3Sdk | undefined;
/**
 * The AWS SDK, loaded on first use: it needs node:http2, which cannot be
 * part of the shim's start-up snapshot, and most shim calls never touch
 * object storage.
 */
function sdk(): typeof S3Sdk {
  // Its warning about Node 20 would reach containerd through arch-runc's stderr, on every create.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return (loaded ??= requireHere('@aws-sdk/client-s3') as typeof S3Sdk);
}

/** Close every client's connections (a long-lived process that is done with object storage, or a test). */
export function closeS3Clients(): void {
  for (const c of clients.values()) c.destroy();
  clients.clear();
}

const clients = new Map<string, S3Client>();

/** One client per configuration (a process talks to few stores): its connections are reused. */
export function s3ClientFor(s: S3ClientSettings): S3Client {
  const key = JSON.stringify(s);
  let c = clients.get(key);
  if (!c) {
    const cfg: S3ClientConfig = {
      region: s.region ?? 'us-east-1',
      forcePathStyle: s.forcePathStyle,
      maxAttempts: 3,
      requestHandler: { connectionTimeout: 5000, requestTimeout: 60_000 },
      ...(s.endpoint ? { endpoint: s.endpoint } : {}),
      ...(s.profile ? { profile: s.profile } : {}),
      ...(s.accessKeyId && s.secretAccessKey
        ? {
            credentials: {
              accessKeyId: s.accessKeyId,
              secretAccessKey: s.secretAccessKey,
              ...(s.sessionToken ? { sessionToken: s.sessionToken } : {}),
            },
          }
        : {}),
    };
    c = new (sdk().S3Client)(cfg);
    clients.set(key, c);
  }
  return c;
}

const isMissing = (err: unknown): boolean => {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
};

/** An object whose bytes are not the ones uploaded (the SDK's checksum check). */
export class S3CorruptObject extends Error {}

/** Access to one key prefix of a bucket, every failure described by the settings that fix it. */
export class S3Prefix {
  constructor(
    readonly client: S3Client,
    readonly loc: S3Location,
    readonly base: string,
    readonly settings: S3ClientSettings,
  ) {}

  key(rel: string): string {
    return `${this.base}/${rel}`;
  }

  get url(): string {
    return `s3://${this.loc.bucket}/${this.base}`;
  }

  private fail(err: unknown, rel?: string): never {
    if (err instanceof ArchInputError || err instanceof S3CorruptObject) throw err;
    // The SDK checks the checksum the server stored at upload against the bytes it returns.
    if (rel !== undefined && /checksum mismatch/i.test(errorMessage(err)))
      throw new S3CorruptObject(`${this.key(rel)}: ${errorMessage(err)}`);
    // A missing bucket answers 404 too: it is not a missing object.
    throw describeS3Error(err, this.loc, this.settings);
  }

  async get(rel: string, max = MAX_SMALL_OBJECT): Promise<Buffer | undefined> {
    try {
      const r = await this.client.send(new (sdk().GetObjectCommand)({ Bucket: this.loc.bucket, Key: this.key(rel) }));
      if ((r.ContentLength ?? 0) > max) throw new Error(`${this.key(rel)}: ${r.ContentLength} bytes, more than ${max}`);
      return Buffer.from(await r.Body!.transformToByteArray());
    } catch (err) {
      if (isMissing(err) && (err as { name?: string }).name !== 'NoSuchBucket') return undefined;
      this.fail(err, rel);
    }
  }

  async has(rel: string): Promise<boolean> {
    try {
      await this.client.send(new (sdk().HeadObjectCommand)({ Bucket: this.loc.bucket, Key: this.key(rel) }));
      return true;
    } catch (err) {
      // HEAD has no body to say which: a missing bucket is told by the next PUT.
      if (isMissing(err)) return false;
      this.fail(err);
    }
  }

  async put(rel: string, body: Buffer): Promise<void> {
    try {
      await this.client.send(new (sdk().PutObjectCommand)({ Bucket: this.loc.bucket, Key: this.key(rel), Body: body }));
    } catch (err) {
      this.fail(err);
    }
  }

  /**
   * A PUT that only creates (If-None-Match: *): false when the object was
   * already there. S3, MinIO, Ceph RGW and versitygw answer 412 then.
   */
  async create(rel: string, body: Buffer): Promise<boolean> {
    try {
      await this.client.send(
        new (sdk().PutObjectCommand)({ Bucket: this.loc.bucket, Key: this.key(rel), Body: body, IfNoneMatch: '*' }),
      );
      return true;
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      if (e?.name === 'PreconditionFailed' || e?.$metadata?.httpStatusCode === 412) return false;
      this.fail(err);
    }
  }

  /** Keys (relative to this prefix) under `sub`, with their time. */
  async list(sub: string): Promise<{ rel: string; modified: number }[]> {
    const out: { rel: string; modified: number }[] = [];
    let token: string | undefined;
    try {
      do {
        const r = await this.client.send(
          new (sdk().ListObjectsV2Command)({
            Bucket: this.loc.bucket,
            Prefix: this.key(sub),
            ...(token ? { ContinuationToken: token } : {}),
          }),
        );
        for (const o of r.Contents ?? [])
          if (o.Key) out.push({ rel: o.Key.slice(this.base.length + 1), modified: o.LastModified?.getTime() ?? 0 });
        token = r.IsTruncated ? r.NextContinuationToken : undefined;
      } while (token);
    } catch (err) {
      this.fail(err);
    }
    return out;
  }

  async remove(rels: string[]): Promise<void> {
    for (let i = 0; i < rels.length; i += 1000) {
      try {
        await this.client.send(
          new (sdk().DeleteObjectsCommand)({
            Bucket: this.loc.bucket,
            Delete: { Objects: rels.slice(i, i + 1000).map((r) => ({ Key: this.key(r) })), Quiet: true },
          }),
        );
      } catch (err) {
        this.fail(err);
      }
    }
  }
}

/**
 * Chunks in the bucket. A PUT is atomic (an object is there whole or not
 * at all), so presence is enough to skip uploading a chunk again; and each
 * PUT is durable when it returns.
 */
export class S3Chunks implements ChunkStore {
  constructor(readonly at: S3Prefix) {}

  get where(): string {
    return `${this.at.url}/${CHUNKS_DIR}`;
  }

  private rel(id: string): string {
    if (!isChunkId(id)) throw new Error(`"${id}" is not a chunk id`);
    return `${CHUNKS_DIR}/${id.slice(0, 2)}/${id}`;
  }

  reuse(id: string): Promise<boolean> {
    return this.at.has(this.rel(id));
  }

  put(id: string, bytes: Buffer): Promise<void> {
    return this.at.put(this.rel(id), bytes);
  }

  // A PUT appears whole and durable once it returns, so a chunk is uploaded as
  // soon as it is made; nothing is left to commit. One never published is
  // referenced by no manifest, and the collector removes it.
  stage(id: string, bytes: Buffer): Promise<void> {
    return this.put(id, bytes);
  }

  async commitStaged(): Promise<void> {}

  async dropStaged(): Promise<void> {}

  async get(id: string): Promise<Buffer | undefined> {
    try {
      return await this.at.get(this.rel(id));
    } catch (err) {
      if (err instanceof S3CorruptObject) throw new CheckpointUnusableError('corrupt', err.message);
      // On restore: the store failing now means this checkpoint cannot be read whole, so the container starts fresh.
      throw new CheckpointUnusableError('store', errorMessage(err));
    }
  }

  async syncDirs(): Promise<void> {}
}

export interface S3StoreOptions {
  loc: S3Location;
  client: S3ClientSettings;
  /** ARCH_S3_CACHE_PATH */
  cacheRoot: string;
}

export class S3CheckpointStore extends CheckpointStore {
  readonly at: S3Prefix;
  /** The prefix the container's prefix lies in: its ownership record is there, beside it, as beside a directory. */
  private readonly parent: S3Prefix;
  private readonly recordRel: string;

  /** `key`: <ns>/<ARCH_CHECKPOINT_ID or id>, already validated (containerDir). */
  constructor(
    readonly opts: S3StoreOptions,
    namespace: string,
    key: string,
    containerDir: string,
  ) {
    super(containerDir);
    const base = [opts.loc.prefix, namespace, key].filter(Boolean).join('/');
    this.at = new S3Prefix(s3ClientFor(opts.client), opts.loc, base, opts.client);
    this.parent = new S3Prefix(this.at.client, opts.loc, path.posix.dirname(base), opts.client);
    this.recordRel = `${path.posix.basename(base)}${RECORD_SUFFIX}`;
  }

  // The same ownership rule as a checkpoint directory (CheckpointStore.claim/takeOver/remove):
  // a container naming another's prefix (ARCH_CHECKPOINT_ID) neither writes into it for itself
  // unless it is that job's newer container, nor removes it.
  protected override get owned(): boolean {
    return true;
  }

  protected override get placeField(): string {
    return 'ARCH_CHECKPOINT_URL';
  }

  /** The prefix with its record; undefined when neither is there (`create`: a prefix is never made, only written to). */
  protected override async holdOwned(create: boolean): Promise<OwnedPlace | undefined> {
    const text = (await this.parent.get(this.recordRel, 64 << 10))?.toString('utf8');
    const record = text === undefined ? undefined : parseOwnerRecord(text, this.recordRel);
    if (record && record.kind !== 'checkpoint')
      throw new ArchInputError(
        this.placeField,
        `${this.at.url} is the ${record.kind === 'work' ? 'work directory' : record.kind} of container ${record.namespace}/${record.key}`,
        'use a prefix of its own for each job',
      );
    let listed: string[] | undefined;
    const entries = async () => {
      listed ??= [...new Set((await this.at.list('')).map((o) => o.rel.split('/')[0]!))];
      return listed;
    };
    if (!record && !create && (await entries()).length === 0) return undefined;
    const place: OwnedPlace = {
      path: this.at.url,
      created: false,
      record,
      entries,
      writeRecord: async (r: OwnerRecord) => {
        await this.parent.put(this.recordRel, Buffer.from(JSON.stringify(r)));
        place.record = r;
      },
      removeAll: async () => {
        await this.at.remove((await this.at.list('')).map((o) => o.rel));
        await this.parent.remove([this.recordRel]);
        place.record = undefined;
      },
      close: async () => undefined,
    };
    return place;
  }

  /** For logs and `arch-cli ls`: where the checkpoints really are. */
  get url(): string {
    return this.at.url;
  }

  override chunkDir(): ChunkStore {
    return new S3Chunks(this.at);
  }

  /**
   * The current checkpoint's small files (manifest, signature, CRIU's
   * metadata images) fetched into the node's cache, by name (a name is never
   * reused, so a cached copy is that checkpoint); null when there is none.
   * Failing to reach the store is a CheckpointUnusableError('store'): a
   * create starts fresh, with that reason.
   */
  override async current(trust?: Trust): Promise<string | null> {
    try {
      const text = (await this.at.get(CURRENT_OBJECT, 256))?.toString('utf8').trim();
      if (text === undefined) return null;
      // Data from a store other nodes write: only our own names.
      if (!CKPT_RE.test(text))
        throw new CheckpointUnusableError('layout', `${this.at.key(CURRENT_OBJECT)} names "${text}", not a checkpoint`);
      const dir = path.join(this.containerDir, text);
      if (await fsp.stat(path.join(dir, MANIFEST_FILE)).catch(() => undefined)) return dir;
      await this.fetchCheckpoint(text, dir, trust);
      return dir;
    } catch (err) {
      if (err instanceof CheckpointUnusableError) throw err;
      throw new CheckpointUnusableError(err instanceof S3CorruptObject ? 'corrupt' : 'store', errorMessage(err));
    }
  }

  private async fetchCheckpoint(name: string, dir: string, trust: Trust | undefined): Promise<void> {
    const manifestBytes = await this.at.get(`${name}/${MANIFEST_FILE}`, MAX_MANIFEST_BYTES);
    if (!manifestBytes)
      throw new CheckpointUnusableError('truncated', `${this.at.key(name)}/${MANIFEST_FILE} is missing`);
    const sig = await this.at.get(`${name}/${SIGNATURE_FILE}`, MAX_SIGNATURE_BYTES);
    // Whoever can write the bucket must not get files of their choosing onto this node: a restore
    // checks the signature before anything the manifest lists is fetched (and verifies it all again).
    if (trust) verifyManifestSignature(manifestBytes, sig?.toString('utf8'), trust);
    const manifest = parseManifest(manifestBytes.toString('utf8'));
    await fsp.mkdir(this.containerDir, { recursive: true, mode: 0o700 });
    const tmp = path.join(this.containerDir, `.fetch-${process.pid}-${randomBytes(4).toString('hex')}`);
    await fsp.mkdir(tmp, { mode: 0o700 });
    try {
      await fsp.writeFile(path.join(tmp, MANIFEST_FILE), manifestBytes, { mode: 0o600 });
      if (sig) await fsp.writeFile(path.join(tmp, SIGNATURE_FILE), sig, { mode: 0o600 });
      for (const f of manifest.files)
        if (path.isAbsolute(f.path) || f.path.split('/').some((p) => p === '' || p === '.' || p === '..'))
          throw new CheckpointUnusableError('manifest-corrupt', `file "${f.path}" is not a plain relative path`);
      await inParallel(manifest.files, async ({ path: rel, size }) => {
        // At most the size the manifest gives (the read stops there), and exactly that.
        const body = await this.at.get(`${name}/${rel}`, Math.min(size, MAX_SMALL_OBJECT));
        if (!body) throw new CheckpointUnusableError('truncated', `${this.at.key(`${name}/${rel}`)} is missing`);
        if (body.length !== size)
          throw new CheckpointUnusableError(
            'truncated',
            `${this.at.key(`${name}/${rel}`)}: ${body.length} bytes, not ${size}`,
          );
        await fsp.mkdir(path.dirname(path.join(tmp, rel)), { recursive: true, mode: 0o700 });
        await fsp.writeFile(path.join(tmp, rel), body, { mode: 0o600, flag: 'wx' });
      });
      await fsp.rename(tmp, dir);
    } catch (err) {
      await fsp.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Upload the staged checkpoint's objects (the signed manifest and its
   * signature after everything it lists), then name it in `current`: the
   * single PUT that publishes it. Failing anywhere before leaves the
   * previous checkpoint current; what was uploaded is left for pruneAfter.
   */
  protected override async commit(stagingDir: string, name: string): Promise<{ dir: string; stale?: string }> {
    const rels = (await listFiles(stagingDir)).filter((r) => r !== MANIFEST_FILE && r !== SIGNATURE_FILE);
    await inParallel(rels, async (rel) =>
      this.at.put(`${name}/${rel}`, await fsp.readFile(path.join(stagingDir, rel))),
    );
    const sig = await fsp.readFile(path.join(stagingDir, SIGNATURE_FILE)).catch(() => undefined);
    if (sig) await this.at.put(`${name}/${SIGNATURE_FILE}`, sig);
    await this.at.put(`${name}/${MANIFEST_FILE}`, await fsp.readFile(path.join(stagingDir, MANIFEST_FILE)));
    await this.at.put(CURRENT_OBJECT, Buffer.from(`${name}\n`));
    // Cached under its name: a restore on this node needs nothing fetched.
    const dir = path.join(this.containerDir, name);
    await fsp.rename(stagingDir, dir);
    return { dir };
  }

  /**
   * Retention in the bucket: checkpoints beyond the newest `keep` (never the
   * current one) removed, and chunks no remaining manifest refers to, once
   * older than the grace period (a publisher re-checks every chunk it refers
   * to just before it names its checkpoint current). The node's cache keeps
   * only the published checkpoint.
   */
  protected override async pruneAfter(published: string, _stale: string | undefined, keep = 2): Promise<void> {
    const current = path.basename(published);
    for (const n of await fsp.readdir(this.containerDir).catch(() => [] as string[]))
      if (CKPT_RE.test(n) && n !== current)
        await fsp.rm(path.join(this.containerDir, n), { recursive: true, force: true });
    await collectS3(this.at, { keep, current });
  }

  override async readLease(): Promise<string | undefined> {
    return (await this.at.get(LEASE_FILE, 64 << 10))?.toString('utf8');
  }

  override async writeLease(text: string, owner: StoreOwner): Promise<void> {
    await this.claim(owner);
    await this.at.put(LEASE_FILE, Buffer.from(text));
  }

  /**
   * The lease's compare-and-swap (core/lease.ts) in the bucket: a conditional
   * create, so of two nodes claiming a generation at once exactly one gets it,
   * as O_EXCL does on a filesystem. Claims older than the one before are removed.
   */
  override async claimLease(generation: number, text: string, owner: StoreOwner): Promise<string | undefined> {
    await this.claim(owner);
    const rel = leaseClaimFile(generation);
    if (!(await this.at.create(rel, Buffer.from(text))))
      return (await this.at.get(rel, 64 << 10))?.toString('utf8') ?? '';
    const old = staleLeaseClaims(
      (await this.at.list('lease.claim-')).map((o) => o.rel),
      generation,
    );
    if (old.length > 0) await this.at.remove(old).catch(() => undefined);
    return undefined;
  }

  override async releaseLeaseClaim(generation: number): Promise<void> {
    await this.at.remove([leaseClaimFile(generation)]);
  }

  /** Everything of this container in the bucket, and its cache: only for the container its record names. */
  override async remove(holder?: { namespace: string; id: string }): Promise<{ removed: boolean; why?: string }> {
    const r = await super.remove(holder);
    if (r.removed) await fsp.rm(this.containerDir, { recursive: true, force: true });
    return r;
  }
}

export const S3_CHUNK_GRACE_MS = 15 * 60_000;

/** Chunk collection in the bucket (see S3CheckpointStore.pruneAfter). */
export async function collectS3(
  at: S3Prefix,
  opts: { keep: number; current: string; graceMs?: number; now?: number },
): Promise<{ removedCheckpoints: string[]; deleted: number }> {
  const grace = opts.graceMs ?? S3_CHUNK_GRACE_MS;
  const now = opts.now ?? Date.now();
  const all = await at.list('');
  const byCkpt = new Map<string, { rels: string[]; published: boolean; newest: number }>();
  for (const o of all) {
    const top = o.rel.split('/')[0]!;
    if (!CKPT_RE.test(top)) continue;
    const c = byCkpt.get(top) ?? { rels: [], published: false, newest: 0 };
    c.rels.push(o.rel);
    c.published ||= o.rel === `${top}/${MANIFEST_FILE}`;
    c.newest = Math.max(c.newest, o.modified);
    byCkpt.set(top, c);
  }
  const published = [...byCkpt.keys()].filter((n) => byCkpt.get(n)!.published).sort();
  const keep = new Set([...published.slice(-Math.max(1, opts.keep)), opts.current]);
  // Without a manifest: being uploaded by a publisher (young, kept) or left by one that failed (old).
  for (const [n, c] of byCkpt) if (!c.published && c.newest >= now - grace) keep.add(n);
  const removedCheckpoints = [...byCkpt.keys()].filter((n) => !keep.has(n));
  await at.remove(removedCheckpoints.flatMap((n) => byCkpt.get(n)!.rels));
  const referenced = new Set<string>();
  for (const n of [...keep].filter((k) => byCkpt.has(k))) {
    const bytes = await at.get(`${n}/${MANIFEST_FILE}`, MAX_MANIFEST_BYTES);
    if (!bytes) continue;
    for (const f of parseManifest(bytes.toString('utf8')).chunked?.files ?? [])
      for (const c of f.chunks) referenced.add(c.id);
  }
  const gone = all
    .filter((o) => o.rel.startsWith(`${CHUNKS_DIR}/`) && o.modified < now - grace)
    .filter((o) => !referenced.has(path.basename(o.rel)))
    .map((o) => o.rel);
  await at.remove(gone);
  return { removedCheckpoints, deleted: gone.length };
}

async function inParallel<T>(items: T[], fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(UPLOADS_IN_FLIGHT, items.length) }, lane));
}
