import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DigestFollower, digestFiles, digestFilesHere, StreamDigest } from '../../core/digest.js';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-digest-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('digestFiles: small and large files, on worker threads or this one, in input order, equal to sha256 of the bytes', async () => {
  const datas = [randomBytes(10), randomBytes(3 << 20), Buffer.alloc(0), randomBytes(5 << 20), randomBytes(1 << 20)];
  const files = datas.map((d, i) => {
    const f = path.join(tmp, `f${i}`);
    fs.writeFileSync(f, d);
    return f;
  });
  const want = datas.map((d) => ({ size: d.length, sha256: sha(d) }));
  expect(await digestFiles(files)).toEqual(want);
  expect(await digestFilesHere(files)).toEqual(want);
  expect((await digestFiles([files[3]!]))[0]!).toEqual(want[3]);
  await expect(digestFiles([path.join(tmp, 'missing')])).rejects.toThrow(/ENOENT/);
});

test('StreamDigest over pieces equals the digest of the whole', () => {
  const d = randomBytes(1000);
  const h = new StreamDigest();
  h.update(d.subarray(0, 1));
  h.update(d.subarray(1, 600));
  h.update(d.subarray(600));
  expect(h.digest()).toEqual({ size: 1000, sha256: sha(d) });
});

// A worker thread where a core is left beside CRIU's and the checkpointing thread's; that thread itself on 2 cores.
describe.each([0, 1])('DigestFollower on %i worker thread(s)', (threads) => {
  test('hashes files while they are written, only those matching, including ones created late', async () => {
    const dir = path.join(tmp, `follow-${threads}`);
    fs.mkdirSync(dir);
    const follower = await DigestFollower.start(dir, /^pages-\d+\.img$/, { writeback: true, threads });
    const a = fs.openSync(path.join(dir, 'pages-1.img'), 'w');
    const parts: Buffer[] = [];
    for (let i = 0; i < 12; i++) {
      const p = randomBytes(4 << 20);
      parts.push(p);
      fs.writeSync(a, p);
      await sleep(3);
    }
    fs.closeSync(a);
    const late = randomBytes(12345);
    fs.writeFileSync(path.join(dir, 'pages-2.img'), late);
    fs.writeFileSync(path.join(dir, 'core-1.img'), 'not followed');
    const got = await follower.finish();
    expect([...got.keys()].sort()).toEqual(['pages-1.img', 'pages-2.img']);
    expect(got.get('pages-1.img')).toEqual({ size: 48 << 20, sha256: sha(Buffer.concat(parts)) });
    expect(got.get('pages-2.img')).toEqual({ size: late.length, sha256: sha(late) });
  });

  test('a file rewritten shorter is hashed from the start again', async () => {
    const dir = path.join(tmp, `rewrite-${threads}`);
    fs.mkdirSync(dir);
    const f = path.join(dir, 'pages-1.img');
    const follower = await DigestFollower.start(dir, /^pages-\d+\.img$/, { threads });
    fs.writeFileSync(f, randomBytes(2 << 20));
    await sleep(100);
    const final = randomBytes(1000);
    fs.writeFileSync(f, final); // truncates, then writes less than was there
    await sleep(50);
    expect((await follower.finish()).get('pages-1.img')).toEqual({ size: 1000, sha256: sha(final) });
  });

  test('a symlink or a FIFO named like a page image is neither followed nor opened (the dump dir can lie in a store others write)', async () => {
    const dir = path.join(tmp, `symlink-${threads}`);
    fs.mkdirSync(dir);
    const outside = path.join(tmp, `outside-${threads}`);
    fs.writeFileSync(outside, 'a host file');
    fs.symlinkSync(outside, path.join(dir, 'pages-2.img'));
    execFileSync('mkfifo', [path.join(dir, 'pages-3.img')]); // nor waited on: a FIFO would hold open() forever
    const real = randomBytes(1000);
    fs.writeFileSync(path.join(dir, 'pages-1.img'), real);
    const follower = await DigestFollower.start(dir, /^pages-\d+\.img$/, { threads });
    const got = await follower.finish();
    expect([...got.keys()]).toEqual(['pages-1.img']);
    expect(got.get('pages-1.img')).toEqual({ size: 1000, sha256: sha(real) });
  });

  test('cancel stops without waiting for the writer', async () => {
    const dir = path.join(tmp, `cancel-${threads}`);
    fs.mkdirSync(dir);
    const follower = await DigestFollower.start(dir, /^pages-\d+\.img$/, { writeback: true, threads });
    fs.writeFileSync(path.join(dir, 'pages-1.img'), randomBytes(1 << 20));
    await follower.cancel();
  });
});
