import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CHECKPOINT_LOCK_FILE, lockCheckpoint } from '../../core/shim-state.js';

let root: string;
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-lock-'));
  fs.mkdirSync(path.join(root, 'c1'));
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

test('one holder at a time, in this process too; released, it can be taken again', async () => {
  const a = await lockCheckpoint(root, 'c1');
  expect('release' in a).toBe(true);
  expect(fs.readFileSync(path.join(root, 'c1', CHECKPOINT_LOCK_FILE), 'utf8')).toBe(String(process.pid));
  expect(await lockCheckpoint(root, 'c1')).toEqual({ heldBy: process.pid });
  await (a as { release: () => Promise<void> }).release();
  expect(fs.existsSync(path.join(root, 'c1', CHECKPOINT_LOCK_FILE))).toBe(false);
  const b = await lockCheckpoint(root, 'c1');
  expect('release' in b).toBe(true);
  await (b as { release: () => Promise<void> }).release();
});

test('a lock held by another live process is refused; one left by a dead process is taken over', async () => {
  const file = path.join(root, 'c1', CHECKPOINT_LOCK_FILE);
  fs.writeFileSync(file, '1'); // init: alive
  expect(await lockCheckpoint(root, 'c1')).toEqual({ heldBy: 1 });
  const dead = spawnSync('true').pid!; // exited and reaped: its pid is free
  fs.writeFileSync(file, String(dead));
  const l = await lockCheckpoint(root, 'c1');
  expect('release' in l).toBe(true);
  expect(fs.readFileSync(file, 'utf8')).toBe(String(process.pid));
  await (l as { release: () => Promise<void> }).release();
});

test('no such container: the caller learns ENOENT', async () => {
  await expect(lockCheckpoint(root, 'nope')).rejects.toMatchObject({ code: 'ENOENT' });
});
