import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chunkIdOf, chunkKeysOf, decodeChunk, encodeChunk } from '../../core/chunk-codec.js';
import { ChunkDir } from '../../core/chunk-dir.js';
import { assembleChunked, CHUNK_BYTES, storeChunked } from '../../core/chunked-files.js';
import { CHUNKED_FORMAT_VERSION, parseManifest, type Manifest } from '../../core/manifest.js';
import { parseStoreKey } from '../../core/seal.js';
import { loadSettings } from '../../core/settings.js';
import { checkpointUnusable, inputError } from '../support/input-error.js';

/** Store format 2's pieces on real bytes and a real directory: the codec, the chunk directory, split and assemble, the manifest rules. */

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-chunks-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const keys = chunkKeysOf(parseStoreKey(randomBytes(32).toString('hex'), 'test'));

/** Half random (incompressible), half a repeated pattern (compressible), like a page image. */
function pageLike(bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  randomBytes(bytes >> 1).copy(b);
  for (let i = bytes >> 1; i < bytes; i++) b[i] = i % 7;
  return b;
}

describe('codec', () => {
  const plain = pageLike(CHUNK_BYTES);

  test('without a key: id is sha256 of the plain bytes, stored is a zstd frame that gives them back', () => {
    const id = chunkIdOf(plain);
    expect(id).toBe(sha(plain));
    const stored = encodeChunk(plain, id);
    expect(stored.length).toBeLessThan(plain.length * 0.6);
    expect(decodeChunk(stored, id, plain.length, 'c').equals(plain)).toBe(true);
  });

  test('with a key: the id is not the sha256, the stored bytes hold no plaintext, and it opens only under its id', async () => {
    const id = chunkIdOf(plain, keys);
    expect(id).not.toBe(sha(plain));
    const stored = encodeChunk(plain, id, keys);
    expect(stored.includes(plain.subarray(0, 64))).toBe(false);
    expect(decodeChunk(stored, id, plain.length, 'c', keys).equals(plain)).toBe(true);
    const other = chunkIdOf(pageLike(4096), keys);
    expect((await checkpointUnusable(() => decodeChunk(stored, other, plain.length, 'c', keys))).reason).toBe(
      'corrupt',
    );
    const otherKeys = chunkKeysOf(parseStoreKey(randomBytes(32).toString('hex'), 'test'));
    expect((await checkpointUnusable(() => decodeChunk(stored, id, plain.length, 'c', otherKeys))).reason).toBe(
      'corrupt',
    );
  });

  test.each([
    ['a flipped byte', (b: Buffer) => ((b[b.length >> 1] ^= 1), b)],
    ['cut short', (b: Buffer) => b.subarray(0, b.length - 10)],
    ['empty', () => Buffer.alloc(0)],
  ])('%s: corrupt, naming the chunk', async (_n, alter) => {
    for (const k of [undefined, keys]) {
      const id = chunkIdOf(plain, k);
      const stored = alter(Buffer.from(encodeChunk(plain, id, k)));
      const e = await checkpointUnusable(() => decodeChunk(stored, id, plain.length, 'criu/pages-1.img: chunk 1', k));
      expect(e.reason).toBe('corrupt');
      expect(e.message).toContain('criu/pages-1.img: chunk 1');
    }
  });

  test('a frame that holds more than the manifest says is refused, not decompressed past the size', async () => {
    const id = chunkIdOf(plain);
    const e = await checkpointUnusable(() => decodeChunk(encodeChunk(plain, id), id, 4096, 'c'));
    expect(e.reason).toBe('corrupt');
  });
});

