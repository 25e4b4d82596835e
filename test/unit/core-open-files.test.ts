import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
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

test('an io_uring, a perf_event and a userfaultfd held by a process are named with it; a process without them is not', async () => {
  // The host's python3 opens one of each (io_uring_setup, perf_event_open of a software clock, userfaultfd) and
  // prints their fds.
  const job = spawn(
    'python3',
    [
      '-c',
      [
        'import ctypes, os, time',
        'libc = ctypes.CDLL(None, use_errno=True)',
        'uring = libc.syscall(425, 4, ctypes.create_string_buffer(120))',
        'attr = ctypes.create_string_buffer(136)',
        "ctypes.memmove(attr, (1).to_bytes(4, 'little') + (136).to_bytes(4, 'little'), 8)",
        'perf = libc.syscall(298, attr, 0, -1, -1, 0)',
        'uffd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)',
        'print(uring, perf, uffd, flush=True)',
        'time.sleep(60)',
      ].join('\n'),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const plain = spawn('sleep', ['60'], { stdio: 'ignore' });
  try {
    await once(plain, 'spawn'); // exec'd: no longer a copy of this process's descriptors
    let out = '';
    const said = await new Promise<string>((resolve) =>
      job.stdout!.on('data', (b: Buffer) => {
        out += String(b);
        if (out.includes('\n')) resolve(out);
      }),
    );
    const [uring, perf, uffd] = said.trim().split(' ').map(Number);
    expect({ opened: [uring, perf, uffd].every((fd) => fd! >= 0), said }).toEqual({ opened: true, said });
    // A plain process beside it holds none (not this one: Node's libuv may hold an io_uring itself, as Debian 13's does).
    const found = await uncheckpointableFiles([plain.pid!, job.pid!]);
    expect(found.map((f) => f.said).sort()).toEqual(
      [
        `process ${job.pid} (python3) holds an io_uring instance (fd ${uring})`,
        `process ${job.pid} (python3) holds a perf_event descriptor (fd ${perf})`,
        `process ${job.pid} (python3) holds a userfaultfd (fd ${uffd})`,
      ].sort(),
    );
    expect(found.find((f) => f.said.includes('io_uring'))?.fix).toMatch(
      /^create the container again \(ARCH refuses io_uring in the containers it creates; this one is older\), or turn io_uring off/,
    );
    expect(found.find((f) => f.said.includes('perf_event'))?.fix).toMatch(/^detach the profiler/);
    expect(await uncheckpointableFiles([plain.pid!, 2 ** 22 + 1])).toEqual([]);
  } finally {
    job.kill('SIGKILL');
    plain.kill('SIGKILL');
  }
});
