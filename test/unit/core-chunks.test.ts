import { createHash, randomBytes } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chunkIdOf, chunkKeysOf, decodeChunk, encodeChunk } from '../../core/chunk-codec.js';
import { ChunkDir, CHUNKS_DIR, COLLECTED_MARK } from '../../core/chunk-dir.js';
import { assembleChunked, CHUNK_BYTES, ChunkFollower, ChunkWriter, storeChunked } from '../../core/chunked-files.js';
import { ChunkPool } from '../../core/chunk-pool.js';
import { CHUNKED_FORMAT_VERSION, parseManifest, type Manifest } from '../../core/manifest.js';
import { parseStoreKey } from '../../core/seal.js';
import { loadSettings } from '../../core/settings.js';
import { checkpointUnusable, inputError } from '../support/input-error.js';
import { collect } from '../../core/chunk-gc.js';

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
  test('a symlink planted in the store for chunks/ or a chunk subdirectory is not followed: nothing written, read or listed outside', async () => {
    const outside = path.join(tmp, 'outside');
    fs.mkdirSync(outside);
    const id = sha(Buffer.from('x'));
    // chunks/<2 hex> as a symlink to a directory outside the store
    const a = path.join(tmp, 'sym-sub');
    fs.mkdirSync(path.join(a, 'chunks'), { recursive: true });
    fs.symlinkSync(outside, path.join(a, 'chunks', id.slice(0, 2)));
    fs.writeFileSync(path.join(outside, id), 'planted');
    const sub = new ChunkDir(a);
    await expect(sub.put(id, Buffer.from('x'), false)).rejects.toThrow(/not a directory/);
    await expect(sub.get(id)).rejects.toThrow(/not a directory/);
    expect(await sub.list()).toEqual([]);
    // chunks/ itself as a symlink
    const b = path.join(tmp, 'sym-top');
    fs.mkdirSync(b);
    fs.symlinkSync(outside, path.join(b, 'chunks'));
    const top = new ChunkDir(b);
    await expect(top.put(id, Buffer.from('x'), false)).rejects.toThrow(/not a directory/);
    await expect(top.list()).rejects.toThrow(/not a directory/);
    expect(fs.readdirSync(outside)).toEqual([id]);
    expect(fs.readFileSync(path.join(outside, id), 'utf8')).toBe('planted');
  });

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

