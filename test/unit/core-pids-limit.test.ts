import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { varint } from '../../core/protobuf-wire.js';
import { checkpointTaskCount, pidsLimitOf, pidsLimitShortfall } from '../../core/pids-limit.js';

/** A pstree.img as CRIU writes it: its two magics, then each entry's length and bytes. */
function pstreeImage(entries: { pid: number; threads: number[]; packed?: boolean }[]): Buffer {
  const field = (no: number, wire: number) => varint((no << 3) | wire);
  const parts: Buffer[] = [Buffer.from([0x19, 0x43, 0x56, 0x54]), Buffer.alloc(4)];
  parts[1]!.writeUInt32LE(0x50273030);
  for (const e of entries) {
    const body = [
      field(1, 0),
      varint(e.pid),
      field(2, 0),
      varint(0),
      field(3, 0),
      varint(e.pid),
      field(4, 0),
      varint(e.pid),
    ];
    if (e.packed) {
      const packed = Buffer.concat(e.threads.map(varint));
      body.push(field(5, 2), varint(packed.length), packed);
    } else for (const t of e.threads) body.push(field(5, 0), varint(t));
    const msg = Buffer.concat(body);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(msg.length);
    parts.push(len, msg);
  }
  return Buffer.concat(parts);
}

let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-pids-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

test("the checkpoint's processes and threads are counted from pstree.img, packed or not", async () => {
  fs.writeFileSync(
    path.join(dir, 'pstree.img'),
    pstreeImage([
      { pid: 1, threads: [1] },
      { pid: 7, threads: [7, 8, 9, 300] },
      { pid: 12, threads: [12, 200, 201], packed: true },
    ]),
  );
  expect(await checkpointTaskCount(dir)).toBe(8);
});

test('no pstree.img, another image, or a truncated one: not counted', async () => {
  expect(await checkpointTaskCount(dir)).toBeUndefined();
  const img = pstreeImage([{ pid: 1, threads: [1] }]);
  img.writeUInt32LE(0x56303138, 4); // files.img's magic
  fs.writeFileSync(path.join(dir, 'pstree.img'), img);
  expect(await checkpointTaskCount(dir)).toBeUndefined();
  fs.writeFileSync(path.join(dir, 'pstree.img'), pstreeImage([{ pid: 1, threads: [1, 2] }]).subarray(0, 14));
  expect(await checkpointTaskCount(dir)).toBeUndefined();
});

test('a restore short of pids: named only when the job and what the restore adds are over the limit', async () => {
  fs.writeFileSync(
    path.join(dir, 'pstree.img'),
    pstreeImage([
      { pid: 1, threads: [1] },
      { pid: 7, threads: [7] },
    ]),
  );
  const spec = (limit?: number) => ({ linux: { resources: limit === undefined ? {} : { pids: { limit } } } });
  expect(pidsLimitOf(spec(4))).toBe(4);
  expect(pidsLimitOf(spec(0))).toBeUndefined();
  expect(await pidsLimitShortfall(dir, spec(5))).toMatch(
    /pids limit \(5\).*the job has 2 processes and threads.*raise the limit to 6 or more/,
  );
  expect(await pidsLimitShortfall(dir, spec(6))).toBeUndefined();
  expect(await pidsLimitShortfall(dir, spec())).toBeUndefined();
});
