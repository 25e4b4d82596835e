import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { layerDifference } from '../../core/layer-match.js';
import { captureDiff } from '../../core/rootfs-diff.js';

/**
 * The writable layer of a container started again (docker start) against
 * what its checkpoint recorded: equal only when nothing a container could
 * see differs (contents, modes, owners, symlinks, deletions, opaque dirs,
 * nothing added). Each case changes one thing of a captured layer. Runs as
 * root (mknod, chown, trusted.* xattrs).
 */
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-layer-match-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let n = 0;
/** A layer with files, a symlink, a whiteout and an opaque dir, captured into a checkpoint dir. */
async function captured(): Promise<{ upper: string; ckpt: string; lower: string }> {
  const base = path.join(tmp, `case-${++n}`);
  const upper = path.join(base, 'upper');
  const ckpt = path.join(base, 'ckpt');
  const lower = path.join(base, 'lower');
  for (const d of [upper, ckpt, lower]) fs.mkdirSync(d, { recursive: true });
  const w = (p: string, s: string | Buffer) => {
    fs.mkdirSync(path.dirname(path.join(upper, p)), { recursive: true });
    fs.writeFileSync(path.join(upper, p), s);
  };
  w('state/count', '42\n');
  w('state/big.bin', Buffer.alloc(256 * 1024, 7));
  w('etc/to-modify.txt', 'modified\n');
  fs.chownSync(path.join(upper, 'state/count'), 1000, 1000);
  w('state/count-copy', '42\n');
  fs.symlinkSync('../state/count', path.join(upper, 'etc/count-link'));
  await execa('mknod', [path.join(upper, 'etc/to-delete.txt'), 'c', '0', '0']);
  fs.mkdirSync(path.join(upper, 'var/cache'), { recursive: true });
  await execa('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', path.join(upper, 'var/cache')]);
  await captureDiff(upper, ckpt);
  // The image below: a /tmp like every image's.
  fs.mkdirSync(path.join(lower, 'tmp'));
  fs.chmodSync(path.join(lower, 'tmp'), 0o1777);
  return { upper, ckpt, lower };
}

test('the layer it captured is equal', async () => {
  const { upper, ckpt, lower } = await captured();
  await expect(layerDifference(ckpt, upper, [lower])).resolves.toBeUndefined();
});

test.each<[string, (upper: string) => Promise<unknown> | unknown, RegExp]>([
  [
    'same size, other content',
    (u) => fs.writeFileSync(path.join(u, 'state/count'), '43\n'),
    /"state\/count" has other content/,
  ],
  [
    'other size',
    (u) => fs.writeFileSync(path.join(u, 'etc/to-modify.txt'), 'x'),
    /"etc\/to-modify.txt" has 1 bytes, was 9/,
  ],
  [
    'a file added',
    (u) => fs.writeFileSync(path.join(u, 'state/new'), ''),
    /"state\/new" was created after the checkpoint/,
  ],
  ['a directory added', (u) => fs.mkdirSync(path.join(u, 'newdir')), /"newdir\/" was created after the checkpoint/],
  ['a file removed', (u) => fs.rmSync(path.join(u, 'state/big.bin')), /"state\/big.bin" is gone/],
  ['mode changed', (u) => fs.chmodSync(path.join(u, 'etc/to-modify.txt'), 0o600), /mode 0600, was 0644/],
  ['owner changed', (u) => fs.chownSync(path.join(u, 'etc/to-modify.txt'), 5, 5), /owned by 5:5, was 0:0/],
  [
    'symlink retargeted',
    (u) => {
      fs.rmSync(path.join(u, 'etc/count-link'));
      fs.symlinkSync('/etc/passwd', path.join(u, 'etc/count-link'));
    },
    /points to "\/etc\/passwd"/,
  ],
  [
    'a deleted file back',
    (u) => fs.rmSync(path.join(u, 'etc/to-delete.txt')),
    /"etc\/to-delete.txt", deleted at the checkpoint, exists again/,
  ],
  [
    'a file deleted since',
    (u) => execa('mknod', [path.join(u, 'etc/gone-later'), 'c', '0', '0']),
    /"etc\/gone-later" was deleted after the checkpoint/,
  ],
  [
    'opaque marker removed',
    (u) => execa('setfattr', ['-x', 'trusted.overlay.opaque', path.join(u, 'var/cache')]),
    /"var\/cache\/" is no longer an opaque directory/,
  ],
  [
    'a file replaced by a directory',
    (u) => {
      fs.rmSync(path.join(u, 'state/count-copy'));
      fs.mkdirSync(path.join(u, 'state/count-copy'));
    },
    /"state\/count-copy" is a dir now, was a file/,
  ],
])('%s: differs', async (_what, change, why) => {
  const { upper, ckpt, lower } = await captured();
  await change(upper);
  expect(await layerDifference(ckpt, upper, [lower])).toMatch(why);
});

