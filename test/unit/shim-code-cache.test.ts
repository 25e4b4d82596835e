import { execa } from 'execa';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { REPO_ROOT } from '../support/images.js';

/**
 * shim/start.cts starts the shim's bundle with V8's code cache. Whatever the
 * cache file holds (nothing, a cache for another bundle, damaged bytes), the
 * shim must run as it would without one, and leave a valid cache behind.
 * Runs the built loader and bundle (copies in a temp dir) on a call the shim
 * passes through to /bin/true, with settings that name nothing else.
 */
const BUILT = path.join(REPO_ROOT, 'dist/shim');
let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-code-cache-'));
  for (const f of ['start.cjs', 'arch-runc.cjs']) fs.copyFileSync(path.join(BUILT, f), path.join(dir, f));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const cacheFile = () => path.join(dir, 'arch-runc.cjs.v8cache');
/** The cache header (shim/start.cts): the bundle's identity, zero-padded to 96 bytes, then crc32 of the data. */
const KEY_BYTES = 96;
const HEADER_BYTES = KEY_BYTES + 4;
function identity(file: string): string {
  const st = fs.statSync(file, { bigint: true });
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
}
function crc(data: Buffer): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(zlib.crc32(data));
  return b;
}

async function runShim() {
  const cfg = path.join(dir, 'arch.env');
  fs.writeFileSync(cfg, 'ARCH_RUNC=/bin/true\n');
  // `state` of a container the shim does not handle: passed to ARCH_RUNC, its exit code returned.
  return execa(process.execPath, [path.join(dir, 'start.cjs'), 'state', 'some-id'], {
    env: { ARCH_CONFIG: cfg },
    reject: false,
  });
}

/** The cache file is for this bundle and its data is intact. */
function expectValidCache(): Buffer {
  const file = fs.readFileSync(cacheFile());
  expect(file.subarray(0, KEY_BYTES).toString('latin1').replace(/\0+$/, '')).toBe(
    identity(path.join(dir, 'arch-runc.cjs')),
  );
  expect(file.subarray(KEY_BYTES, HEADER_BYTES).equals(crc(file.subarray(HEADER_BYTES)))).toBe(true);
  expect(file.length).toBeGreaterThan(HEADER_BYTES + 1024);
  return file;
}

test('no cache: the call runs, and a cache for this bundle is written', async () => {
  const r = await runShim();
  expect(r.exitCode).toBe(0);
  expect(r.stderr).toBe('');
  expectValidCache();
});

test('a valid cache is used as it is (not rewritten)', async () => {
  await runShim();
  const before = fs.statSync(cacheFile()).mtimeMs;
  const bytes = expectValidCache();
  const r = await runShim();
  expect(r.exitCode).toBe(0);
  expect(fs.statSync(cacheFile()).mtimeMs).toBe(before);
  expect(fs.readFileSync(cacheFile()).equals(bytes)).toBe(true);
});

/** Spoil the cache file of a first run; the second run must still work and leave a valid cache: returns (original, new). */
async function runWithSpoiledCache(spoil: (file: Buffer) => Buffer): Promise<{ original: Buffer; rewritten: Buffer }> {
  await runShim();
  const original = fs.readFileSync(cacheFile());
  fs.writeFileSync(cacheFile(), spoil(original));
  const r = await runShim();
  expect(r.exitCode).toBe(0);
  expect(r.stderr).toBe('');
  return { original, rewritten: expectValidCache() };
}

test.each([
  [
    'damaged data',
    (f: Buffer) => Buffer.concat([f.subarray(0, HEADER_BYTES), Buffer.alloc(f.length - HEADER_BYTES, 0xa5)]),
  ],
  [
    "another bundle's cache",
    (f: Buffer) => {
      const other = Buffer.alloc(KEY_BYTES);
      other.write('1:2:3:4', 'latin1'); // another file's identity
      return Buffer.concat([other, f.subarray(KEY_BYTES)]);
    },
  ],
  ['truncated', (f: Buffer) => f.subarray(0, 40)],
  ['empty', () => Buffer.alloc(0)],
])('%s: ignored, the call runs, a valid cache replaces it', async (_what, spoil) => {
  await runWithSpoiledCache(spoil);
});

test('a cache V8 refuses (made by another Node): the call runs, a valid cache replaces it', async () => {
  const { original, rewritten } = await runWithSpoiledCache((file) => {
    const data = Buffer.from(file.subarray(HEADER_BYTES));
    data[4] = data[4]! ^ 0xff; // inside V8's header: the version hash
    return Buffer.concat([file.subarray(0, KEY_BYTES), crc(data), data]);
  });
  // Rewritten by this Node: its version hash again, not the spoiled one.
  expect(rewritten[HEADER_BYTES + 4]).toBe(original[HEADER_BYTES + 4]);
});

test('the exit code of the real runc comes back through the loader', async () => {
  fs.writeFileSync(path.join(dir, 'arch.env'), 'ARCH_RUNC=/bin/false\n');
  const r = await execa(process.execPath, [path.join(dir, 'start.cjs'), 'state', 'some-id'], {
    env: { ARCH_CONFIG: path.join(dir, 'arch.env') },
    reject: false,
  });
  expect(r.exitCode).toBe(1);
});
