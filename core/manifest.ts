import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { digestFiles, type Digest } from './digest.js';
import { CheckpointUnusableError } from '../contract/errors.js';
import { SEAL_ALG, sealedSize } from './seal.js';
import { CHUNK_ALG } from './chunk-codec.js';
import { loadTrust, verifyManifestSignature, type Trust } from './trust.js';
import { MANIFEST_FILE, SIGNATURE_FILE } from './checkpoint-layout.js';
import { LINKS_NAME } from './closed-files.js';
import { isPlainRelativePath } from './paths.js';

/**
 * The manifest is what makes a checkpoint trustworthy: restore refuses any
 * image whose format it does not know or whose files do not match, byte for
 * byte, what the checkpointing node recorded.
 */
export const FORMAT_VERSION = 1;
/**
 * A checkpoint with sealed (encrypted) files, core/seal.ts. Its own version:
 * an ARCH before sealing would parse the manifest (unknown fields are
 * dropped) and hand ciphertext to CRIU; with 2 it says "format-newer,
 * upgrade ARCH" instead. Unsealed checkpoints stay version 1, so nodes not
 * yet upgraded keep restoring them.
 */
export const SEALED_FORMAT_VERSION = 2;
/**
 * Store format 2 (README "Checkpoint store v2"): the large files are chunks
 * in the container's chunk directory, listed under `chunked`. Its own
 * manifest version for the same reason as sealing's: an older ARCH says
 * "format-newer, upgrade ARCH" rather than looking for files that are not there.
 */
export const CHUNKED_FORMAT_VERSION = 3;
const NEWEST_FORMAT_VERSION = CHUNKED_FORMAT_VERSION;

/**
 * The schemas, built on first use: a listing (`arch-cli ls --local`) of
 * containers without checkpoints reads no manifest, and building them cost
 * every start that loads this module (the store's, the shim's) ~1-2 ms here.
 */