test('hard links: the captured layer is equal; a change through one name, or a name copied apart, differs', async () => {
  const { upper, ckpt, lower } = await captured();
  fs.writeFileSync(path.join(upper, 'state/linked'), 'one file\n');
  fs.mkdirSync(path.join(upper, 'other'));
  fs.linkSync(path.join(upper, 'state/linked'), path.join(upper, 'other/linked'));
  fs.linkSync(path.join(upper, 'state/linked'), path.join(upper, 'state/linked2'));
  await captureDiff(upper, ckpt);
  await expect(layerDifference(ckpt, upper, [lower])).resolves.toBeUndefined();

  fs.writeFileSync(path.join(upper, 'other/linked'), 'one fil!\n');
  expect(await layerDifference(ckpt, upper, [lower])).toMatch(/linked(2)?" has other content/);
  fs.writeFileSync(path.join(upper, 'other/linked'), 'one file\n');
  await expect(layerDifference(ckpt, upper, [lower])).resolves.toBeUndefined();

  // Same content, mode and owner, but no longer the same file.
  fs.rmSync(path.join(upper, 'state/linked2'));
  fs.copyFileSync(path.join(upper, 'state/linked'), path.join(upper, 'state/linked2'));
  expect(await layerDifference(ckpt, upper, [lower])).toMatch(/is no longer a hard link to/);
});

test('a directory copied up from the image unchanged (CRIU touching /tmp) is no change; with the image unknown it is', async () => {
  const { upper, ckpt, lower } = await captured();
  fs.mkdirSync(path.join(upper, 'tmp'));
  fs.chmodSync(path.join(upper, 'tmp'), 0o1777);
  await expect(layerDifference(ckpt, upper, [lower])).resolves.toBeUndefined();
  expect(await layerDifference(ckpt, upper, undefined)).toMatch(/"tmp\/" was created after the checkpoint/);
  // Copied up with another mode: a change the container sees.
  fs.chmodSync(path.join(upper, 'tmp'), 0o755);
  expect(await layerDifference(ckpt, upper, [lower])).toMatch(/"tmp\/" was created/);
});

test('cost: a layer of 500 files (measured, logged, not asserted)', async () => {
  const base = path.join(tmp, 'many');
  const upper = path.join(base, 'upper');
  const ckpt = path.join(base, 'ckpt');
  fs.mkdirSync(ckpt, { recursive: true });
  for (let i = 0; i < 500; i++) {
    const d = path.join(upper, `dir-${i % 20}`);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, `file-${i}`), Buffer.alloc(4096 + i, i % 251));
  }
  await captureDiff(upper, ckpt);
  const t = process.hrtime.bigint();
  expect(await layerDifference(ckpt, upper, [])).toBeUndefined();
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  process.stdout.write(`layerDifference over 500 files (${(500 * 4.3).toFixed(0)} KiB): ${ms.toFixed(1)} ms\n`);
});
