import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FORMAT_VERSION, parseManifest, SEALED_FORMAT_VERSION, type Manifest } from '../../core/manifest.js';
import { DirectBuffer } from '../../core/direct-append.js';
import {
  chunkAad,
  DIRECT_READ_BYTES,
  chunkCount,
  chunkNonce,
  keyFor,
  loadStoreKeys,
  newSealId,
  openChunk,
  openSealedFile,
  parseStoreKey,
  SEAL_ALG,
  sealChunk,
  sealedSize,
  sealFile,
  SealFollower,
  SealLoop,
  storeKeyId,
  Unsealer,
  type SealedFile,
  type StoreKey,
} from '../../core/seal.js';
import { settingsVars } from '../../core/settings.js';
import { checkpointUnusable, inputError } from '../support/input-error.js';

/** Small chunks, so that multi-chunk cases stay small. */
const CHUNK = 4096;
let tmp: string;
let n = 0;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-seal-unit-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const fresh = (): string => fs.mkdtempSync(path.join(tmp, `c${n++}-`));
const key = (): StoreKey => parseStoreKey(randomBytes(32).toString('hex'), 'test');
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 2000) throw new Error('timed out waiting for the sealing worker');
    await sleep(5);
  }
}

/** Seal `plain` as checkpoint file `rel`; returns where everything is. */
async function sealed(plain: Buffer, k = key(), rel = 'criu/pages-1.img', sealId = newSealId()) {
  const dir = fresh();
  const src = path.join(dir, 'plain');
  fs.writeFileSync(src, plain);
  const r = await sealFile(src, path.join(dir, 'store'), rel, k, sealId, CHUNK);
  return { dir, k, rel, sealId, stored: path.join(dir, 'store', rel), entry: r.sealed, digest: r.stored };
}

async function open(
  s: { dir: string; k: StoreKey; sealId: string; stored: string; entry: SealedFile },
  over: { entry?: Partial<SealedFile>; sealId?: string; k?: StoreKey } = {},
): Promise<Buffer> {
  const out = path.join(s.dir, `out-${n++}`);
  await openSealedFile(s.stored, out, { ...s.entry, ...over.entry }, over.sealId ?? s.sealId, over.k ?? s.k);
  return fs.readFileSync(out);
}

type FollowerArgs = ConstructorParameters<typeof SealFollower>;
/** Seals the page images CRIU would write into `src`, into `<dir>/store`. */
function pageFollower(src: string, dir: string, k: FollowerArgs[2], id: FollowerArgs[3], opts: FollowerArgs[4]) {
  return new SealFollower(
    [{ dir: src, pattern: /^pages-\d+\.img$/, prefix: 'criu/' }],
    path.join(dir, 'store'),
    k,
    id,
    opts,
  );
}

