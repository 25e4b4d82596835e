import { execa } from 'execa';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { layerBytes } from '../../core/node-containers.js';

/**
 * A drain or finalize lists the node's ARCH containers with the size of
 * their writable layer, walking it while the container runs. A job that
 * writes a temporary file and renames it into place (the test counter does,
 * every tick) makes entries vanish between the listing and their lstat:
 * that once made the listing skip the container, so a drain left it behind.
 */
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-layer-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

test('layerBytes counts the regular files, in subdirectories too', async () => {
  fs.mkdirSync(path.join(dir, 'a/b'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'top'), Buffer.alloc(100));
  fs.writeFileSync(path.join(dir, 'a/b/deep'), Buffer.alloc(2000));
  fs.symlinkSync('top', path.join(dir, 'link'));
  expect(await layerBytes(dir)).toBe(2100);
});

test('layerBytes of a layer whose files are written and renamed meanwhile never fails', async () => {
  const kept = path.join(dir, 'kept');
  fs.mkdirSync(kept);
  for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(kept, `f${i}`), Buffer.alloc(1024));
  // Another process, as the container's job: temp files appear and are renamed away all the time.
  const churn = path.join(dir, 'state');
  fs.mkdirSync(churn);
  // It churns until told to stop (a minute at most), so the walks below all overlap it however slow the machine is.
  const stop = path.join(dir, 'stop-writer');
  const writer = execa(process.execPath, [
    '-e',
    `
    const fs = require('fs'), p = require('path'), d = ${JSON.stringify(churn)}, end = Date.now() + 60000;
    for (let n = 0; Date.now() < end && !fs.existsSync(${JSON.stringify(stop)}); n++) {
      const t = p.join(d, 'count.tmp.' + (n % 50));
      fs.writeFileSync(t, String(n));
      fs.renameSync(t, p.join(d, 'count'));
    }
  `,
  ]);
  await waitForFile(path.join(churn, 'count'));
  for (let walk = 0; walk < 25; walk++) {
    expect(await layerBytes(dir)).toBeGreaterThanOrEqual(300 * 1024);
  }
  expect(writer.exitCode).toBeNull(); // still churning after the last walk
  fs.writeFileSync(stop, '');
  await writer;
});

async function waitForFile(file: string): Promise<void> {
  for (let i = 0; i < 1000 && !fs.existsSync(file); i++) await new Promise((r) => setTimeout(r, 10));
}
