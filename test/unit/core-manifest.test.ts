import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { digestFiles } from '../../core/digest.js';
import {
  describeFiles,
  FORMAT_VERSION,
  listFiles,
  parseManifest,
  verifyCheckpointDir,
  type Manifest,
} from '../../core/manifest.js';
import { loadTrust, signManifest } from '../../core/trust.js';
import { testSigningKey } from '../support/arch-env.js';
import { checkpointUnusable } from '../support/input-error.js';
import { SIGNATURE_FILE } from '../../core/checkpoint-layout.js';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-manifest-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** manifest.json as the node writes it: signed (with this test run's key, see testSigningKey). */
function writeManifest(dir: string, text: string): void {
  testSigningKey();
  fs.writeFileSync(path.join(dir, 'manifest.json'), text);
  fs.writeFileSync(path.join(dir, SIGNATURE_FILE), signManifest(Buffer.from(text), loadTrust())!);
}

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

function baseManifest(over: Partial<Manifest> = {}): Manifest {
  return {
    formatVersion: FORMAT_VERSION,
    namespace: 'default',
    containerId: 'job-1',
    node: 'node-a',
    createdAt: '2026-11-28T00:00:00.000Z',
    mode: 'local',
    leaveRunning: false,
    runtime: { runc: '1.1.5', criu: '4.1.1' },
    timingsMs: { dump: 12 },
    rootfs: { files: 1, bytes: 3, deletions: 0 },
    files: [],
    ...over,
  };
}

/** A checkpoint-like dir with a correct manifest; returns its path. */
async function goodDir(name: string): Promise<string> {
  const dir = path.join(tmp, name);
  fs.mkdirSync(path.join(dir, 'criu'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'criu/pages-1.img'), Buffer.alloc(10_000, 7));
  fs.writeFileSync(path.join(dir, 'criu/core-1.img'), 'core');
  fs.writeFileSync(path.join(dir, 'rootfs-diff.tar'), Buffer.alloc(1024));
  fs.writeFileSync(path.join(dir, 'deleted.files'), '{"whiteouts":[],"opaque":[]}');
  const files = await describeFiles(dir, await listFiles(dir));
  writeManifest(dir, JSON.stringify(baseManifest({ files })));
  return dir;
}

describe('parseManifest', () => {
  test('round trip', () => {
    const m = baseManifest({ image: 'localhost/x:1', files: [{ path: 'criu/a.img', size: 1, sha256: sha('a') }] });
    expect(parseManifest(JSON.stringify(m))).toEqual(m);
  });

  test('not JSON', async () => {
    expect((await checkpointUnusable(() => parseManifest('{"formatVersion": 1,'))).reason).toBe('manifest-corrupt');
  });

  test('newer format: refused before the schema is even looked at, with the fix', async () => {
    const err = await checkpointUnusable(() => parseManifest(JSON.stringify({ formatVersion: 99, whatever: true })));
    expect(err.reason).toBe('format-newer');
    expect(err.message).toContain('99');
    expect(err.message).toContain('upgrade ARCH');
  });

  test('older/unknown format', async () => {
    expect(
      (await checkpointUnusable(() => parseManifest(JSON.stringify(baseManifest({ formatVersion: 0 }))))).reason,
    ).toBe('format-unknown');
  });

  test.each([
    ['missing field', (m: Record<string, unknown>) => delete m.node],
    ['wrong type', (m: Record<string, unknown>) => (m.formatVersion = '1')],
    ['bad mode', (m: Record<string, unknown>) => (m.mode = 'cloud')],
    ['bad digest', (m: Record<string, unknown>) => (m.files = [{ path: 'a', size: 1, sha256: 'XYZ' }])],
    ['negative size', (m: Record<string, unknown>) => (m.files = [{ path: 'a', size: -1, sha256: sha('') }])],
    ['null', (m: Record<string, unknown>) => Object.keys(m).forEach((k) => delete m[k])],
  ])('%s -> manifest-invalid', async (_n, mutate) => {
    const m = baseManifest() as unknown as Record<string, unknown>;
    mutate(m);
    expect((await checkpointUnusable(() => parseManifest(JSON.stringify(m)))).reason).toBe('manifest-invalid');
  });

  test('"null" as the whole manifest', async () => {
    expect((await checkpointUnusable(() => parseManifest('null'))).reason).toBe('manifest-invalid');
  });

  test.each(['/etc/passwd', '../x', 'criu/../../x', 'manifest.json'])('file entry %p is refused', async (p) => {
    const err = await checkpointUnusable(() =>
      parseManifest(JSON.stringify(baseManifest({ files: [{ path: p, size: 0, sha256: sha('') }] }))),
    );
    expect(err.reason).toBe('manifest-invalid');
    expect(err.message).toContain(p);
  });
});

describe('listFiles / describeFiles / digestFiles', () => {
  test('sorted relative regular files, manifest excluded, digests right', async () => {
    const dir = await goodDir('list');
    expect(await listFiles(dir)).toEqual(['criu/core-1.img', 'criu/pages-1.img', 'deleted.files', 'rootfs-diff.tar']);
    const d = await describeFiles(dir, ['criu/pages-1.img', 'deleted.files']);
    expect(d).toEqual([
      { path: 'criu/pages-1.img', size: 10_000, sha256: sha(Buffer.alloc(10_000, 7)) },
      { path: 'deleted.files', size: 28, sha256: sha('{"whiteouts":[],"opaque":[]}') },
    ]);
    // Multi-chunk file (reads are 1 MiB).
    const big = path.join(tmp, 'big');
    const buf = Buffer.alloc(3 * 1024 * 1024 + 17);
    for (let i = 0; i < buf.length; i++) buf[i] = (i * 31) & 0xff;
    fs.writeFileSync(big, buf);
    expect((await digestFiles([big]))[0]!.sha256).toBe(sha(buf));
  });

  test('a symlink, FIFO or device in a checkpoint dir is refused', async () => {
    const dir = await goodDir('special');
    fs.symlinkSync('/etc/passwd', path.join(dir, 'criu/link.img'));
    expect((await checkpointUnusable(listFiles(dir))).reason).toBe('unexpected-file');
  });
});

describe('verifyCheckpointDir', () => {
  test('a good dir verifies and returns its manifest', async () => {
    const dir = await goodDir('good');
    const m = await verifyCheckpointDir(dir);
    expect(m.files.map((f) => f.path)).toEqual([
      'criu/core-1.img',
      'criu/pages-1.img',
      'deleted.files',
      'rootfs-diff.tar',
    ]);
  });

  test('no manifest', async () => {
    const dir = await goodDir('nomanifest');
    fs.rmSync(path.join(dir, 'manifest.json'));
    expect((await checkpointUnusable(verifyCheckpointDir(dir))).reason).toBe('manifest-missing');
  });

  test('truncated file: size differs', async () => {
    const dir = await goodDir('truncated');
    fs.truncateSync(path.join(dir, 'criu/pages-1.img'), 4096);
    const err = await checkpointUnusable(verifyCheckpointDir(dir));
    expect(err.reason).toBe('truncated');
    expect(err.message).toContain('criu/pages-1.img: 4096 bytes, manifest says 10000');
  });

  test('missing file', async () => {
    const dir = await goodDir('missing');
    fs.rmSync(path.join(dir, 'criu/core-1.img'));
    const err = await checkpointUnusable(verifyCheckpointDir(dir));
    expect(err.reason).toBe('truncated');
    expect(err.message).toContain('criu/core-1.img');
  });

  test('one flipped byte, same size', async () => {
    const dir = await goodDir('corrupt');
    const f = path.join(dir, 'criu/pages-1.img');
    const b = fs.readFileSync(f);
    b[5000] ^= 0x01;
    fs.writeFileSync(f, b);
    const err = await checkpointUnusable(verifyCheckpointDir(dir));
    expect(err.reason).toBe('corrupt');
    expect(err.message).toContain('criu/pages-1.img: sha256 mismatch');
  });

  test('a file not in the manifest', async () => {
    const dir = await goodDir('extra');
    fs.writeFileSync(path.join(dir, 'criu/injected.img'), 'x');
    const err = await checkpointUnusable(verifyCheckpointDir(dir));
    expect(err.reason).toBe('unexpected-file');
    expect(err.message).toContain('criu/injected.img');
  });

  test('newer format in an otherwise intact dir', async () => {
    const dir = await goodDir('newer');
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
    writeManifest(dir, JSON.stringify({ ...m, formatVersion: 99 }));
    expect((await checkpointUnusable(verifyCheckpointDir(dir))).reason).toBe('format-newer');
  });

  test('a large file (verified on a worker thread): a flipped byte deep inside is found', async () => {
    const dir = path.join(tmp, 'large');
    fs.mkdirSync(dir);
    const size = 40 * 1024 * 1024 + 4096;
    const f = path.join(dir, 'pages-1.img');
    fs.writeFileSync(f, Buffer.alloc(size, 3));
    const files = await describeFiles(dir, await listFiles(dir));
    expect(files[0]).toEqual({ path: 'pages-1.img', size, sha256: sha(fs.readFileSync(f)) });
    writeManifest(dir, JSON.stringify(baseManifest({ files })));
    await expect(verifyCheckpointDir(dir)).resolves.toBeTruthy();
    const fd = fs.openSync(f, 'r+');
    fs.writeSync(fd, Buffer.from([4]), 0, 1, 33 * 1024 * 1024 + 100);
    fs.closeSync(fd);
    const err = await checkpointUnusable(verifyCheckpointDir(dir));
    expect(err.reason).toBe('corrupt');
    expect(err.message).toContain('pages-1.img: sha256 mismatch');
    fs.rmSync(dir, { recursive: true });
  });

  test('digest recorded for a listed file in another order still verifies (order-independent listing)', async () => {
    const dir = await goodDir('order');
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
    writeManifest(dir, JSON.stringify({ ...m, files: [...m.files].reverse() }));
    await expect(verifyCheckpointDir(dir)).resolves.toBeTruthy();
  });
});