describe('seal format: round trip', () => {
  test.each([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])('%i bytes', async (size) => {
    const plain = randomBytes(size);
    const s = await sealed(plain);
    const stored = fs.readFileSync(s.stored);
    expect(stored.length).toBe(sealedSize(size, CHUNK));
    expect(s.digest).toEqual({ size: stored.length, sha256: sha(stored) });
    expect(s.entry).toMatchObject({ path: s.rel, alg: SEAL_ALG, keyId: s.k.id, chunkBytes: CHUNK, plainSize: size });
    if (size >= 16) expect(stored.includes(plain.subarray(0, 16))).toBe(false);
    expect((await open(s)).equals(plain)).toBe(true);
  });

  // On a worker thread where a core is left beside CRIU's and the checkpointing thread's; that thread itself on 2 cores.
  test.each([0, 1])(
    'a file sealed while it grows (as CRIU writes) opens to the whole file (%i worker threads)',
    async (threads) => {
      const dir = fresh();
      const src = path.join(dir, 'in');
      fs.mkdirSync(src);
      const k = key();
      const id = newSealId();
      const f = pageFollower(src, dir, k, id, { chunkBytes: CHUNK, threads });
      const parts: Buffer[] = [];
      for (let i = 0; i < 20; i++) {
        const p = randomBytes(1000 + i * 37);
        parts.push(p);
        fs.appendFileSync(path.join(src, 'pages-1.img'), p);
        await sleep(2);
      }
      const r = (await f.finish()).get('criu/pages-1.img')!;
      const s = { dir, k, sealId: id, stored: path.join(dir, 'store/criu/pages-1.img'), entry: r.sealed };
      expect((await open(s)).equals(Buffer.concat(parts))).toBe(true);
    },
  );

  test('the same loop on the calling thread (the shim; a checkpoint on 2 cores) writes the same format', async () => {
    const dir = fresh();
    const src = path.join(dir, 'in');
    fs.mkdirSync(src);
    const plain = randomBytes(3 * CHUNK + 77);
    fs.writeFileSync(path.join(src, 'rootfs-diff.tar'), plain);
    const k = key();
    const id = newSealId();
    const loop = new SealLoop([{ dir: src, pattern: /^rootfs-diff\.tar$/ }], path.join(dir, 'store'), k, id, {
      chunkBytes: CHUNK,
    });
    const [[rel, r]] = (await loop.finish()) as [
      [string, { sealed: SealedFile; stored: { size: number; sha256: string } }],
    ];
    expect(rel).toBe('rootfs-diff.tar');
    const stored = path.join(dir, 'store/rootfs-diff.tar');
    expect(r.stored).toEqual({ size: sealedSize(plain.length, CHUNK), sha256: sha(fs.readFileSync(stored)) });
    expect((await open({ dir, k, sealId: id, stored, entry: r.sealed })).equals(plain)).toBe(true);
  });

  test.each([1, 0])(
    'cancel() closes every file it opened (a terminated thread would leave them open; %i worker threads)',
    async (threads) => {
      const fds = () => fs.readdirSync('/proc/self/fd').length;
      const dir = fresh();
      const src = path.join(dir, 'in');
      fs.mkdirSync(src);
      for (const i of [1, 2, 3]) fs.writeFileSync(path.join(src, `pages-${i}.img`), randomBytes(CHUNK * 2 + 1));
      const before = fds();
      const f = pageFollower(src, dir, key(), newSealId(), {
        chunkBytes: CHUNK,
        threads,
      });
      // The loop has started and opened them all (it creates each stored file as it opens its source).
      await until(() => [1, 2, 3].every((i) => fs.existsSync(path.join(dir, `store/criu/pages-${i}.img`))));
      expect(fds()).toBeGreaterThanOrEqual(before + 6);
      await f.cancel();
      await sleep(50);
      expect(fds()).toBeLessThanOrEqual(before);
    },
  );

  test.each([1, 0])('a sealing error fails finish() with its message (%i worker threads)', async (threads) => {
    const dir = fresh();
    const src = path.join(dir, 'in');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'pages-1.img'), randomBytes(CHUNK * 3));
    const stored = path.join(dir, 'store/criu/pages-1.img');
    const f = pageFollower(src, dir, key(), newSealId(), {
      chunkBytes: CHUNK,
      threads,
    });
    // Once it has sealed the first chunk, the writer shrinks the file it wrote.
    await until(() => fs.existsSync(stored) && fs.statSync(stored).size >= CHUNK + 16);
    fs.truncateSync(path.join(src, 'pages-1.img'), 10);
    await expect(f.finish()).rejects.toThrow(/shrank/);
  });

  test('two files sealed with one key use different nonces', async () => {
    const k = key();
    const a = await sealed(Buffer.alloc(100), k);
    const b = await sealed(Buffer.alloc(100), k);
    expect(a.entry.nonce).not.toBe(b.entry.nonce);
    expect(fs.readFileSync(a.stored).equals(fs.readFileSync(b.stored))).toBe(false);
  });
});