function buildSchemas() {
  const HEX64 = z.string().regex(/^[0-9a-f]{64}$/);
  /** A file the job held open for writing, and its size when it was stopped (core/work-files.ts). */
  const WorkFileEntry = z.object({
    path: z.string().refine(isPlainRelativePath, 'a plain relative path'),
    size: z.number().int().nonnegative(),
    ino: z.string().regex(/^\d{1,20}$/),
    append: z.boolean(),
    /** Rewritten in place (core/work-files.ts): its mtime then. */
    inPlace: z
      .object({ mtimeNs: z.string().regex(/^\d{1,25}$/) })
      .strict()
      .optional(),
    /** Its contents kept: where they start in kept-files.bin; its mode bits and owner, to make it again. */
    kept: z.number().int().nonnegative().optional(),
    mode: z.number().int().min(0).max(0o7777).optional(),
    uid: z.number().int().nonnegative().optional(),
    gid: z.number().int().nonnegative().optional(),
  });

  /** core/closed-files.ts: a file of the work dir or a volume the job did not hold open. */
  const ClosedFileEntry = z.object({
    path: z.string().refine(isPlainRelativePath, 'a plain relative path'),
    size: z.number().int().nonnegative(),
    ino: z.string().regex(/^\d{1,20}$/),
    tail: HEX64,
    mtimeNs: z
      .string()
      .regex(/^\d{1,24}$/)
      .optional(),
  });

  const FileEntry = z.object({
    path: z.string(),
    size: z.number().int().nonnegative(),
    sha256: HEX64,
  });

  /** How one file was sealed (core/seal.ts); `files` still lists its stored (ciphertext) size and sha256. */
  const SealedEntry = z.object({
    path: z.string(),
    alg: z.string(),
    keyId: z.string().regex(/^[0-9a-f]{16}$/),
    nonce: z.string().regex(/^[0-9a-f]{24}$/),
    chunkBytes: z
      .number()
      .int()
      .min(4096)
      .max(64 << 20),
    plainSize: z.number().int().nonnegative(),
  });

  const ChunkedFileEntry = z.object({
    path: z.string(),
    size: z.number().int().nonnegative(),
    chunks: z.array(z.object({ id: HEX64, size: z.number().int().nonnegative() })).min(1),
  });

  const ManifestSchema = z.object({
    formatVersion: z.number().int(),
    namespace: z.string(),
    containerId: z.string(),
    /** ARCH_CHECKPOINT_ID of the container, when it named its checkpoint (else the checkpoint is the container id's). */
    checkpointId: z.string().optional(),
    image: z.string().optional(),
    /**
     * Whose job this is, beyond the containerd namespace and the checkpoint's
     * name (core/owner.ts): a restore into a container with another pod
     * namespace or image is refused. null: not known when the checkpoint was
     * taken (no CRI annotations / containerd did not say). Absent in manifests
     * of ARCH before signing.
     */
    owner: z.object({ podNamespace: z.string().nullable(), image: z.string().nullable() }).optional(),
    /** The checkpointing node's CPU: architecture and instruction-set extensions (core/cpu-features.ts); absent before ARCH recorded it. */
    cpu: z
      .object({
        arch: z.string().regex(/^[a-z0-9_]{1,16}$/),
        // Names as /proc/cpuinfo spells them, bounded: they reach logs and workflow histories.
        features: z.array(z.string().regex(/^[a-z0-9_]{1,40}$/)).max(1024),
      })
      .optional(),
    node: z.string(),
    createdAt: z.string(),
    mode: z.enum(['local', 'shared', 's3']),
    leaveRunning: z.boolean(),
    /** networkLock: how CRIU locked the container's network during the dump (absent before ARCH recorded it). */
    runtime: z.object({ runc: z.string(), criu: z.string(), networkLock: z.string().optional() }),
    timingsMs: z.record(z.number()),
    /** How long the job was frozen by a checkpoint that left it running (absent before ARCH measured it, and for a stop). */
    freezeMs: z.number().nonnegative().optional(),
    rootfs: z.object({ files: z.number().int(), bytes: z.number().int(), deletions: z.number().int() }),
    /**
     * The files of the container's /dev/shm when it was a host directory bound in (a pod's): how many
     * DEVSHM_TAR holds and their bytes (core/dev-shm.ts). Absent when it was not, and before ARCH kept them.
     */
    devShm: z.object({ files: z.number().int().nonnegative(), bytes: z.number().int().nonnegative() }).optional(),
    /**
     * The pod's emptyDir volumes the container mounted (core/pod-volumes.ts), in the order of their
     * archives (volume-<index>.tar): where each was mounted, its entries and their bytes. Absent when
     * it mounted none, and before ARCH kept them.
     */
    volumes: z
      .array(
        z.object({
          destination: z.string().startsWith('/'),
          /** The pod's uid: a restore tells a new pod from the same one. */
          pod: z
            .string()
            .regex(/^[0-9a-fA-F-]{1,64}$/)
            .optional(),
          files: z.number().int().nonnegative(),
          bytes: z.number().int().nonnegative(),
        }),
      )
      .max(256)
      .optional(),
    /**
     * The pod's emptyDir volumes the container mounted that were not kept, being larger than the
     * node's ARCH_EMPTYDIR_MAX_BYTES: where each was mounted and its bytes then. Absent when none.
     */
    volumesLeft: z
      .array(z.object({ destination: z.string().startsWith('/'), bytes: z.number().int().nonnegative() }))
      .max(256)
      .optional(),
    /**
     * Shared mode: the files of the work directory the job held open for
     * writing, and their sizes, when it was stopped for the checkpoint
     * (core/work-files.ts: a restore cuts them back to these). Absent before ARCH recorded them.
     */
    workFiles: z.array(WorkFileEntry).max(100_000).optional(),
    /** The work dir's other files, which the job opens and closes (core/closed-files.ts). Absent when none. */
    closedWorkFiles: z.array(ClosedFileEntry).max(100_000).optional(),
    /** The work dir's directories, symlinks and other entries that are not regular files (core/closed-files.ts). */
    closedWorkNonFiles: z
      .array(z.string().refine(isPlainRelativePath, 'a plain relative path'))
      .max(100_000)
      .optional(),
    /** Where each of closedWorkFiles has a second name, at the top of the work dir (core/closed-files.ts). */
    closedWorkLinks: z.string().regex(LINKS_NAME).optional(),
    /** More entries in the work dir than closedWorkFiles and closedWorkNonFiles list (then nothing the lost run made is set aside). */
    closedWorkFilesMore: z.literal(true).optional(),
    /**
     * The same for the volumes the container named as its job's alone
     * (ARCH_ROLLBACK_VOLUMES, core/volume-files.ts): where each is mounted in
     * the container, and the files the job held open for writing there. Absent when none.
     */
    volumeFiles: z
      .array(
        z.object({
          destination: z.string().startsWith('/'),
          files: z.array(WorkFileEntry).max(100_000),
          closed: z.array(ClosedFileEntry).max(100_000).optional(),
          closedNonFiles: z
            .array(z.string().refine(isPlainRelativePath, 'a plain relative path'))
            .max(100_000)
            .optional(),
          closedMore: z.literal(true).optional(),
          closedLinks: z.string().regex(LINKS_NAME).optional(),
        }),
      )
      .max(32)
      .optional(),
    files: z.array(FileEntry),
    /** Present exactly in SEALED_FORMAT_VERSION manifests: the random id every chunk is bound to, and each sealed file. */
    seal: z.object({ id: z.string().regex(/^[0-9a-f]{32}$/), files: z.array(SealedEntry).min(1) }).optional(),
    /**
     * Present exactly in CHUNKED_FORMAT_VERSION manifests: the files stored as
     * chunks (not in `files`), each chunk's id and plain size in file order.
     * `keyId`: the store key that encrypts the chunks and keys their ids (absent: plain zstd, ids are sha256).
     */
    chunked: z
      .object({
        alg: z.string(),
        keyId: z
          .string()
          .regex(/^[0-9a-f]{16}$/)
          .optional(),
        files: z.array(ChunkedFileEntry),
      })
      .optional(),
  });
  return { FileEntry, ManifestSchema };
}
let schemas: ReturnType<typeof buildSchemas> | undefined;
const manifestSchema = () => (schemas ??= buildSchemas()).ManifestSchema;

