import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { deletedOpenFileBytes, uncheckpointableFiles } from '../../core/open-files.js';

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

test('an io_uring held by a process is named with the process; other processes and files are not', async () => {
  // The host's python3 opens one (io_uring_setup) and says so; the test's own process holds none.
  const job = spawn(
    'python3',
    [
      '-c',
      'import ctypes, sys, time\n' +
        'libc = ctypes.CDLL(None, use_errno=True)\n' +
        'fd = libc.syscall(425, 4, ctypes.create_string_buffer(120))\n' +
        'print(fd, ctypes.get_errno(), flush=True)\n' +
        'time.sleep(60)\n',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  try {
    const said = await new Promise<string>((resolve) => job.stdout!.once('data', (b: Buffer) => resolve(String(b))));
    const fd = Number(said.split(' ')[0]);
    expect({ fd: fd >= 0, said }).toEqual({ fd: true, said }); // io_uring_setup worked here
    expect(await uncheckpointableFiles([process.pid, job.pid!])).toEqual([
      `process ${job.pid} (python3) holds an io_uring instance (fd ${fd})`,
    ]);
    expect(await uncheckpointableFiles([process.pid, 2 ** 22 + 1])).toEqual([]);
  } finally {
    job.kill('SIGKILL');
  }
});
