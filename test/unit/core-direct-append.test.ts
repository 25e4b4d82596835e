import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DIRECT_ALIGN, DirectAppender, DirectBuffer, DirectReader } from '../../core/direct-append.js';

let tmp: string;
let n = 0;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-direct-unit-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function appender(buf: DirectBuffer | undefined): { file: string; fd: number; a: DirectAppender } {
  const file = path.join(tmp, `f${n++}`);
  const fd = fs.openSync(file, 'wx', 0o600);
  return { file, fd, a: new DirectAppender(fd, file, buf) };
}

describe('DirectAppender', () => {
  test.each([
    ['direct where the filesystem allows', () => new DirectBuffer(64 * 1024)],
    ['through the page cache (no buffer)', () => undefined],
  ])('%s: any append sizes give exactly the bytes appended', (_, buf) => {
    const { file, fd, a } = appender(buf());
    const want: Buffer[] = [];
    for (const size of [0, 1, DIRECT_ALIGN - 1, DIRECT_ALIGN, 3 * DIRECT_ALIGN + 7, 64 * 1024, 200_000, 5]) {
      const parts = [randomBytes(size), randomBytes(size % 17)];
      a.append(parts);
      want.push(...parts);
    }
    a.finish();
    a.close();
    fs.closeSync(fd);
    expect(a.length).toBe(Buffer.concat(want).length);
    expect(fs.readFileSync(file).equals(Buffer.concat(want))).toBe(true);
  });

  test('appenders sharing one buffer (files sealed side by side on a thread) keep their own bytes', () => {
    const buf = new DirectBuffer(16 * 1024);
    const files = [appender(buf), appender(buf)];
    const want: Buffer[][] = [[], []];
    for (let i = 0; i < 30; i++) {
      const k = i % 2;
      const b = randomBytes(1000 + i * 997);
      files[k]!.a.append([b]);
      want[k]!.push(b);
    }
    files.forEach(({ file, fd, a }, k) => {
      a.finish();
      a.close();
      fs.closeSync(fd);
      expect(fs.readFileSync(file).equals(Buffer.concat(want[k]!))).toBe(true);
    });
  });

  test('a file that holds nothing appended is empty (the probing write is cut away)', () => {
    const { file, fd, a } = appender(new DirectBuffer(64 * 1024));
    a.finish();
    a.close();
    fs.closeSync(fd);
    expect(fs.statSync(file).size).toBe(0);
  });
});

describe('DirectReader', () => {
  test.each([
    ['direct', () => new DirectBuffer(256 * 1024)],
    ['through the page cache', () => undefined],
  ])('%s: any range reads the same bytes, short at the end of the file', (_, buf) => {
    const data = randomBytes(300_001);
    const file = path.join(tmp, `r${n++}`);
    fs.writeFileSync(file, data);
    const fd = fs.openSync(file, 'r');
    const r = new DirectReader(fd, file, buf());
    const into = Buffer.alloc(200_000);
    for (const [pos, len] of [
      [0, 1],
      [0, 4096],
      [1, 4095],
      [4095, 2],
      [12_345, 200_000],
      [299_000, 1001],
      [299_000, 5000],
      [300_001, 10],
    ] as const) {
      expect(r.read(pos, len, into).equals(data.subarray(pos, pos + len))).toBe(true);
    }
    r.close();
    fs.closeSync(fd);
  });
});