describe('seal format: ciphertext written and read around the page cache (ARCH_SEAL_DIRECT)', () => {
  test('a file sealed with direct writes is the same format, its digest that of the stored bytes', async () => {
    const dir = fresh();
    const src = path.join(dir, 'in');
    fs.mkdirSync(src);
    const plain = randomBytes(37 * CHUNK + 5);
    fs.writeFileSync(path.join(src, 'pages-1.img'), plain);
    fs.writeFileSync(path.join(src, 'pages-2.img'), plain.subarray(0, 3 * CHUNK));
    const k = key();
    const id = newSealId();
    const f = pageFollower(src, dir, k, id, { chunkBytes: CHUNK, direct: true });
    const got = await f.finish();
    for (const [rel, want] of [
      ['criu/pages-1.img', plain],
      ['criu/pages-2.img', plain.subarray(0, 3 * CHUNK)],
    ] as const) {
      const r = got.get(rel)!;
      const stored = path.join(dir, 'store', rel);
      expect(r.stored).toEqual({ size: sealedSize(want.length, CHUNK), sha256: sha(fs.readFileSync(stored)) });
      const out = path.join(dir, `out-${n++}`);
      await openSealedFile(stored, out, r.sealed, id, k, {
        bufs: { direct: new DirectBuffer(DIRECT_READ_BYTES) },
        sha256: r.stored.sha256,
      });
      expect(fs.readFileSync(out).equals(want)).toBe(true);
    }
  });

  test.each([
    ['one thread, hashed as it is decrypted', false],
    ['two threads, hashed after', true],
  ])('%s: stored bytes that are not the signed ones are refused by their digest', async (_, two) => {
    const s = await sealed(randomBytes(9 * CHUNK));
    const helper = two ? new Unsealer() : undefined;
    try {
      const out = path.join(s.dir, `out-${n++}`);
      const err = await checkpointUnusable(
        openSealedFile(s.stored, out, s.entry, s.sealId, s.k, {
          bufs: { direct: new DirectBuffer(DIRECT_READ_BYTES) },
          helper,
          sha256: sha(Buffer.from('other bytes')),
        }),
      );
      expect(err.reason).toBe('corrupt');
      expect(err.message).toContain('sha256 mismatch');
      // The right digest passes.
      await openSealedFile(s.stored, path.join(s.dir, `out-${n++}`), s.entry, s.sealId, s.k, {
        helper,
        sha256: s.digest.sha256,
      });
    } finally {
      await helper?.close();
    }
  });
});

describe('seal format: opened on two threads (an Unsealer helping, as a sealed restore opens its page images)', () => {
  let helper: Unsealer;
  beforeAll(() => {
    helper = new Unsealer();
  });
  afterAll(() => helper.close());

  async function openTwo(s: Awaited<ReturnType<typeof sealed>>): Promise<string> {
    const out = path.join(s.dir, `out-${n++}`);
    await openSealedFile(s.stored, out, s.entry, s.sealId, s.k, { helper });
    return out;
  }

  test.each([1, CHUNK, 40 * CHUNK + 3])('%i bytes: the same plaintext, mode 0600', async (size) => {
    const plain = randomBytes(size);
    const s = await sealed(plain);
    const out = await openTwo(s);
    expect(fs.readFileSync(out).equals(plain)).toBe(true);
    expect(fs.statSync(out).mode & 0o777).toBe(0o600);
    // The helper goes on serving files one after another.
    expect(fs.readFileSync(await openTwo(s)).equals(plain)).toBe(true);
  });

  test.each([0, 20, 40])('a flipped byte in chunk %i is refused, and its plaintext never written', async (i) => {
    const plain = randomBytes(40 * CHUNK + 3);
    const s = await sealed(plain);
    const b = fs.readFileSync(s.stored);
    b[i * (CHUNK + 16) + 10]! ^= 1;
    fs.writeFileSync(s.stored, b);
    const out = path.join(s.dir, `out-${n++}`);
    const err = await checkpointUnusable(openSealedFile(s.stored, out, s.entry, s.sealId, s.k, { helper }));
    expect(err.reason).toBe('corrupt');
    expect(err.message).toContain(`chunk ${i + 1} of 41`);
    const got = fs.readFileSync(out);
    const want = plain.subarray(i * CHUNK, (i + 1) * CHUNK);
    expect(got.subarray(i * CHUNK, (i + 1) * CHUNK).equals(want)).toBe(false);
    // And the helper is still usable for the next file.
    const ok = await sealed(plain);
    expect(fs.readFileSync(await openTwo(ok)).equals(plain)).toBe(true);
  });
});