export type FileEntry = z.infer<ReturnType<typeof buildSchemas>['FileEntry']>;
export type Manifest = z.infer<ReturnType<typeof buildSchemas>['ManifestSchema']>;

/** Parse without trusting: newer formats and malformed fields are refused. */
export function parseManifest(text: string): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CheckpointUnusableError('manifest-corrupt', `manifest.json is not JSON: ${(err as Error).message}`);
  }
  const version = (raw as { formatVersion?: unknown } | null)?.formatVersion;
  if (typeof version === 'number' && version > NEWEST_FORMAT_VERSION) {
    throw new CheckpointUnusableError(
      'format-newer',
      `format version ${version} is newer than this ARCH supports (${NEWEST_FORMAT_VERSION}); upgrade ARCH on this node`,
    );
  }
  const parsed = manifestSchema().safeParse(raw);
  if (!parsed.success) {
    throw new CheckpointUnusableError(
      'manifest-invalid',
      parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '),
    );
  }
  if (![FORMAT_VERSION, SEALED_FORMAT_VERSION, CHUNKED_FORMAT_VERSION].includes(parsed.data.formatVersion)) {
    throw new CheckpointUnusableError(
      'format-unknown',
      `format version ${parsed.data.formatVersion} is not ${FORMAT_VERSION}, ${SEALED_FORMAT_VERSION} or ${CHUNKED_FORMAT_VERSION}`,
    );
  }
  for (const f of [...parsed.data.files, ...(parsed.data.chunked?.files ?? [])]) {
    if (
      path.isAbsolute(f.path) ||
      f.path.split('/').includes('..') ||
      f.path === MANIFEST_FILE ||
      f.path === SIGNATURE_FILE
    ) {
      throw new CheckpointUnusableError('manifest-invalid', `file entry "${f.path}" is not a plain relative path`);
    }
  }
  checkSeal(parsed.data);
  checkChunked(parsed.data);
  return parsed.data;
}