describe('chunked while written (the dump)', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  test('files written a piece at a time while followed: the same chunks as chunking them afterwards, each new chunk written once; a rewritten file is chunked again at the end', async () => {
    const src = path.join(tmp, 'fsrc');
    fs.mkdirSync(path.join(src, 'criu'), { recursive: true });
    const a = pageLike(4 * CHUNK_BYTES + 777);
    // b repeats a's first chunk: stored once.
    const b = Buffer.concat([a.subarray(0, CHUNK_BYTES), pageLike(CHUNK_BYTES + 5)]);
    const c = pageLike(2 * CHUNK_BYTES);
    const store = new ChunkDir(path.join(tmp, 'fstore'));
    const pool = new ChunkPool(keys);
    try {
      const follower = new ChunkFollower(
        path.join(src, 'criu'),
        /^pages-\d+\.img$/,
        'criu/',
        new ChunkWriter(store, pool, true),
      );
      const writeSlowly = async (name: string, bytes: Buffer) => {
        const fd = fs.openSync(path.join(src, 'criu', name), 'w');
        for (let o = 0; o < bytes.length; o += 300_000) {
          fs.writeSync(fd, bytes, o, Math.min(300_000, bytes.length - o));
          await sleep(3);
        }
        fs.closeSync(fd);
      };
      await writeSlowly('pages-1.img', a);
      await writeSlowly('pages-2.img', b);
      await writeSlowly('pages-3.img', pageLike(3 * CHUNK_BYTES));
      await sleep(200); // followed this far...
      fs.writeFileSync(path.join(src, 'criu/pages-3.img'), c); // ...then rewritten shorter
      fs.writeFileSync(path.join(src, 'criu/other.img'), 'not a page image');
      fs.writeFileSync(path.join(src, 'rootfs-diff.tar'), 'layer');
      const rels = ['criu/pages-1.img', 'criu/pages-2.img', 'criu/pages-3.img', 'rootfs-diff.tar'];
      const followed = await storeChunked(src, rels, store, { fsync: true, keys, follower });
      const after = await storeChunked(src, rels, new ChunkDir(path.join(tmp, 'fstore2')), { fsync: false, keys });
      expect(followed.files).toEqual(after.files);
      expect(after.stats.written).toBe(5 + 2 + 2 + 1);
      // pages-3.img's first, longer version left chunks of its own; the rest exactly once.
      expect(followed.stats.written).toBeGreaterThanOrEqual(after.stats.written);
      expect(followed.stats.reused).toBe(0);
      const out = path.join(tmp, 'fout');
      await assembleChunked(followed.files, store, out, keys);
      for (const [rel, want] of [
        ['criu/pages-1.img', a],
        ['criu/pages-2.img', b],
        ['criu/pages-3.img', c],
      ] as const)
        expect(fs.readFileSync(path.join(out, rel)).equals(want)).toBe(true);
    } finally {
      await pool.close();
    }
  });

  test('a second checkpoint of the same bytes, followed, writes nothing and reuses every chunk', async () => {
    const src = path.join(tmp, 'f2src');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'pages-1.img'), pageLike(3 * CHUNK_BYTES));
    const store = new ChunkDir(path.join(tmp, 'f2store'));
    await storeChunked(src, ['pages-1.img'], store, { fsync: false });
    const pool = new ChunkPool();
    try {
      const follower = new ChunkFollower(src, /^pages-\d+\.img$/, '', new ChunkWriter(store, pool, false));
      const r = await storeChunked(src, ['pages-1.img'], store, { fsync: false, follower });
      expect(r.stats).toEqual({ written: 0, bytes: 0, reused: 3 });
    } finally {
      await pool.close();
    }
  });

  test('a bad chunk found on a worker thread keeps its reason (corrupt) and names the chunk', async () => {
    const src = path.join(tmp, 'wsrc');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'rootfs-diff.tar'), pageLike(3 * CHUNK_BYTES));
    const store = new ChunkDir(path.join(tmp, 'wstore'));
    const r = await storeChunked(src, ['rootfs-diff.tar'], store, { fsync: false });
    const victim = store.pathOf(r.files[0]!.chunks[2]!.id);
    const bytes = fs.readFileSync(victim);
    bytes[bytes.length >> 1] ^= 1;
    fs.writeFileSync(victim, bytes);
    const e = await checkpointUnusable(assembleChunked(r.files, store, path.join(tmp, 'wout')));
    expect(e.reason).toBe('corrupt');
    expect(e.message).toContain('rootfs-diff.tar: chunk 3 of 3');
  });
});

