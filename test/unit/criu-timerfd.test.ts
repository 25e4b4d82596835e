import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileEntries, filesImage } from '../../core/criu-files-image.js';
import { rearmFiredTimerfds } from '../../core/criu-timerfd.js';
import { bytesField, varintField, wireFields } from '../../core/protobuf-wire.js';

/**
 * CRIU's files.img as CRIU writes it (magic numbers, then length-prefixed
 * FileEntry messages; images/fdinfo.proto, timerfd.proto), with timerfds in
 * the states /proc fdinfo reports, and what ARCH leaves of it.
 */
const HEADER = Buffer.from([0x54, 0x56, 0x33, 0x58, 0x38, 0x31, 0x30, 0x56]); // IMG_COMMON_MAGIC, FILES_MAGIC

interface Timer {
  id: number;
  ticks: number;
  value: [number, number];
  interval: [number, number];
}

function timerfdEntry(t: Timer): Buffer {
  const tfd = Buffer.concat([
    varintField(1, t.id),
    varintField(2, 0o2004002), // flags
    bytesField(3, Buffer.concat([varintField(1, 0), varintField(2, 0), varintField(3, 0), varintField(4, 0)])), // fown
    varintField(4, 1), // CLOCK_MONOTONIC
    varintField(5, t.ticks),
    varintField(6, 0),
    varintField(7, t.value[0]),
    varintField(8, t.value[1]),
    varintField(9, t.interval[0]),
    varintField(10, t.interval[1]),
  ]);
  return Buffer.concat([varintField(1, 11), varintField(2, t.id), bytesField(12, tfd)]); // type TIMERFD, id, tfd
}

/** A regular file's entry, with a fixed-size field in it (kept byte for byte). */
const regEntry = Buffer.concat([
  varintField(1, 1),
  varintField(2, 7),
  bytesField(3, Buffer.concat([varintField(1, 7), bytesField(3, Buffer.from('/state/count'))])),
  Buffer.from([0x7d, 1, 2, 3, 4]), // field 15, wire type 5 (fixed32)
]);

function timerOf(entry: Buffer): Record<number, number> | undefined {
  for (const f of wireFields(entry))
    if (f.no === 12 && f.wire === 2) {
      const v: Record<number, number> = {};
      for (const g of wireFields(f.bytes)) if (g.wire === 0) v[g.no] = g.value;
      return v;
    }
  return undefined;
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-timerfd-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const write = (entries: Buffer[]) => fs.writeFileSync(path.join(dir, 'files.img'), filesImage(HEADER, entries));
const read = () => fileEntries(fs.readFileSync(path.join(dir, 'files.img')))!;

test('a periodic timer that fired unread (it_value 0, ticks pending) gets one interval to its next expiry; nothing else changes', async () => {
  const fired = timerfdEntry({ id: 5, ticks: 3, value: [0, 0], interval: [0, 20_000_000] });
  const slow = timerfdEntry({ id: 6, ticks: 1, value: [0, 0], interval: [3600, 5] });
  write([regEntry, fired, slow]);
  expect(await rearmFiredTimerfds(dir)).toBe(2);
  const [reg, a, b] = read();
  expect(reg).toEqual(regEntry);
  expect(timerOf(a!)).toMatchObject({ 1: 5, 5: 3, 7: 0, 8: 20_000_000, 9: 0, 10: 20_000_000, 4: 1 });
  expect(timerOf(b!)).toMatchObject({ 1: 6, 5: 1, 7: 3600, 8: 5, 9: 3600, 10: 5 });
  // Done once: the rearmed image is left as it is.
  const once = fs.readFileSync(path.join(dir, 'files.img'));
  expect(await rearmFiredTimerfds(dir)).toBe(0);
  expect(fs.readFileSync(path.join(dir, 'files.img'))).toEqual(once);
});

test('timers the job disarmed, one-shot timers that fired, timers still running: left as they are', async () => {
  const entries = [
    timerfdEntry({ id: 1, ticks: 0, value: [0, 0], interval: [1, 0] }), // disarmed (settime 0 clears the ticks)
    timerfdEntry({ id: 2, ticks: 1, value: [0, 0], interval: [0, 0] }), // a one-shot that fired
    timerfdEntry({ id: 3, ticks: 0, value: [0, 12_345], interval: [0, 20_000_000] }), // running
    regEntry,
  ];
  write(entries);
  expect(read()).toHaveLength(4);
  const before = fs.readFileSync(path.join(dir, 'files.img'));
  expect(await rearmFiredTimerfds(dir)).toBe(0);
  expect(fs.readFileSync(path.join(dir, 'files.img'))).toEqual(before);
});

test('no files.img, another image, a malformed entry: nothing is changed', async () => {
  expect(await rearmFiredTimerfds(dir)).toBe(0);
  fs.writeFileSync(path.join(dir, 'files.img'), Buffer.from('not an image at all'));
  expect(await rearmFiredTimerfds(dir)).toBe(0);
  const bad = Buffer.concat([varintField(1, 11), Buffer.from([0x62, 0x7f])]); // field 12 claiming 127 bytes
  write([timerfdEntry({ id: 5, ticks: 3, value: [0, 0], interval: [0, 20_000_000] }), bad]);
  const before = fs.readFileSync(path.join(dir, 'files.img'));
  expect(await rearmFiredTimerfds(dir)).toBe(0);
  expect(fs.readFileSync(path.join(dir, 'files.img'))).toEqual(before);
});