describe('seal format: tampering is refused, and no unauthenticated plaintext is written', () => {
  const plain = randomBytes(3 * CHUNK + 100); // 4 chunks
  const chunkAt = (i: number) => i * (CHUNK + 16);

  async function refused(mutate: (b: Buffer) => Buffer, over: Parameters<typeof open>[1] = {}, reason = 'corrupt') {
    const s = await sealed(plain);
    fs.writeFileSync(s.stored, mutate(fs.readFileSync(s.stored)));
    const err = await checkpointUnusable(open(s, over));
    expect(err.reason).toBe(reason);
    return { s, err };
  }

  test.each([0, 1, 3])('a flipped byte in chunk %i', async (i) => {
    const { s, err } = await refused((b) => {
      b[chunkAt(i) + 10]! ^= 1;
      return b;
    });
    expect(err.message).toContain(`chunk ${i + 1} of 4`);
    // The chunks before were authenticated and written; the bad one never was.
    const outs = fs.readdirSync(s.dir).filter((x) => x.startsWith('out-'));
    expect(fs.statSync(path.join(s.dir, outs[0]!)).size).toBe(i * CHUNK);
  });

  test('the format is that of the synchronous primitives (checkpoints sealed before open, and vice versa)', async () => {
    // Whatever the sealer and openSealedFile do to go faster, a chunk is exactly sealChunk's.
    const s = await sealed(plain);
    const stored = fs.readFileSync(s.stored);
    const nonce = Buffer.from(s.entry.nonce, 'hex');
    const opened = [0, 1, 2, 3].flatMap((i) =>
      openChunk(
        s.k.key,
        chunkNonce(nonce, i),
        chunkAad(s.sealId, s.rel, i, i === 3),
        stored.subarray(chunkAt(i), Math.min(chunkAt(i + 1), stored.length)),
        `chunk ${i}`,
      ),
    );
    expect(Buffer.concat(opened).equals(plain)).toBe(true);
    const resealed = Buffer.concat(
      [0, 1, 2, 3].flatMap((i) =>
        sealChunk(
          s.k.key,
          chunkNonce(nonce, i),
          chunkAad(s.sealId, s.rel, i, i === 3),
          plain.subarray(i * CHUNK, (i + 1) * CHUNK),
        ),
      ),
    );
    fs.writeFileSync(s.stored, resealed);
    expect((await open(s)).equals(plain)).toBe(true);
  });

  test('a flipped bit in a tag', () => refused((b) => ((b[chunkAt(1) + CHUNK + 3]! ^= 0x80), b)));
  test('two chunks swapped', () =>
    refused((b) =>
      Buffer.concat([b.subarray(chunkAt(1), chunkAt(2)), b.subarray(0, chunkAt(1)), b.subarray(chunkAt(2))]),
    ));
  test('a truncated file', () => refused((b) => b.subarray(0, b.length - 1), {}, 'truncated'));
  test('a file cut at a chunk boundary, its manifest entry shortened to match', () =>
    refused((b) => b.subarray(0, chunkAt(3)), { entry: { plainSize: 3 * CHUNK } }));
  test('an appended chunk', () => refused((b) => Buffer.concat([b, b.subarray(0, CHUNK + 16)]), {}, 'truncated'));
  test('another checkpoint (seal id)', () => refused((b) => b, { sealId: newSealId() }));
  test('another file (path)', () => refused((b) => b, { entry: { path: 'criu/pages-2.img' } }));
  test('another nonce', () => refused((b) => b, { entry: { nonce: '00'.repeat(12) } }));
  test('another key', () => refused((b) => b, { k: key() }));

  test('a chunk of another file with the same key and checkpoint', async () => {
    const k = key();
    const id = newSealId();
    const a = await sealed(plain, k, 'criu/pages-1.img', id);
    const b = await sealed(plain, k, 'criu/pages-2.img', id);
    const ab = fs.readFileSync(a.stored);
    fs.readFileSync(b.stored).copy(ab, 0, 0, chunkAt(1));
    fs.writeFileSync(a.stored, ab);
    expect((await checkpointUnusable(open(a))).reason).toBe('corrupt');
  });
});