describe("assembled the shim's way (on its own thread, page images behind CRIU's gate)", () => {
  test('on this thread under .part names, renamed only once every chunk is checked; a bad chunk leaves no file under its name; a stopped assembly writes nothing more', async () => {
    const src = path.join(tmp, 'gsrc');
    fs.mkdirSync(path.join(src, 'criu'), { recursive: true });
    const pages = pageLike(4 * CHUNK_BYTES + 7);
    fs.writeFileSync(path.join(src, 'criu/pages-1.img'), pages);
    const store = new ChunkDir(path.join(tmp, 'gstore'));
    const r = await storeChunked(src, ['criu/pages-1.img'], store, { fsync: false, keys });

    const out = path.join(tmp, 'gout');
    await assembleChunked(r.files, store, out, keys, { workers: 0, partial: true });
    expect(fs.readdirSync(path.join(out, 'criu'))).toEqual(['pages-1.img']);
    expect(fs.readFileSync(path.join(out, 'criu/pages-1.img')).equals(pages)).toBe(true);

    const victim = store.pathOf(r.files[0]!.chunks[3]!.id);
    const bytes = fs.readFileSync(victim);
    bytes[bytes.length >> 1] ^= 1;
    fs.writeFileSync(victim, bytes);
    const bad = path.join(tmp, 'gbad');
    const e = await checkpointUnusable(assembleChunked(r.files, store, bad, keys, { workers: 0, partial: true }));
    expect(e.reason).toBe('corrupt');
    expect(e.message).toContain('criu/pages-1.img: chunk 4 of 5');
    expect(fs.existsSync(path.join(bad, 'criu/pages-1.img'))).toBe(false);

    const stop = new AbortController();
    stop.abort();
    const stopped = path.join(tmp, 'gstop');
    await expect(
      assembleChunked(r.files, store, stopped, keys, { workers: 0, partial: true, signal: stop.signal }),
    ).rejects.toThrow();
    expect(fs.existsSync(path.join(stopped, 'criu/pages-1.img'))).toBe(false);
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

describe('retention and chunk collection', () => {
  const GRACE = 60_000;
  let cdir: string;
  let chunks: ChunkDir;
  let n = 0;
  beforeEach(() => {
    cdir = path.join(tmp, `gc-${n++}`);
    // chunks/ there before (a store in use): its chunks are aged below, and a chunks/ that
    // ARCH makes is marked as collected at once (the last test of this block).
    fs.mkdirSync(path.join(cdir, CHUNKS_DIR), { recursive: true });
    chunks = new ChunkDir(cdir);
  });

  /** A chunk with an mtime `ageMs` in the past. */
  async function chunk(ageMs: number): Promise<string> {
    const plain = randomBytes(100);
    const id = chunkIdOf(plain);
    await chunks.put(id, encodeChunk(plain, id), false);
    const t = new Date(Date.now() - ageMs);
    fs.utimesSync(chunks.pathOf(id), t, t);
    return id;
  }

  /** A published checkpoint directory whose manifest refers to `ids`. */
  function checkpointWith(minute: number, ids: string[]): string {
    const name = `ckpt-2026-12-03T10-${String(minute).padStart(2, '0')}-00-000Z-0000000${minute % 10}`;
    fs.mkdirSync(path.join(cdir, name));
    const m = {
      formatVersion: CHUNKED_FORMAT_VERSION,
      namespace: 'default',
      containerId: 'j',
      node: 'n',
      createdAt: '2026-12-03T10:00:00.000Z',
      mode: 'local',
      leaveRunning: false,
      runtime: { runc: '1', criu: '4' },
      timingsMs: {},
      rootfs: { files: 0, bytes: 0, deletions: 0 },
      files: [],
      chunked: {
        alg: 'zstd',
        files: ids.length
          ? [{ path: 'criu/pages-1.img', size: ids.length * 100, chunks: ids.map((id) => ({ id, size: 100 })) }]
          : [],
      },
    };
    fs.writeFileSync(path.join(cdir, name, 'manifest.json'), JSON.stringify(m));
    return path.join(cdir, name);
  }

  const present = (id: string) => fs.existsSync(chunks.pathOf(id));

  test('keeps the newest ARCH_KEEP checkpoints; chunks only the removed ones used go after a grace period set aside; shared ones stay', async () => {
    const [a, shared, b, c] = [
      await chunk(2 * GRACE),
      await chunk(2 * GRACE),
      await chunk(2 * GRACE),
      await chunk(2 * GRACE),
    ];
    checkpointWith(1, [a!, shared!]);
    checkpointWith(2, [shared!, b!]);
    const cur = checkpointWith(3, [shared!, c!]);
    const r = await collect(cdir, chunks, { keep: 2, current: cur, graceMs: GRACE });
    expect(r.removedCheckpoints).toHaveLength(1);
    expect(fs.readdirSync(cdir).filter((x) => x.startsWith('ckpt-'))).toHaveLength(2);
    expect([present(a!), present(shared!), present(b!), present(c!)]).toEqual([false, true, true, true]);
    expect(r).toMatchObject({ trashed: 1, deleted: 0 });
    // The next run within the grace period deletes nothing; one after it deletes what was set aside.
    expect(await collect(cdir, chunks, { keep: 2, current: cur, graceMs: GRACE })).toMatchObject({ deleted: 0 });
    expect(
      await collect(cdir, chunks, { keep: 2, current: cur, graceMs: GRACE, now: Date.now() + 2 * GRACE }),
    ).toMatchObject({ deleted: 1 });
    expect(await chunks.trashDirs()).toEqual([]);
  });

  test('a young chunk nothing refers to yet (a checkpoint being written) stays', async () => {
    const young = await chunk(1000);
    const cur = checkpointWith(1, []);
    await collect(cdir, chunks, { keep: 1, current: cur, graceMs: GRACE });
    expect(present(young)).toBe(true);
  });

  test('published while the collector ran: a chunk set aside is taken back by the publisher, by a restore, or by the next collector', async () => {
    const [x, y, z] = [await chunk(2 * GRACE), await chunk(2 * GRACE), await chunk(2 * GRACE)];
    const cur = checkpointWith(1, []);
    await collect(cdir, chunks, { keep: 2, current: cur, graceMs: GRACE });
    expect([present(x!), present(y!), present(z!)]).toEqual([false, false, false]);
    // A publisher reusing x touches it before publishing: taken back.
    expect(await chunks.reuse(x!)).toBe(true);
    expect(present(x!)).toBe(true);
    // A restore of a checkpoint that refers to y finds it.
    expect(await chunks.get(y!)).toBeDefined();
    expect(present(y!)).toBe(true);
    // A checkpoint referring to z published after the collector read the manifests: the next run takes it back, even past the grace period.
    const late = checkpointWith(2, [x!, y!, z!]);
    await collect(cdir, chunks, { keep: 2, current: late, graceMs: GRACE, now: Date.now() + 2 * GRACE });
    expect([present(x!), present(y!), present(z!)]).toEqual([true, true, true]);
  });

  test('the chunks are gone through at most once per half grace period (chunks/.collected); checkpoints beyond ARCH_KEEP go every time; a planted marker is not followed', async () => {
    const x = await chunk(2 * GRACE);
    checkpointWith(1, []);
    const first = await collect(cdir, chunks, { keep: 1, current: checkpointWith(2, []), graceMs: GRACE });
    expect(first).toMatchObject({ trashed: 1, removedCheckpoints: [expect.stringMatching(/^ckpt-/)] });
    expect(first.skipped).toBeUndefined();
    const y = await chunk(2 * GRACE);
    const soon = await collect(cdir, chunks, { keep: 1, current: checkpointWith(3, []), graceMs: GRACE });
    expect(soon).toMatchObject({ skipped: true, trashed: 0, removedCheckpoints: [expect.stringMatching(/^ckpt-/)] });
    expect([present(x), present(y)]).toEqual([false, true]);
    const later = await collect(cdir, chunks, { keep: 1, current: null, graceMs: GRACE, now: Date.now() + GRACE });
    expect(later).toMatchObject({ trashed: 1 });
    expect(present(y)).toBe(false);

    // A symlink planted as the marker: neither followed nor trusted (the chunks are gone through every time).
    const outside = path.join(tmp, 'marker-target');
    fs.writeFileSync(outside, 'x');
    const old = new Date(2000, 0, 1);
    fs.utimesSync(outside, old, old);
    fs.rmSync(path.join(chunks.dir, COLLECTED_MARK));
    fs.symlinkSync(outside, path.join(chunks.dir, COLLECTED_MARK));
    for (let i = 0; i < 2; i++)
      expect((await collect(cdir, chunks, { keep: 1, current: null, graceMs: GRACE })).skipped).toBeUndefined();
    expect(fs.statSync(outside).mtimeMs).toBe(old.getTime());
  });

  test("the publisher's touch of every chunk: those in place get a new mtime, one set aside is taken back, one gone is named", async () => {
    const [a, b, c] = [await chunk(2 * GRACE), await chunk(2 * GRACE), await chunk(2 * GRACE)];
    await collect(cdir, chunks, { keep: 1, current: checkpointWith(1, [a!]), graceMs: GRACE });
    expect([present(a!), present(b!), present(c!)]).toEqual([true, false, false]); // b and c set aside
    fs.rmSync(path.join(chunks.dir, (await chunks.trashDirs())[0]!, c!)); // and c deleted since
    const before = Date.now() - 1000;
    const publisher = new ChunkDir(cdir);
    // The touch a publish makes (CheckpointStore.touchChunks): reuse() of each, the first that is gone named.
    const firstGone = async (ids: string[]) => {
      for (const id of ids) if (!(await publisher.reuse(id))) return id;
      return undefined;
    };
    expect(await firstGone([a!, b!])).toBeUndefined();
    expect([present(a!), present(b!)]).toEqual([true, true]);
    for (const id of [a!, b!]) expect(fs.statSync(chunks.pathOf(id)).mtimeMs).toBeGreaterThan(before);
    expect(await firstGone([a!, c!, b!])).toBe(c);
  });

  test('a FIFO planted where a chunk should be is refused at once, not waited on (the store is not trusted)', async () => {
    const a = await chunk(0);
    fs.rmSync(chunks.pathOf(a));
    execFileSync('mkfifo', [chunks.pathOf(a)]);
    await expect(new ChunkDir(cdir).get(a)).rejects.toThrow(/not a regular file/);
    expect(await new ChunkDir(cdir).reuse(a)).toBe(false);
  });

  test('a chunk directory a checkpoint makes is not gone through for half a grace period (nothing in it is old enough); then it is', async () => {
    fs.rmSync(chunks.dir, { recursive: true });
    const fresh = new ChunkDir(cdir);
    const plain = randomBytes(100);
    const id = chunkIdOf(plain);
    await fresh.stage(id, encodeChunk(plain, id));
    await fresh.commitStaged(false);
    const made = (await fresh.lastCollected())!;
    expect(Math.abs(made - Date.now())).toBeLessThan(10_000);
    const cur = checkpointWith(1, []);
    expect(await collect(cdir, fresh, { keep: 1, current: cur, graceMs: GRACE })).toMatchObject({ skipped: true });
    expect(present(id)).toBe(true);
    // Half a grace period on, the chunk (unreferenced, and now old) is set aside as ever.
    fs.utimesSync(fresh.pathOf(id), new Date(Date.now() - 2 * GRACE), new Date(Date.now() - 2 * GRACE));
    const later = await collect(cdir, fresh, { keep: 1, current: cur, graceMs: GRACE, now: Date.now() + GRACE });
    expect(later.skipped).toBeUndefined();
    expect(later.trashed).toBe(1);
  });

  /** A dump that staged a chunk of its own and was killed (SIGKILL) before it committed: its `.tmp-<pid>-*` file. */
  async function crashedDumpLeftover(): Promise<string> {
    const script = `
      (async () => {
        const { ChunkDir } = await import(${JSON.stringify(new URL('../../core/chunk-dir.js', import.meta.url).href)});
        const { chunkIdOf, encodeChunk } = await import(${JSON.stringify(new URL('../../core/chunk-codec.js', import.meta.url).href)});
        const plain = require('node:crypto').randomBytes(100);
        const id = chunkIdOf(plain);
        await new ChunkDir(${JSON.stringify(cdir)}).stage(id, encodeChunk(plain, id));
        process.kill(process.pid, 'SIGKILL');
      })();`;
    const before = new Set(staged());
    const r = spawnSync(process.execPath, ['-e', script], { stdio: 'inherit' });
    expect(r.signal).toBe('SIGKILL');
    const left = staged().filter((f) => !before.has(f));
    expect(left).toHaveLength(1);
    return left[0]!;
  }

  /** Every `.tmp-*` file under chunks/ (path relative to it). */
  const staged = (): string[] =>
    fs.existsSync(chunks.dir)
      ? fs
          .readdirSync(chunks.dir)
          .filter((d) => /^[0-9a-f]{2}$/.test(d))
          .flatMap((d) => fs.readdirSync(path.join(chunks.dir, d)).map((f) => path.join(d, f)))
          .filter((f) => path.basename(f).startsWith('.tmp-'))
      : [];

  const age = (rel: string, ms: number) => {
    const t = new Date(Date.now() - ms);
    fs.utimesSync(path.join(chunks.dir, rel), t, t);
  };

  test("a crashed dump's staged chunks go once older than the grace period; a live dump's staged chunks stay and still commit", async () => {
    const cur = checkpointWith(1, []);
    const dead = await crashedDumpLeftover();
    // Within the grace period: kept (its dump might be on another node, still running).
    expect(await collect(cdir, chunks, { keep: 1, current: cur, graceMs: GRACE })).toMatchObject({ removedStaged: 0 });
    expect(staged()).toContain(dead);

    // A dump of this (live) process, staged long ago and not yet committed.
    const live = new ChunkDir(cdir);
    const plain = randomBytes(100);
    const id = chunkIdOf(plain);
    await live.stage(id, encodeChunk(plain, id));
    const mine = staged().find((f) => f !== dead)!;
    expect(path.basename(mine)).toMatch(new RegExp(`^\\.tmp-${process.pid}-`));
    age(mine, 2 * GRACE);
    age(dead, 2 * GRACE);
    age(COLLECTED_MARK, GRACE); // the collector went through the chunks long enough ago to do it again

    expect(await collect(cdir, chunks, { keep: 1, current: cur, graceMs: GRACE })).toMatchObject({ removedStaged: 1 });
    expect(staged()).toEqual([mine]);
    await live.commitStaged(false);
    expect(staged()).toEqual([]);
    expect(decodeChunk(fs.readFileSync(chunks.pathOf(id)), id, plain.length, 'c').equals(plain)).toBe(true);
  });
});

describe('ARCH_KEEP', () => {
  test.each([
    [undefined, 2],
    ['1', 1],
    ['5', 5],
  ])('%s -> %s', (v, want) => {
    expect(loadSettings({ ARCH_CONFIG: '/dev/null', ARCH_KEEP: v }).keep).toBe(want);
  });
  test.each(['0', '-1', 'two'])('%s names the setting and the fix', (v) => {
    expect(inputError(() => loadSettings({ ARCH_CONFIG: '/dev/null', ARCH_KEEP: v })).field).toBe('ARCH_KEEP');
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