/** Chunks only in a version-3 manifest (always there), a known codec, each file once, its chunks adding up to its size. */
function checkChunked(m: Manifest): void {
  const chunked = m.formatVersion === CHUNKED_FORMAT_VERSION;
  if (chunked !== !!m.chunked) {
    throw new CheckpointUnusableError(
      'manifest-invalid',
      chunked
        ? `format version ${m.formatVersion} without a chunk list`
        : `format version ${m.formatVersion} with chunks`,
    );
  }
  if (!m.chunked) return;
  if (m.chunked.alg !== CHUNK_ALG)
    throw new CheckpointUnusableError(
      'format-unknown',
      `chunks are stored as "${m.chunked.alg}", which this ARCH does not know (it knows ${CHUNK_ALG}); upgrade ARCH on this node`,
    );
  const seen = new Set(m.files.map((f) => f.path));
  for (const f of m.chunked.files) {
    if (seen.has(f.path))
      throw new CheckpointUnusableError('manifest-invalid', `chunked file "${f.path}" is listed twice`);
    seen.add(f.path);
    if (f.chunks.reduce((a, c) => a + c.size, 0) !== f.size)
      throw new CheckpointUnusableError(
        'manifest-invalid',
        `chunked file "${f.path}": its chunks do not add up to ${f.size} bytes`,
      );
  }
}

/**
 * A seal must be what this ARCH writes: only in a version-2 manifest (and
 * always there), a known algorithm, each sealed file listed once in `files`
 * with the stored size its plaintext size implies.
 */
function checkSeal(m: Manifest): void {
  const sealed = m.formatVersion === SEALED_FORMAT_VERSION;
  // Version 3 encrypts chunk by chunk (chunk-codec.ts), never whole files.
  if (sealed !== !!m.seal) {
    throw new CheckpointUnusableError(
      'manifest-invalid',
      sealed ? `format version ${m.formatVersion} without a seal` : `format version ${m.formatVersion} with a seal`,
    );
  }
  if (!m.seal) return;
  const seen = new Set<string>();
  for (const s of m.seal.files) {
    if (s.alg !== SEAL_ALG) {
      throw new CheckpointUnusableError(
        'seal-unknown',
        `${s.path} is sealed with "${s.alg}", which this ARCH does not know (it knows ${SEAL_ALG}); upgrade ARCH on this node`,
      );
    }
    const f = m.files.find((x) => x.path === s.path);
    if (!f || seen.has(s.path))
      throw new CheckpointUnusableError('manifest-invalid', `sealed file "${s.path}" is not listed once in files`);
    seen.add(s.path);
    if (f.size !== sealedSize(s.plainSize, s.chunkBytes)) {
      throw new CheckpointUnusableError(
        'manifest-invalid',
        `sealed file "${s.path}": stored size ${f.size} does not fit its plaintext size ${s.plainSize}`,
      );
    }
  }
}

/** Every regular file below dir (relative paths, sorted), except the manifest and its signature. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    for (const e of await fsp.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile() && r !== MANIFEST_FILE && r !== SIGNATURE_FILE) out.push(r);
      else if (!e.isFile())
        throw new CheckpointUnusableError('unexpected-file', `${r} is not a regular file or directory`);
    }
  }
  await walk('');
  return out.sort();
}

/** Size and sha256 of every file; `known` holds digests already computed (followed while written). */
export async function describeFiles(
  dir: string,
  files: string[],
  known: Map<string, Digest> = new Map(),
): Promise<FileEntry[]> {
  const todo = files.filter((f) => !known.has(f));
  const digests = await digestFiles(todo.map((f) => path.join(dir, f)));
  const computed = new Map(todo.map((f, i) => [f, digests[i]!]));
  return files.map((f) => ({ path: f, ...(known.get(f) ?? computed.get(f)!) }));
}

/**
 * Verify a checkpoint directory against its manifest: exactly the listed
 * files, each with the recorded size and sha256. Throws CheckpointUnusableError.
 */
export async function verifyCheckpointDir(dir: string): Promise<Manifest> {
  const { manifest, verifyDeferred } = await verifyCheckpointDirStaged(dir);
  await verifyDeferred();
  return manifest;
}

/**
 * The same check in two stages: everything is verified before this
 * resolves except the digests of the files matching `defer` (sizes are
 * checked for those too), which `verifyDeferred()` checks when the caller
 * is ready for it: for raw bytes that may be loaded before they are known
 * good but must not be acted on until then (CRIU's page images, restored
 * into stopped processes, hashed while CRIU reads them). It starts the work
 * on its first call and returns the same promise after; a caller that gives
 * up before calling it leaves nothing running.
 */
