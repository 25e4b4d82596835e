import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { varint } from '../../core/protobuf-wire.js';
import { checkpointTaskCount, resourceLimitOf, restoreLimitCause } from '../../core/restore-limits.js';

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
  const pidsShort = async (limit?: number) => (await restoreLimitCause('Restoring FAILED', dir, spec(limit)))?.fix;
  expect(resourceLimitOf(spec(4), 'pids')).toBe(4);
  expect(resourceLimitOf(spec(0), 'pids')).toBeUndefined();
  expect(await pidsShort(5)).toMatch(
    /pids limit \(5\).*the job has 2 processes and threads.*raise the limit to 6 or more/,
  );
  expect(await restoreLimitCause('Restoring FAILED', dir, spec(5))).toMatchObject({ reason: 'pids-limit' });
  expect(await pidsShort(6)).toBeUndefined();
  expect(await pidsShort()).toBeUndefined();
});

test('a process killed while CRIU restored it, in a container with a memory limit: the limit and the fix', async () => {
  const said =
    'runc restore failed: exit status 1 (criu: (00.244817) Error (criu/cr-restore.c:1269): 20753 killed by signal 9: Killed | (00.245643) Error (criu/cr-restore.c:2331): Restoring FAILED.)';
  const memory = (limit?: number) => ({ linux: { resources: limit === undefined ? {} : { memory: { limit } } } });
  const oomFix = async (message: string, limit?: number) => (await restoreLimitCause(message, dir, memory(limit)))?.fix;
  expect(await oomFix(said, 130 * 2 ** 20)).toMatch(
    /out-of-memory killer of the container's memory limit \(130 MiB\).*Fix: give the container 16 MiB or more/,
  );
  expect(await restoreLimitCause(said, dir, memory(130 * 2 ** 20))).toMatchObject({ reason: 'memory-limit' });
  // No limit: the OOM killer of the limit is not the cause; another failure: not this.
  expect(await oomFix(said, undefined)).toBeUndefined();
  expect(await oomFix('Error (criu/files-reg.c:2175): File /out/held has bad size', 130 * 2 ** 20)).toBeUndefined();
});

test('the memory limit of a spec: linux.resources.memory.limit when positive', () => {
  expect(resourceLimitOf({ linux: { resources: { memory: { limit: 1 << 30 } } } }, 'memory')).toBe(1 << 30);
  expect(resourceLimitOf({ linux: { resources: { memory: {} } } }, 'memory')).toBeUndefined();
  expect(resourceLimitOf({ linux: { resources: { memory: { limit: -1 } } } }, 'memory')).toBeUndefined();
  expect(resourceLimitOf({}, 'memory')).toBeUndefined();
});