describe('store keys', () => {
  const hex = randomBytes(32).toString('hex');
  const b64 = randomBytes(32).toString('base64');
  const keyFile = (body: string, mode = 0o600): string => {
    const f = path.join(fresh(), 'store.key');
    fs.writeFileSync(f, body, { mode });
    fs.chmodSync(f, mode);
    return f;
  };

  test('unset: no sealing', () => expect(loadStoreKeys({})).toBeUndefined());
  test('hex and base64, one per line, comments; the first seals', () => {
    const keys = loadStoreKeys({ ARCH_STORE_KEY_FILE: keyFile(`# cluster store key\n${hex}\n\n${b64}\n`) })!;
    expect(keys.keys.map((k) => k.id)).toEqual([
      storeKeyId(Buffer.from(hex, 'hex')),
      storeKeyId(Buffer.from(b64, 'base64')),
    ]);
    expect(keys.keys[0]!.id).toMatch(/^[0-9a-f]{16}$/);
    expect(keys.keys[0]!.id).not.toBe(hex.slice(0, 16));
  });
  test.each([0o640, 0o604, 0o660])('mode %o is refused, naming the setting', (mode) => {
    const e = inputError(() => loadStoreKeys({ ARCH_STORE_KEY_FILE: keyFile(hex, mode) }));
    expect(e.field).toBe('ARCH_STORE_KEY_FILE');
    expect(e.message).toMatch(/0600/);
  });
  test.each([
    ['short', 'abcd'],
    ['not a key', 'x'.repeat(64)],
    ['empty', '# nothing\n'],
  ])('%s is refused', (_w, body) => {
    expect(inputError(() => loadStoreKeys({ ARCH_STORE_KEY_FILE: keyFile(body) })).field).toBe('ARCH_STORE_KEY_FILE');
  });
  test('a missing file and a relative path are refused', () => {
    expect(inputError(() => loadStoreKeys({ ARCH_STORE_KEY_FILE: path.join(tmp, 'absent.key') })).field).toBe(
      'ARCH_STORE_KEY_FILE',
    );
    expect(() => loadStoreKeys({ ARCH_STORE_KEY_FILE: 'store.key' })).toThrow(/ARCH_STORE_KEY_FILE/);
  });
  test('the environment wins over the settings file', () => {
    const dir = fresh();
    const fromFile = keyFile(hex);
    const fromEnv = keyFile(b64);
    fs.writeFileSync(path.join(dir, 'arch.env'), `ARCH_STORE_KEY_FILE=${fromFile}\n`);
    expect(loadStoreKeys(settingsVars({ ARCH_CONFIG: path.join(dir, 'arch.env') }).vars)!.file).toBe(fromFile);
    expect(
      loadStoreKeys(settingsVars({ ARCH_CONFIG: path.join(dir, 'arch.env'), ARCH_STORE_KEY_FILE: fromEnv }).vars)!.file,
    ).toBe(fromEnv);
  });
  test('a sealed file whose key this node lacks: sealed-key, naming the key id and the setting, never the key', async () => {
    const k = key();
    const s = await sealed(Buffer.from('x'), k);
    for (const keys of [undefined, { file: '/etc/arch/keys/store.key', keys: [key()] }]) {
      const e = await checkpointUnusable(() => keyFor(s.entry, keys));
      expect(e.reason).toBe('sealed-key');
      expect(e.message).toContain(k.id);
      expect(e.message).toContain('ARCH_STORE_KEY_FILE');
      expect(e.message).not.toContain(k.key.toString('hex'));
    }
    expect(keyFor(s.entry, { file: 'f', keys: [key(), k] })).toBe(k);
  });
});

