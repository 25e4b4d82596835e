import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { deletedOpenFileBytes } from '../../core/open-files.js';

/** What a dump's size estimate counts of a process's open files (CRIU's ghost files), on this very process. */
let dir: string;
const fds: number[] = [];
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-open-files-'))));
afterEach(() => {
  fds.splice(0).forEach((fd) => fs.closeSync(fd));
  fs.rmSync(dir, { recursive: true, force: true });
});

function openFile(name: string, bytes: number): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, Buffer.alloc(bytes, 1));
  fds.push(fs.openSync(p, 'r'));
  return p;
}

test('counts each deleted file held open once, and no file that still has a name', async () => {
  const before = await deletedOpenFileBytes([process.pid]); // whatever the test runner holds
  const deleted = openFile('deleted', 300_000);
  fds.push(fs.openSync(deleted, 'r')); // the same file twice
  fs.unlinkSync(deleted);
  const linked = openFile('linked', 500_000);
  fs.linkSync(linked, path.join(dir, 'other-name'));
  fs.unlinkSync(linked); // "(deleted)" in /proc, but another name keeps it: CRIU links it, copies nothing
  openFile('kept', 700_000);
  expect((await deletedOpenFileBytes([process.pid])) - before).toBe(300_000);
});

test('a process that is gone counts nothing', async () => {
  expect(await deletedOpenFileBytes([2 ** 22 + 1])).toBe(0);
});
