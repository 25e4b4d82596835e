import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  configWord,
  inotifyWatches,
  kernelDev,
  rootfsWatchPaths,
  watchedPathsOnRootfs,
} from '../../core/inotify-watches.js';

/**
 * The inotify watches of a process, read from /proc as the checkpoint reads
 * a job's, and their paths found on a root filesystem: on this process's
 * own watches (Node's fs.watch is inotify on Linux) over real directories.
 */
let root: string;
let watchers: fs.FSWatcher[] = [];
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-inotify-'));
  fs.mkdirSync(path.join(root, 'state/watched'), { recursive: true });
  fs.mkdirSync(path.join(root, 'etc'));
  fs.writeFileSync(path.join(root, 'etc/job.conf'), 'x');
  fs.symlinkSync('/', path.join(root, 'host')); // never followed
});
afterEach(() => {
  for (const w of watchers) w.close();
  watchers = [];
  fs.rmSync(root, { recursive: true, force: true });
});

const watch = (p: string) => watchers.push(fs.watch(path.join(root, p)));
const inode = (p: string) => fs.statSync(path.join(root, p), { bigint: true }).ino;

test("a process's watches are read from its inotify descriptors' fdinfo", async () => {
  watch('state/watched');
  watch('etc/job.conf');
  const found = await inotifyWatches([process.pid]);
  const dev = kernelDev(fs.statSync(root, { bigint: true }).dev);
  expect(found).toEqual(
    expect.arrayContaining([
      { sdev: dev, ino: inode('state/watched') },
      { sdev: dev, ino: inode('etc/job.conf') },
    ]),
  );
  expect(await inotifyWatches([2 ** 22 + 7])).toEqual([]); // no such process: nothing, no error
});

test('watched inodes are found by their paths in the container, the root included; others are not looked for', async () => {
  watch('state/watched');
  watch('etc/job.conf');
  watch('.');
  expect((await rootfsWatchPaths([process.pid], root)).sort()).toEqual(['/', '/etc/job.conf', '/state/watched']);
  // A watch on another filesystem (a volume, /proc) is CRIU's to resolve: not looked for here.
  const dev = kernelDev(fs.statSync(root, { bigint: true }).dev);
  expect(await watchedPathsOnRootfs(root, [{ sdev: dev + 1, ino: inode('etc/job.conf') }])).toEqual([]);
  expect(await watchedPathsOnRootfs(path.join(root, 'gone'), [{ sdev: dev, ino: 1n }])).toEqual([]);
});

test("the kernel's device numbers from stat's, and paths CRIU's configuration can hold as one word", () => {
  expect(kernelDev(0x2cn)).toBe(0x2c); // an overlay's anonymous device (0:44)
  expect(kernelDev(0x803n)).toBe((8 << 20) | 3); // sda3
  expect(kernelDev(0x10000003n)).toBe(65539); // 0:65539: a minor above 255
  expect(configWord('/state/watched')).toBe(true);
  for (const p of ['/a b', 'rel', '/a"b', '/a#b', "/a'b", '/a\\b']) expect(configWord(p)).toBe(false);
});