describe('manifest: seals', () => {
  const entry = (over: Partial<SealedFile> = {}): SealedFile => ({
    path: 'criu/pages-1.img',
    alg: SEAL_ALG,
    keyId: 'ab'.repeat(8),
    nonce: 'cd'.repeat(12),
    chunkBytes: 4 << 20,
    plainSize: 100,
    ...over,
  });
  const m = (over: Partial<Manifest> = {}): Manifest => ({
    formatVersion: SEALED_FORMAT_VERSION,
    namespace: 'default',
    containerId: 'job-1',
    node: 'n',
    createdAt: 'now',
    mode: 'local',
    leaveRunning: false,
    runtime: { runc: '1', criu: '4' },
    timingsMs: {},
    rootfs: { files: 0, bytes: 0, deletions: 0 },
    files: [{ path: 'criu/pages-1.img', size: sealedSize(100, 4 << 20), sha256: 'e'.repeat(64) }],
    seal: { id: 'f'.repeat(32), files: [entry()] },
    ...over,
  });
  const reason = async (x: unknown) => (await checkpointUnusable(() => parseManifest(JSON.stringify(x)))).reason;

  test('a sealed manifest parses', () =>
    expect(parseManifest(JSON.stringify(m())).seal!.files[0]!.plainSize).toBe(100));
  test('an unknown seal algorithm is refused clearly', async () => {
    const e = await checkpointUnusable(() =>
      parseManifest(JSON.stringify(m({ seal: { id: 'f'.repeat(32), files: [entry({ alg: 'rot13' })] } }))),
    );
    expect(e.reason).toBe('seal-unknown');
    expect(e.message).toContain('rot13');
  });
  test('version 2 without a seal, version 1 with one', async () => {
    expect(await reason({ ...m(), seal: undefined })).toBe('manifest-invalid');
    expect(await reason(m({ formatVersion: FORMAT_VERSION }))).toBe('manifest-invalid');
  });
  test('a stored size that does not fit the plaintext size', async () => {
    expect(await reason(m({ seal: { id: 'f'.repeat(32), files: [entry({ plainSize: 99 })] } }))).toBe(
      'manifest-invalid',
    );
  });
  test('a sealed file not in the file list, or twice', async () => {
    expect(await reason(m({ seal: { id: 'f'.repeat(32), files: [entry({ path: 'x' })] } }))).toBe('manifest-invalid');
    expect(await reason(m({ seal: { id: 'f'.repeat(32), files: [entry(), entry()] } }))).toBe('manifest-invalid');
  });
  test('malformed seal parameters', async () => {
    for (const bad of [
      { keyId: 'KEY' },
      { nonce: '00' },
      { chunkBytes: 1 },
      { chunkBytes: 1 << 30 },
      { plainSize: -1 },
    ]) {
      expect(await reason(m({ seal: { id: 'f'.repeat(32), files: [entry(bad)] } }))).toBe('manifest-invalid');
    }
    expect(await reason(m({ seal: { id: 'short', files: [entry()] } }))).toBe('manifest-invalid');
  });
  test('a newer format still says format-newer', async () =>
    expect(await reason({ ...m(), formatVersion: 4 })).toBe('format-newer'));
  test('chunk arithmetic', () => {
    expect(chunkCount(0, 10)).toBe(1);
    expect(chunkCount(10, 10)).toBe(1);
    expect(chunkCount(11, 10)).toBe(2);
    expect(sealedSize(0, 10)).toBe(16);
  });
});
