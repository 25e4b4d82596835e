import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { storeKeyCheck } from '../../core/doctor.js';
import { scratchRoom } from '../../core/seal.js';

/**
 * With a store key, every sealed checkpoint and restore needs the job's
 * plaintext to fit on a tmpfs: `arch-cli doctor` says where and how much
 * room there is (and fails where there is no tmpfs at all).
 */
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-doctor-key-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test('scratchRoom: the tmpfs roots only, with their free bytes', () => {
  expect(scratchRoom(['/proc', path.join(dir, 'absent')])).toEqual([]);
  const shm = scratchRoom(['/dev/shm']);
  expect(shm).toEqual([{ root: '/dev/shm', freeBytes: expect.any(Number) as number }]);
  expect(shm[0]!.freeBytes).toBeGreaterThan(0);
});

test('the store key line names the key and the room on the scratch tmpfs', () => {
  const key = path.join(dir, 'store.key');
  fs.writeFileSync(key, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const configFile = path.join(dir, 'arch.env');
  fs.writeFileSync(configFile, `ARCH_STORE_KEY_FILE=${key}\n`);
  const saved = process.env.ARCH_STORE_KEY_FILE;
  delete process.env.ARCH_STORE_KEY_FILE; // the settings file's, as on a node
  try {
    const c = storeKeyCheck({ configFile });
    expect(c).toMatchObject({ name: 'store key', ok: true, version: expect.stringMatching(/^[0-9a-f]{16}$/) });
    expect(c.detail).toMatch(/plaintext scratch on tmpfs: .*\/dev\/shm \(\d+\.\d GiB free\)/);
    expect(c.detail).toContain("must hold a sealed job's memory");
  } finally {
    if (saved !== undefined) process.env.ARCH_STORE_KEY_FILE = saved;
  }
});