export async function verifyCheckpointDirStaged(
  dir: string,
  opts: {
    defer?: RegExp;
    trust?: Trust;
    /**
     * The directory is a chunked checkpoint assembled by restore
     * (chunked-files.ts): its chunked files are there too, their sizes are
     * checked here and their contents were checked chunk by chunk as written.
     */
    assembled?: boolean;
    /**
     * Of an assembled checkpoint, the chunked files still being assembled
     * (the page images, behind CRIU's gate): not looked for here; their
     * chunks are checked as they are written, their sizes add up to the
     * manifest's (parseManifest).
     */
    assembledLater?: RegExp;
  } = {},
): Promise<{ manifest: Manifest; signer: string; verifyDeferred: () => Promise<void> }> {
  // The signature first: nothing in the manifest is believed (not even its
  // file list) before a trusted key is known to have signed these bytes.
  const trust = opts.trust ?? loadTrust();
  const bytes = await readSmallFile(path.join(dir, MANIFEST_FILE), MAX_MANIFEST_BYTES);
  if (!bytes) throw new CheckpointUnusableError('manifest-missing', `${dir} has no ${MANIFEST_FILE}`);
  const sig = await readSmallFile(path.join(dir, SIGNATURE_FILE), MAX_SIGNATURE_BYTES);
  const signer = verifyManifestSignature(bytes, sig?.toString('utf8'), trust);
  const manifest = parseManifest(bytes.toString('utf8'));
  const present = await listFiles(dir);
  const chunked = opts.assembled ? (manifest.chunked?.files ?? []) : [];
  const whole = chunked.filter((f) => !opts.assembledLater?.test(f.path));
  // Still being written (`.part`) or written already: either way not judged here.
  const pending = chunked.filter((f) => !whole.includes(f)).flatMap((f) => [f.path, `${f.path}.part`]);
  const listed = [...manifest.files, ...whole].map((f) => f.path).sort();
  const extra = present.filter((p) => !listed.includes(p) && !pending.includes(p));
  const missing = listed.filter((p) => !present.includes(p));
  if (missing.length)
    throw new CheckpointUnusableError('truncated', `missing files: ${missing.slice(0, 5).join(', ')}`);
  if (extra.length)
    throw new CheckpointUnusableError('unexpected-file', `files not in the manifest: ${extra.slice(0, 5).join(', ')}`);
  // Sizes first (cheap, catches truncation), then the digests.
  for (const f of [...manifest.files, ...whole]) {
    const st = await fsp.stat(path.join(dir, f.path));
    if (st.size !== f.size)
      throw new CheckpointUnusableError('truncated', `${f.path}: ${st.size} bytes, manifest says ${f.size}`);
  }
  const later = manifest.files.filter((f) => opts.defer?.test(f.path));
  const now = manifest.files.filter((f) => !later.includes(f));
  await verifyDigests(dir, now);
  let deferred: Promise<void> | undefined;
  return { manifest, signer, verifyDeferred: () => (deferred ??= verifyDigests(dir, later)) };
}

/** Far above any real manifest (about 100 bytes a file), far below what would hurt to read. */
export const MAX_MANIFEST_BYTES = 64 << 20;
export const MAX_SIGNATURE_BYTES = 4096;

/**
 * A regular file's bytes, refused above `limit`; undefined when absent. Not
 * through a symlink (O_NOFOLLOW), and the size is that of the open file:
 * the store is written by others, and a link to /dev/zero or a huge file
 * must not be read before it is refused.
 */
export async function readSmallFile(file: string, limit: number): Promise<Buffer | undefined> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CheckpointUnusableError('unexpected-file', `${path.basename(file)}: ${(err as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile())
      throw new CheckpointUnusableError('unexpected-file', `${path.basename(file)} is not a regular file`);
    if (st.size > limit)
      throw new CheckpointUnusableError(
        'manifest-invalid',
        `${path.basename(file)} is ${st.size} bytes, more than ${limit}`,
      );
    const buf = Buffer.alloc(st.size);
    const { bytesRead } = await fh.read(buf, 0, st.size, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Every file's sha256 (large files on worker threads in parallel). Any mismatch throws. */
async function verifyDigests(dir: string, files: FileEntry[]): Promise<void> {
  if (files.length === 0) return;
  const got = await digestFiles(
    files.map((f) => path.join(dir, f.path)),
    { sizes: files.map((f) => f.size) },
  );
  files.forEach((f, i) => {
    if (got[i]!.sha256 !== f.sha256) throw new CheckpointUnusableError('corrupt', `${f.path}: sha256 mismatch`);
  });
}