describe('split and assemble', () => {
  test('round trip; a second store of the same bytes writes nothing new; one changed page writes one chunk', async () => {
    const src = path.join(tmp, 'src');
    fs.mkdirSync(path.join(src, 'criu'), { recursive: true });
    const pages = pageLike(5 * CHUNK_BYTES + 12345);
    fs.writeFileSync(path.join(src, 'criu/pages-1.img'), pages);
    fs.writeFileSync(path.join(src, 'rootfs-diff.tar'), Buffer.alloc(0));
    const store = new ChunkDir(path.join(tmp, 'store'));
    const rels = ['criu/pages-1.img', 'rootfs-diff.tar'];
    const first = await storeChunked(src, rels, store, { fsync: true });
    expect(first.stats).toMatchObject({ written: 7, reused: 0 });
    expect(first.files[0]!.chunks.map((c) => c.size)).toEqual([...Array(5).fill(CHUNK_BYTES), 12345]);
    expect(first.files[1]).toEqual({
      path: 'rootfs-diff.tar',
      size: 0,
      chunks: [{ id: sha(Buffer.alloc(0)), size: 0 }],
    });

    const again = await storeChunked(src, rels, store, { fsync: false });
    expect(again.stats).toMatchObject({ written: 0, bytes: 0, reused: 7 });

    pages.fill(9, 3 * CHUNK_BYTES + 4096, 3 * CHUNK_BYTES + 8192);
    fs.writeFileSync(path.join(src, 'criu/pages-1.img'), pages);
    const changed = await storeChunked(src, rels, store, { fsync: false });
    expect(changed.stats).toMatchObject({ written: 1, reused: 6 });

    const out = path.join(tmp, 'out');
    await assembleChunked(changed.files, store, out);
    expect(fs.readFileSync(path.join(out, 'criu/pages-1.img')).equals(pages)).toBe(true);
    expect(fs.statSync(path.join(out, 'rootfs-diff.tar')).size).toBe(0);
  });

  test('with a key: assembled again only with it; a missing chunk is named', async () => {
    const src = path.join(tmp, 'ksrc');
    fs.mkdirSync(src);
    const plain = pageLike(2 * CHUNK_BYTES + 1);
    fs.writeFileSync(path.join(src, 'rootfs-diff.tar'), plain);
    const store = new ChunkDir(path.join(tmp, 'kstore'));
    const r = await storeChunked(src, ['rootfs-diff.tar'], store, { fsync: false, keys });
    await assembleChunked(r.files, store, path.join(tmp, 'kout'), keys);
    expect(fs.readFileSync(path.join(tmp, 'kout/rootfs-diff.tar')).equals(plain)).toBe(true);

    fs.rmSync(store.pathOf(r.files[0]!.chunks[1]!.id));
    const e = await checkpointUnusable(assembleChunked(r.files, store, path.join(tmp, 'kout2'), keys));
    expect(e.reason).toBe('truncated');
    expect(e.message).toContain('rootfs-diff.tar: chunk 2 of 3');
  });
});

describe('manifest, format 3', () => {
  const base = (over: Partial<Manifest>): string =>
    JSON.stringify({
      formatVersion: CHUNKED_FORMAT_VERSION,
      namespace: 'default',
      containerId: 'j',
      node: 'n',
      createdAt: '2026-12-03T00:00:00.000Z',
      mode: 'local',
      leaveRunning: false,
      runtime: { runc: '1', criu: '4' },
      timingsMs: {},
      rootfs: { files: 0, bytes: 0, deletions: 0 },
      files: [],
      chunked: {
        alg: 'zstd',
        files: [{ path: 'criu/pages-1.img', size: 3, chunks: [{ id: 'a'.repeat(64), size: 3 }] }],
      },
      ...over,
    });

  test('parses', () => {
    expect(parseManifest(base({})).chunked!.files[0]!.size).toBe(3);
  });

  test.each([
    [
      'chunks not adding up',
      { chunked: { alg: 'zstd', files: [{ path: 'x', size: 4, chunks: [{ id: 'a'.repeat(64), size: 3 }] }] } },
      'manifest-invalid',
    ],
    ['no chunk list', { chunked: undefined }, 'manifest-invalid'],
    ['an unknown codec', { chunked: { alg: 'lz4', files: [] } }, 'format-unknown'],
    [
      'a path out of the directory',
      { chunked: { alg: 'zstd', files: [{ path: '../x', size: 0, chunks: [{ id: 'a'.repeat(64), size: 0 }] }] } },
      'manifest-invalid',
    ],
    ['a chunk list in version 1', { formatVersion: 1 }, 'manifest-invalid'],
    ['version 4', { formatVersion: 4 }, 'format-newer'],
  ])('%s is refused', async (_n, over, reason) => {
    expect((await checkpointUnusable(() => parseManifest(base(over as Partial<Manifest>)))).reason).toBe(reason);
  });
});

describe('ARCH_STORE_FORMAT', () => {
  test.each([
    [undefined, 1],
    ['1', 1],
    ['2', 2],
  ])('%s -> %s', (v, want) => {
    expect(loadSettings({ ARCH_CONFIG: '/dev/null', ARCH_STORE_FORMAT: v }).storeFormat).toBe(want);
  });

  test('anything else names the setting and the fix', () => {
    const e = inputError(() => loadSettings({ ARCH_CONFIG: '/dev/null', ARCH_STORE_FORMAT: 'v2' }));
    expect(e.field).toBe('ARCH_STORE_FORMAT');
    expect(e.message).toContain('set 1');
  });
});
