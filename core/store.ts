import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Digest } from './digest.js';
import { ArchInputError, CheckpointUnusableError } from '../contract/errors.js';
import { holdDir, mayRemove, type HeldDir, type OwnedPlace } from './host-dirs.js';
import { isAlive } from './pid.js';
import {
  CHUNKED_FORMAT_VERSION,
  describeFiles,
  listFiles,
  parseManifest,
  readSmallFile,
  verifyCheckpointDir,
  type Manifest,
} from './manifest.js';
import { loadTrust, signManifest, type Trust } from './trust.js';
import {
  CHECKPOINT_NAME_RE as CKPT_RE,
  CONTENT_IMAGE_PATH,
  MANIFEST_FILE,
  SIGNATURE_FILE,
  LAYER_ARCHIVE,
} from './checkpoint-layout.js';
import { CHUNK_ALG, type ChunkKeys } from './chunk-codec.js';
import { ChunkDir, CHUNKS_DIR, type ChunkStore, type ChunkWriteStats } from './chunk-dir.js';
import { storeChunked, type ChunkFollower } from './chunked-files.js';
import { collect } from './chunk-gc.js';

/**
 * One container's checkpoints: <root>/<ns>/<id>/.
 *
 *   current -> ckpt-<time>-<rand>     symlink, swapped atomically (rename)
 *   ckpt-.../manifest.json, criu/, rootfs-diff.tar, deleted.files, config.json
 *   .staging-<pid>-<rand>/            a checkpoint being written
 *
 * A reader follows `current` and sees the previous complete checkpoint or the
 * new complete one, never a part: the new directory is written beside the old
 * one, fsynced, renamed into place, and only then does `current` move.
 */
export const CURRENT_LINK = 'current';
const STAGING_PREFIX = '.staging-';

export interface Staging {
  /** Directory to write the checkpoint's files into. */
  dir: string;
}

/** Who a checkpoint directory is written for (its ownership record). */
export interface StoreOwner {
  namespace: string;
  /** ARCH_CHECKPOINT_ID or the container id. */
  key: string;
  containerId: string;
  node: string;
}

export type { OwnedPlace } from './host-dirs.js';

/** Names ARCH itself gives entries of a container's checkpoint directory. */
const ARCH_ENTRY_RE = new RegExp(
  `^(current|lease\\.json|lease\\.claim-\\d+|\\.lease-.*|ckpt-[0-9TZ-]+-[0-9a-f]{8}|\\.staging-.*|\\.current-[0-9a-f]{8}|${CHUNKS_DIR})$`,
);

/** The files store format 2 keeps as chunks: what the job holds (CRIU's content images, the layer's, /dev/shm's and the emptyDirs' archives); the rest is a few KiB of CRIU metadata. */
export const isChunkedPath = (rel: string): boolean => CONTENT_IMAGE_PATH.test(rel) || LAYER_ARCHIVE.test(rel);

/** The job's ownership (core/lease.ts), beside its checkpoints. */
export const LEASE_FILE = 'lease.json';
/** The claim of one generation of the lease (core/lease.ts: made once, exclusively). */
export const leaseClaimFile = (generation: number): string => `lease.claim-${generation}`;

/** Of these names, the lease claims older than the one before `generation` (no longer needed by anyone). */
export function staleLeaseClaims(names: readonly string[], generation: number): string[] {
  return names.filter((n) => {
    const m = /^lease\.claim-(\d+)$/.exec(n);
    return m !== null && Number(m[1]) < generation - 1;
  });
}
/** The lease and its claims: the job's ownership, not part of any checkpoint. */
export const isLeaseEntry = (name: string): boolean => name === LEASE_FILE || /^lease\.claim-\d+$/.test(name);
/** A lease is a few hundred bytes; anything much larger is not one. */
const MAX_LEASE_BYTES = 64 << 10;
/** Reads of an empty claim, 5 ms apart, before it counts as one whose claimer died while writing it. */
const CLAIM_READ_TRIES = 40;

export class CheckpointStore {
  /**
   * `guard`: the allowed root the directory lies under and the setting that
   * named it. With it, every use walks from the root without following a
   * symlink (core/host-dirs.ts) and only a directory whose ownership record
   * names the container is removed. Without it the directory is the node's own.
   */
  constructor(
    readonly containerDir: string,
    readonly guard?: { root: string; field: string },
  ) {}

