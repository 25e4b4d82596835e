import { createHash, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as ZstdBinding from 'zstd-napi/binding.js';
import { CheckpointUnusableError } from '../contract/errors.js';
import { openChunk, sealChunk, type StoreKey } from './seal.js';

/**
 * One chunk of a large checkpoint file as the v2 store holds it: its id
 * names the plain bytes, its stored bytes are the zstd frame of them
 * (encrypted when the node has a store key).
 *
 * Ids: sha256 of the plain bytes without a store key. With one, an HMAC-SHA256
 * under a key derived from the store key: a bare hash would let anyone who
 * can list the store confirm a guess of a page's contents (a known binary, a
 * zeroed buffer), and equal ids across containers would say which memory they
 * share. Without the key the id says nothing; with it, dedup works as before
 * (the same plain bytes give the same id under the same key).
 *
 * Encrypted chunks: [12-byte random nonce][AES-256-GCM ciphertext][tag]
 * (seal.ts's primitive), with the id as AAD, so a chunk cannot be served
 * under another id. Random nonces: the same (key, nonce) pair is not
 * expected below 2^32 chunks per key, which key rotation (a new first line in
 * ARCH_STORE_KEY_FILE) keeps far away.
 */

/** Fastest level: page images are either incompressible (random data) or very compressible (zeros, repeated structures); higher levels gain little there. */
const ZSTD_LEVEL = 1;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const ID_RE = /^[0-9a-f]{64}$/;

export const CHUNK_ALG = 'zstd';

export interface ChunkKeys {
  /** Encrypts (and names, through a derived key) every chunk. */
  key: StoreKey;
  idKey: Buffer;
}

export function chunkKeysOf(key: StoreKey): ChunkKeys {
  return { key, idKey: Buffer.from(hkdfSync('sha256', key.key, Buffer.alloc(0), 'arch-chunk-id-v1', 32)) };
}

export function isChunkId(s: string): boolean {
  return ID_RE.test(s);
}

export function chunkIdOf(plain: Uint8Array, keys?: ChunkKeys): string {
  return (keys ? createHmac('sha256', keys.idKey) : createHash('sha256')).update(plain).digest('hex');
}

const requireHere = createRequire(import.meta.url);

/**
 * libzstd (zstd-napi's low-level binding: decompression into a buffer of the
 * size the signed manifest says, never more, since a frame from the store is
 * untrusted). Loaded on first use: a native addon cannot be part of the
 * shim's start-up snapshot, and most shim calls never touch a chunk.
 */
let codec: { zstd: typeof ZstdBinding; cctx: ZstdBinding.CCtx; dctx: ZstdBinding.DCtx } | undefined;
function zstdCodec(): NonNullable<typeof codec> {
  if (!codec) {
    const zstd = requireHere('zstd-napi/binding') as typeof ZstdBinding;
    const cctx = new zstd.CCtx();
    cctx.setParameter(zstd.CParameter.compressionLevel, ZSTD_LEVEL);
    codec = { zstd, cctx, dctx: new zstd.DCtx() };
  }
  return codec;
}

let frameBuf: Buffer | undefined;

/**
 * The bytes the store keeps for `plain`, whose id is `id`. `borrowed`: the
 * result may be this thread's reused buffer, valid until the next call (for
 * a caller that writes it out at once).
 */
export function encodeChunk(plain: Uint8Array, id: string, keys?: ChunkKeys, borrowed = false): Buffer {
  const { zstd, cctx } = zstdCodec();
  const bound = zstd.compressBound(plain.length);
  // One output buffer per thread, reused: a fresh megabyte per chunk costs more in page faults than zstd spends.
  if (!frameBuf || frameBuf.length < bound) frameBuf = Buffer.allocUnsafe(bound);
  const frame = frameBuf.subarray(0, cctx.compress2(frameBuf, plain));
  if (!keys) return borrowed ? frame : Buffer.from(frame);
  const nonce = randomBytes(NONCE_BYTES);
  return Buffer.concat([nonce, ...sealChunk(keys.key.key, nonce, aad(id), frame)]);
}

/**
 * The plain bytes of a stored chunk, checked: authenticated (encrypted),
 * decompressed into exactly `size` bytes, and named `id` by its digest.
 * Anything else is a CheckpointUnusableError('corrupt') naming `what`.
 */
export function decodeChunk(
  stored: Buffer,
  id: string,
  size: number,
  what: string,
  keys?: ChunkKeys,
  /** Where to decompress (reused by the caller), at least `size` bytes; else a new buffer. */
  into?: Buffer,
): Buffer {
  let frame: Buffer = stored;
  if (keys) {
    if (stored.length < NONCE_BYTES + TAG_BYTES)
      throw new CheckpointUnusableError('corrupt', `${what}: ${stored.length} bytes, too short to be a sealed chunk`);
    frame = Buffer.concat(
      openChunk(keys.key.key, stored.subarray(0, NONCE_BYTES), aad(id), stored.subarray(NONCE_BYTES), what),
    );
  }
  const plain = into && into.length >= size ? into.subarray(0, size) : Buffer.allocUnsafe(size);
  let n: number;
  try {
    n = zstdCodec().dctx.decompress(plain, frame);
  } catch (err) {
    throw new CheckpointUnusableError(
      'corrupt',
      `${what}: not a zstd frame of ${size} bytes (${(err as Error).message})`,
    );
  }
  if (n !== size) throw new CheckpointUnusableError('corrupt', `${what}: ${n} bytes after decompression, not ${size}`);
  if (chunkIdOf(plain, keys) !== id) throw new CheckpointUnusableError('corrupt', `${what}: digest mismatch`);
  return plain;
}

function aad(id: string): Buffer {
  return Buffer.from(`arch-chunk-v1\0${id}`);
}
