import fsp from 'node:fs/promises';
import path from 'node:path';
import { CheckpointUnusableError, errorMessage } from '../contract/errors.js';
import { MANIFEST_FILE, PAGE_IMAGE_PATH, SIGNATURE_FILE } from './checkpoint-layout.js';
import { chunkKeysOf, type ChunkKeys } from './chunk-codec.js';
import { assembleChunked, type ChunkedFile } from './chunked-files.js';
import { MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, parseManifest, readSmallFile } from './manifest.js';
import { makeScratch, storeKeyLookup, type Scratch } from './seal.js';
import type { CheckpointStore } from './store.js';
import { verifyManifestSignature, type Trust } from './trust.js';

/**
 * Store format 2 on restore: a chunked checkpoint is assembled, as a whole
 * v1-shaped directory, in a tmpfs scratch dir (plaintext never goes to a
 * disk, and CRIU reads its page images from memory), and the restore goes
 * on from there as from any checkpoint directory (verified again with
 * `assembled`). Undefined for a checkpoint of another format: restore reads
 * that one in place, as before.
 *
 * `deferPages`: the page images (most of the bytes) are left out, for
 * `assemblePages` to write while runc and CRIU start, CRIU held at its gate
 * (core/seal-gate.ts) until every chunk of them is written and checked.
 *
 * The signature is checked before the chunk list is believed, and the exact
 * bytes checked are the ones copied; every chunk is checked against its id
 * from that list before it is written (chunked-files.ts). A missing or bad
 * chunk is a CheckpointUnusableError: the container starts fresh with that
 * reason, nothing of the checkpoint having run.
 */
export interface AssembledCheckpoint {
  dir: string;
  /**
   * `deferPages`: start writing the page images (under `.part` names,
   * renamed once every chunk is checked) until `signal` stops them; resolves
   * when they are written. Held in `held.assembling` too, for the restore to
   * wait for before its scratch dir goes, however it ends.
   */
  assemblePages?: (signal: AbortSignal) => Promise<void>;
}

export async function assembleIfChunked(
  stored: string,
  store: CheckpointStore,
  trust: Trust,
  settings: { configFile: string },
  held: { scratch?: Scratch; assembling?: Promise<void> },
  deferPages: boolean,
): Promise<AssembledCheckpoint | undefined> {
  const bytes = await readSmallFile(path.join(stored, MANIFEST_FILE), MAX_MANIFEST_BYTES);
  if (!bytes) return undefined; // the verification that follows says so
  const sig = await readSmallFile(path.join(stored, SIGNATURE_FILE), MAX_SIGNATURE_BYTES);
  verifyManifestSignature(bytes, sig?.toString('utf8'), trust);
  const manifest = parseManifest(bytes.toString('utf8'));
  if (!manifest.chunked) return undefined;
  const keys = manifest.chunked.keyId ? chunkKeysFor(manifest.chunked.keyId, settings) : undefined;
  const need = [...manifest.files, ...manifest.chunked.files].reduce((a, f) => a + f.size, 0) + (16 << 20);
  try {
    held.scratch = await makeScratch(need);
  } catch (err) {
    throw new CheckpointUnusableError('scratch', errorMessage(err));
  }
  const dir = held.scratch.dir;
  const later = (f: ChunkedFile) => deferPages && PAGE_IMAGE_PATH.test(f.path);
  const chunks = store.chunkDir();
  await fsp.writeFile(path.join(dir, MANIFEST_FILE), bytes, { mode: 0o600 });
  if (sig) await fsp.writeFile(path.join(dir, SIGNATURE_FILE), sig, { mode: 0o600 });
  for (const f of manifest.files) {
    await fsp.mkdir(path.dirname(path.join(dir, f.path)), { recursive: true, mode: 0o700 });
    await fsp.copyFile(path.join(stored, f.path), path.join(dir, f.path)).catch((err: unknown) => {
      throw new CheckpointUnusableError('truncated', `${f.path}: ${errorMessage(err)}`);
    });
  }
  await assembleChunked(
    manifest.chunked.files.filter((f) => !later(f)),
    chunks,
    dir,
    keys,
    SHIM_ASSEMBLY,
  );
  const pages = manifest.chunked.files.filter(later);
  if (pages.length === 0) return { dir };
  const assemblePages = (signal: AbortSignal): Promise<void> =>
    (held.assembling = assembleChunked(pages, chunks, dir, keys, { ...SHIM_ASSEMBLY, partial: true, signal }));
  return { dir, assemblePages };
}

/**
 * On this thread: measured in the shim on 2 cores, worker threads (their
 * start-up, and their competition with runc and CRIU for the cores) made
 * the restore slower than decoding here (README "Checkpoint store v2").
 */
const SHIM_ASSEMBLY = { workers: 0 };
function chunkKeysFor(keyId: string, settings: { configFile: string }): ChunkKeys {
  return chunkKeysOf(storeKeyLookup(settings)({ keyId }));
}