  private hold(create: boolean): Promise<HeldDir | undefined> {
    return holdDir({
      root: this.guard!.root,
      target: this.containerDir,
      kind: 'checkpoint',
      create,
      field: this.guard!.field,
    });
  }

  /**
   * This store's place with its ownership record, made first when `create`;
   * undefined when it is not there. Only called when `owned`.
   */
  protected holdOwned(create: boolean): Promise<OwnedPlace | undefined> {
    return this.hold(create);
  }

  /** Whether ownership records apply (a guarded directory, a bucket prefix); else the place is the node's own. */
  protected get owned(): boolean {
    return this.guard !== undefined;
  }

  /** The setting that named this place (for errors). */
  protected get placeField(): string {
    return this.guard!.field;
  }

  /** Throw ArchInputError when the way to this directory is not one ARCH may use (symlinks, nesting). */
  async checkPath(): Promise<void> {
    if (this.guard) await (await this.hold(false))?.close();
  }

  private chunks?: ChunkDir;

  /** Where this container's chunks are (store format 2): one ChunkDir per store, whose directory checks the writer, the publish and the collector share. */
  chunkDir(): ChunkStore {
    return this.localChunks();
  }

  private localChunks(): ChunkDir {
    return (this.chunks ??= new ChunkDir(this.containerDir));
  }

  /**
   * The published checkpoint directory, or null if there is none. `trust`:
   * a store that has to fetch the checkpoint from elsewhere (a bucket) checks
   * the manifest's signature with it before it fetches anything the
   * manifest lists; a local directory is verified by the restore itself.
   */
  async current(_trust?: Trust): Promise<string | null> {
    if (this.guard) {
      const held = await this.hold(false);
      if (!held) return null;
      await held.close();
    }
    let target: string;
    try {
      target = await fsp.readlink(path.join(this.containerDir, CURRENT_LINK));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return null;
      if (code === 'EINVAL')
        throw new CheckpointUnusableError('layout', `${CURRENT_LINK} in ${this.containerDir} is not a symlink`);
      throw err;
    }
    // The link is data from storage other nodes write: accept only our own names.
    if (!CKPT_RE.test(target))
      throw new CheckpointUnusableError(
        'layout',
        `${CURRENT_LINK} points to "${target}", not a checkpoint of this store`,
      );
    return path.join(this.containerDir, target);
  }

  async readManifest(): Promise<Manifest | null> {
    const dir = await this.current();
    if (!dir) return null;
    return parseManifest(await fsp.readFile(path.join(dir, MANIFEST_FILE), 'utf8'));
  }

  /** Verified manifest of the current checkpoint; throws CheckpointUnusableError. */
  async verifyCurrent(): Promise<{ dir: string; manifest: Manifest }> {
    const dir = await this.current();
    if (!dir) throw new CheckpointUnusableError('missing', `no checkpoint in ${this.containerDir}`);
    return { dir, manifest: await verifyCheckpointDir(dir) };
  }

  async begin(owner?: StoreOwner): Promise<Staging> {
    if (this.owned) await this.claim(owner);
    // A bucket's checkpoints are staged in the node's cache.
    if (!this.guard) await fsp.mkdir(this.containerDir, { recursive: true, mode: 0o700 });
    await this.removeDeadStagings();
    const dir = path.join(this.containerDir, `${STAGING_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
    await fsp.mkdir(dir, { mode: 0o700 });
    return { dir };
  }

  async abort(staging: Staging): Promise<void> {
    await fsp.rm(staging.dir, { recursive: true, force: true });
  }

  /**
   * Describe every file, write the manifest, make it durable and publish.
   * On any error the staging dir is removed and `current` is untouched.
   */
  async publish(
    staging: Staging,
    meta: Omit<Manifest, 'files'>,
    opts: {
      fsync: boolean;
      onPhase?: (phase: string, ms: number) => void;
      known?: Map<string, Digest>;
      /** Leave the previous checkpoint for the caller to prune() (after its time-critical part). */
      deferPrune?: boolean;
      /** The node's keys (default: from its settings). */
      trust?: Trust;
      /**
       * Store format 2: the large files (isChunkedPath) under `from` (the
       * staging dir, or the tmpfs scratch an encrypted checkpoint was dumped
       * to) go into the chunk directory instead, listed under `chunked`;
       * those `follower` chunked while they were written are taken from it.
       */
      chunk?: { from: string; keys?: ChunkKeys; keep: number; follower?: ChunkFollower };
      /** Last word before the commit (a refusal throws: nothing is published). */
      beforeCommit?: () => Promise<void>;
      /** Retention (ARCH_KEEP) for a format-2 checkpoint whose chunks are already in place (`meta.chunked`: a transfer). */
      keep?: number;
    },
  ): Promise<{
    dir: string;
    manifest: Manifest;
    sizeBytes: number;
    prune: () => Promise<void>;
    unsignedBecause?: string;
    /** Store format 2: what went into the chunk directory. */
    chunkStats?: ChunkWriteStats;
  }> {
    try {
      let t = Date.now();
      let chunked: Manifest['chunked'];
      let chunkStats: ChunkWriteStats | undefined;
      if (opts.chunk) {
        const rels = (await listFiles(opts.chunk.from)).filter(isChunkedPath);
        const r = await storeChunked(opts.chunk.from, rels, this.chunkDir(), {
          keys: opts.chunk.keys,
          fsync: opts.fsync,
          ...(opts.chunk.follower ? { follower: opts.chunk.follower } : {}),
        });
        if (opts.chunk.from === staging.dir) await Promise.all(rels.map((rel) => fsp.rm(path.join(staging.dir, rel))));
        chunked = {
          alg: CHUNK_ALG,
          ...(opts.chunk.keys ? { keyId: opts.chunk.keys.key.id } : {}),
          files: r.files,
        };
        chunkStats = r.stats;
        opts.onPhase?.('chunk', Date.now() - t);
        t = Date.now();
      }
      const files = await describeFiles(staging.dir, await listFiles(staging.dir), opts.known);
      opts.onPhase?.('digest', Date.now() - t);
      const manifest: Manifest = {
        ...meta,
        files,
        ...(chunked ? { formatVersion: CHUNKED_FORMAT_VERSION, chunked } : {}),
      };
      const bytes = Buffer.from(JSON.stringify(manifest, null, 1));
      await fsp.writeFile(path.join(staging.dir, MANIFEST_FILE), bytes);
      // Signed as written (restore verifies these exact bytes), before the fsync and the rename publish both.
      const trust = opts.trust ?? loadTrust();
      const signature = signManifest(bytes, trust);
      if (signature) await fsp.writeFile(path.join(staging.dir, SIGNATURE_FILE), signature);
      t = Date.now();
      if (opts.fsync) await fsyncTree(staging.dir);
      opts.onPhase?.('fsync', Date.now() - t);
      const name = `ckpt-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(4).toString('hex')}`;
      await opts.beforeCommit?.();
      if (manifest.chunked) await this.touchChunks(manifest.chunked.files);
      const { dir: published, stale } = await this.commit(staging.dir, name, opts.fsync);
      const prune = () =>
        this.pruneAfter(published, stale, opts.chunk?.keep ?? (manifest.chunked ? opts.keep : undefined));
      if (!opts.deferPrune) await prune();
      const sizeBytes = [...files, ...(manifest.chunked?.files ?? [])].reduce((a, f) => a + f.size, 0);
      // Unsigned (the node has no key): published all the same, and the caller says loudly that no node will restore it.
      return {
        dir: published,
        manifest,
        sizeBytes,
        prune: opts.deferPrune ? prune : async () => undefined,
        ...(signature ? {} : { unsignedBecause: trust.signerProblem }),
        ...(chunkStats ? { chunkStats } : {}),
      };
    } catch (err) {
      await this.abort(staging).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Publish the complete, durable checkpoint in `stagingDir` as `name`: the
   * directory renamed into place, then `current` swapped to it (the one
   * atomic step a reader sees). Returns the previous checkpoint, for pruning.
   * On failure nothing is current that was not before.
   */
  protected async commit(stagingDir: string, name: string, fsync: boolean): Promise<{ dir: string; stale?: string }> {
    const previous = await this.current().catch(() => null);
    const finalDir = path.join(this.containerDir, name);
    await fsp.rename(stagingDir, finalDir);
    const tmpLink = path.join(this.containerDir, `.${CURRENT_LINK}-${randomBytes(4).toString('hex')}`);
    try {
      await fsp.symlink(name, tmpLink);
      await fsp.rename(tmpLink, path.join(this.containerDir, CURRENT_LINK));
    } catch (err) {
      // Renamed but never made current: nobody would ever read or remove it.
      await fsp.rm(finalDir, { recursive: true, force: true }).catch(() => undefined);
      await fsp.rm(tmpLink, { force: true }).catch(() => undefined);
      throw err;
    }
    if (fsync) await fsyncDir(this.containerDir);
    return { dir: finalDir, ...(previous && previous !== finalDir ? { stale: previous } : {}) };
  }

  /** After a publish: retention and chunk collection (format 2, `keep` given), else the previous checkpoint removed. */
  protected async pruneAfter(published: string, stale: string | undefined, keep: number | undefined): Promise<void> {
    if (keep !== undefined) await collect(this.containerDir, this.localChunks(), { keep, current: published });
    else if (stale) await fsp.rm(stale, { recursive: true, force: true });
  }

  /**
   * Every chunk the new manifest refers to touched (taken back if a
   * collector set it aside) right before it is published: the other half of
   * chunk-gc.ts's rule. A chunk that is gone fails the publish; the previous
   * checkpoint stays current.
   */
  protected async touchChunks(files: { path: string; chunks: { id: string }[] }[]): Promise<void> {
    const dir = this.chunkDir();
    const ids = [...new Set(files.flatMap((f) => f.chunks.map((c) => c.id)))];
    for (let i = 0; i < ids.length; i += 32) {
      const gone = (
        await Promise.all(ids.slice(i, i + 32).map(async (id) => ((await dir.reuse(id)) ? undefined : id)))
      ).find(Boolean);
      if (gone) throw new Error(`chunk ${gone} disappeared from ${dir.where} while this checkpoint was written`);
    }
  }

  /**
   * Create the directory (recording ARCH as its creator) or take it over for
   * `owner`. An existing directory without a record is taken only when it
   * holds nothing but ARCH's own entries (a checkpoint made before records
   * existed): anything else is not ARCH's to write into, or later to remove.
   */
  protected async claim(owner: StoreOwner | undefined): Promise<void> {
    const held = (await this.holdOwned(true))!;
    try {
      const now = new Date().toISOString();
      const base = owner ?? { namespace: '?', key: path.basename(this.containerDir), containerId: '?', node: '?' };
      if (held.created) {
        await held.writeRecord({ kind: 'checkpoint', ...base, createdByArch: true, createdAt: now });
      } else if (!held.record) {
        const foreign = (await held.entries()).filter((n) => !ARCH_ENTRY_RE.test(n));
        if (foreign.length > 0) {
          throw new ArchInputError(
            this.placeField,
            `"${held.path}" exists and is not an ARCH checkpoint directory (it holds ${foreign.slice(0, 3).join(', ')})`,
            'point it at a directory of its own that ARCH creates (a new path, or remove that directory)',
          );
        }
        await held.writeRecord({ kind: 'checkpoint', ...base, createdByArch: true, createdAt: now });
      } else if (
        owner &&
        (held.record.containerId !== owner.containerId || held.record.namespace !== owner.namespace)
      ) {
        // The same job in a new container (ARCH_CHECKPOINT_ID): it holds the checkpoint from now on.
        await held.writeRecord({ ...held.record, containerId: owner.containerId, node: owner.node });
      }
    } finally {
      await held.close();
    }
  }

  /** `fn` in this container's directory (held without symlinks when guarded); `absent` when it is not there. */
  private async inDir<T>(absent: T, fn: (dir: string) => Promise<T>): Promise<T> {
    if (!this.guard) return fn(this.containerDir);
    const held = await this.hold(false);
    if (!held) return absent;
    try {
      return await fn(held.fdPath);
    } finally {
      await held.close();
    }
  }

  /** `fn` in this container's directory, made (and, when guarded, recorded as `owner`'s) first if needed. */
  private async inMadeDir<T>(owner: StoreOwner, fn: (dir: string) => Promise<T>): Promise<T> {
    if (!this.guard) {
      await fsp.mkdir(this.containerDir, { recursive: true, mode: 0o700 });
      return fn(this.containerDir);
    }
    await this.claim(owner);
    const held = (await this.hold(false))!;
    try {
      return await fn(held.fdPath);
    } finally {
      await held.close();
    }
  }

  /** The lease's text (core/lease.ts), undefined when there is none. */
  async readLease(): Promise<string | undefined> {
    // Like a manifest: not through a symlink, a regular file only (a FIFO would hang a create), and small.
    return this.inDir(undefined, async (dir) =>
      (await readSmallFile(path.join(dir, LEASE_FILE), MAX_LEASE_BYTES))?.toString('utf8'),
    );
  }

  /** Replace the lease atomically (a reader sees the old one or the new one), creating the directory if needed. */
  async writeLease(text: string, owner: StoreOwner): Promise<void> {
    await this.inMadeDir(owner, async (dir) => {
      const tmp = path.join(dir, `.lease-${process.pid}-${randomBytes(4).toString('hex')}`);
      try {
        await fsp.writeFile(tmp, text, { mode: 0o600, flag: 'wx' });
        await fsp.rename(tmp, path.join(dir, LEASE_FILE));
      } catch (err) {
        await fsp.rm(tmp, { force: true }).catch(() => undefined);
        throw err;
      }
    });
  }

  /**
   * Claim generation `generation` of the lease: made with O_CREAT|O_EXCL, so
   * of two nodes claiming it at once exactly one gets it (see core/lease.ts).
   * Returns undefined when this call made it, else the claim's text (whoever
   * made it; empty if it died between create and write). Claims older than
   * the one before this are removed.
   */
  async claimLease(generation: number, text: string, owner: StoreOwner): Promise<string | undefined> {
    return this.inMadeDir(owner, async (dir) => {
      const file = path.join(dir, leaseClaimFile(generation));
      try {
        await fsp.writeFile(file, text, { mode: 0o600, flag: 'wx' });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        // The winner creates the claim, then writes it: read it again briefly while it is empty, so
        // that the refusal names the winner (still empty after that: a claimer that died in between).
        for (let i = 0; ; i++) {
          const got = (await readSmallFile(file, MAX_LEASE_BYTES).catch(() => undefined))?.toString('utf8') ?? '';
          if (got || i >= CLAIM_READ_TRIES) return got;
          await sleep(5);
        }
      }
      for (const n of staleLeaseClaims(await fsp.readdir(dir), generation))
        await fsp.rm(path.join(dir, n), { force: true }).catch(() => undefined);
      return undefined;
    });
  }

  /** Give up a claim this node made but never used (the job did not start here). */
  async releaseLeaseClaim(generation: number): Promise<void> {
    await this.inDir(undefined, (dir) => fsp.rm(path.join(dir, leaseClaimFile(generation)), { force: true }));
  }

  /** Record that `owner` holds this checkpoint now (a container restored from it). */
  async takeOver(owner: StoreOwner): Promise<void> {
    if (!this.owned) return;
    const held = await this.holdOwned(false);
    if (!held) return;
    try {
      if (held.record && held.record.containerId !== owner.containerId)
        await held.writeRecord({ ...held.record, containerId: owner.containerId, node: owner.node });
    } finally {
      await held.close();
    }
  }

  /**
   * Remove every checkpoint of this container (after a clean exit). With a
   * guard, only when ARCH created the directory and its record names
   * `namespace`/`id`; otherwise it stays and the reason is returned.
   */
  async remove(holder?: { namespace: string; id: string }): Promise<{ removed: boolean; why?: string }> {
    if (!this.owned) {
      await fsp.rm(this.containerDir, { recursive: true, force: true });
      return { removed: true };
    }
    const held = await this.holdOwned(false);
    if (!held) return { removed: false, why: 'it does not exist' };
    try {
      const may = mayRemove(held.record, 'checkpoint', holder?.namespace ?? '', holder?.id ?? '');
      if (!may.ok) return { removed: false, why: may.why };
      await held.removeAll();
      return { removed: true };
    } finally {
      await held.close();
    }
  }

  /** Staging dirs of processes that died mid-checkpoint (the live ones are left alone). */
  private async removeDeadStagings(): Promise<void> {
    for (const name of await fsp.readdir(this.containerDir)) {
      if (!name.startsWith(STAGING_PREFIX)) continue;
      const pid = Number(name.slice(STAGING_PREFIX.length).split('-')[0]);
      if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) continue;
      await fsp.rm(path.join(this.containerDir, name), { recursive: true, force: true });
    }
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync every file (in parallel: the kernel merges the writeback) and then the directories. */
async function fsyncTree(dir: string): Promise<void> {
  const dirs: string[] = [];
  const files: string[] = [];
  async function walk(d: string): Promise<void> {
    dirs.push(d);
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(path.join(d, e.name));
      else files.push(path.join(d, e.name));
    }
  }
  await walk(dir);
  await Promise.all(
    files.map(async (f) => {
      const fh = await fsp.open(f, 'r');
      try {
        await fh.datasync();
      } finally {
        await fh.close();
      }
    }),
  );
  for (const d of dirs.reverse()) await fsyncDir(d);
}
