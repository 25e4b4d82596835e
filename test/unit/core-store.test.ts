import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { FORMAT_VERSION, type Manifest } from '../../core/manifest.js';
import { CheckpointStore, CURRENT_LINK } from '../../core/store.js';
import { testSigningKey } from '../support/arch-env.js';
import { checkpointUnusable } from '../support/input-error.js';

let tmp: string;
beforeAll(() => {
  testSigningKey(); // publish signs with this test run's key, not the machine's
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-store-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let n = 0;
function newStore(): CheckpointStore {
  return new CheckpointStore(path.join(tmp, `root-${++n}`, 'default', 'job-1'));
}

const META: Omit<Manifest, 'files'> = {
  formatVersion: FORMAT_VERSION,
  namespace: 'default',
  containerId: 'job-1',
  node: 'n',
  createdAt: '2026-11-28T00:00:00.000Z',
  mode: 'local',
  leaveRunning: false,
  runtime: { runc: 'r', criu: 'c' },
  timingsMs: {},
  rootfs: { files: 0, bytes: 0, deletions: 0 },
};

async function publishOne(store: CheckpointStore, content: string, fsync = false) {
  const st = await store.begin();
  fs.mkdirSync(path.join(st.dir, 'criu'));
  fs.writeFileSync(path.join(st.dir, 'criu/pages-1.img'), content);
  fs.writeFileSync(path.join(st.dir, 'rootfs-diff.tar'), Buffer.alloc(1024));
  return store.publish(st, META, { fsync });
}

/** Names in the container dir other than `current` and ckpt-* dirs. */
function leftovers(store: CheckpointStore): string[] {
  return fs.readdirSync(store.containerDir).filter((e) => e !== CURRENT_LINK && !/^ckpt-/.test(e));
}

test('empty store: no current, verifyCurrent says missing', async () => {
  const s = newStore();
  expect(await s.current()).toBeNull();
  expect(await s.readManifest()).toBeNull();
  expect((await checkpointUnusable(s.verifyCurrent())).reason).toBe('missing');
});

test('publish: current is a relative symlink to a ckpt dir that verifies; staging gone; dir is private', async () => {
  const s = newStore();
  const phases: string[] = [];
  const st = await s.begin();
  expect(path.basename(st.dir)).toMatch(new RegExp(`^\\.staging-${process.pid}-[0-9a-f]{8}$`));
  fs.writeFileSync(path.join(st.dir, 'a'), 'abc');
  const res = await s.publish(st, META, { fsync: true, onPhase: (p) => phases.push(p) });
  expect(phases).toEqual(['digest', 'fsync']);
  expect(res.sizeBytes).toBe(3);
  expect(res.manifest.files).toEqual([
    { path: 'a', size: 3, sha256: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad' },
  ]);
  const link = fs.readlinkSync(path.join(s.containerDir, CURRENT_LINK));
  expect(link).toMatch(/^ckpt-[0-9TZ-]+-[0-9a-f]{8}$/);
  expect(await s.current()).toBe(res.dir);
  expect(path.join(s.containerDir, link)).toBe(res.dir);
  expect((await s.verifyCurrent()).manifest).toEqual(res.manifest);
  expect(await s.readManifest()).toEqual(res.manifest);
  expect(fs.existsSync(st.dir)).toBe(false);
  expect(leftovers(s)).toEqual([]);
  expect(fs.statSync(s.containerDir).mode & 0o777).toBe(0o700);
});

test('a second publish replaces the first and removes it', async () => {
  const s = newStore();
  const first = await publishOne(s, 'one');
  const second = await publishOne(s, 'two');
  expect(second.dir).not.toBe(first.dir);
  expect(await s.current()).toBe(second.dir);
  expect(fs.existsSync(first.dir)).toBe(false);
  expect(fs.readFileSync(path.join(second.dir, 'criu/pages-1.img'), 'utf8')).toBe('two');
  expect(fs.readdirSync(s.containerDir).sort()).toEqual([path.basename(second.dir), CURRENT_LINK].sort());
});

test('a failed publish (unpublishable file in staging) keeps the previous checkpoint current and removes the staging dir', async () => {
  const s = newStore();
  const good = await publishOne(s, 'good');
  const st = await s.begin();
  fs.writeFileSync(path.join(st.dir, 'x'), 'x');
  fs.symlinkSync('/etc/passwd', path.join(st.dir, 'evil'));
  await expect(s.publish(st, META, { fsync: false })).rejects.toThrow(/not a regular file/);
  expect(await s.current()).toBe(good.dir);
  await expect(s.verifyCurrent()).resolves.toMatchObject({ dir: good.dir });
  expect(fs.existsSync(st.dir)).toBe(false);
  expect(leftovers(s)).toEqual([]);
});

test('a publish that fails after its rename (current is in the way) leaves no orphan checkpoint or temporary link', async () => {
  const s = newStore();
  const st = await s.begin();
  fs.writeFileSync(path.join(st.dir, 'x'), 'x');
  // Something that is not a symlink sits at `current`: the swap must fail...
  fs.mkdirSync(path.join(s.containerDir, CURRENT_LINK, 'occupied'), { recursive: true });
  await expect(s.publish(st, META, { fsync: false })).rejects.toThrow();
  // ...and nothing of the attempt may stay behind.
  expect(fs.readdirSync(s.containerDir)).toEqual([CURRENT_LINK]);
  // Such a `current` is refused, not followed.
  expect((await checkpointUnusable(s.current())).reason).toBe('layout');
});

test('abort removes the staging dir', async () => {
  const s = newStore();
  const st = await s.begin();
  fs.writeFileSync(path.join(st.dir, 'x'), 'x');
  await s.abort(st);
  expect(fs.existsSync(st.dir)).toBe(false);
});

test('begin removes staging dirs of dead processes, keeps those of live ones', async () => {
  const s = newStore();
  await publishOne(s, 'x');
  const dead = spawnSync('true').pid!; // exited and reaped: nobody has this pid now (or soon)
  const deadDir = path.join(s.containerDir, `.staging-${dead}-00000000`);
  const liveDir = path.join(s.containerDir, `.staging-${process.pid}-11111111`);
  const junkDir = path.join(s.containerDir, '.staging-notapid-22222222');
  for (const d of [deadDir, liveDir, junkDir]) fs.mkdirSync(d);
  const st = await s.begin();
  expect(fs.existsSync(deadDir)).toBe(false);
  expect(fs.existsSync(junkDir)).toBe(false);
  expect(fs.existsSync(liveDir)).toBe(true);
  await s.abort(st);
  fs.rmdirSync(liveDir);
});

describe('current: a link from shared storage is data, not trusted', () => {
  test.each([
    ['absolute', '/etc'],
    ['parent', '../../other/job/ckpt-2026-01-01T00-00-00-000Z-00000000'],
    ['foreign name', 'somewhere'],
    ['staging dir', '.staging-1-00000000'],
    ['nested', 'ckpt-2026-01-01T00-00-00-000Z-00000000/criu'],
  ])('%s target %p is refused', async (_n, target) => {
    const s = newStore();
    fs.mkdirSync(s.containerDir, { recursive: true });
    fs.symlinkSync(target, path.join(s.containerDir, CURRENT_LINK));
    const err = await checkpointUnusable(s.current());
    expect(err.reason).toBe('layout');
    expect(err.message).toContain(target);
    expect((await checkpointUnusable(s.verifyCurrent())).reason).toBe('layout');
  });

  test('a regular file named current is refused', async () => {
    const s = newStore();
    fs.mkdirSync(s.containerDir, { recursive: true });
    fs.writeFileSync(path.join(s.containerDir, CURRENT_LINK), 'ckpt-x');
    expect((await checkpointUnusable(s.current())).reason).toBe('layout');
  });

  test('a well-named target that does not exist: manifest-missing on verify', async () => {
    const s = newStore();
    fs.mkdirSync(s.containerDir, { recursive: true });
    fs.symlinkSync('ckpt-2026-01-01T00-00-00-000Z-0000abcd', path.join(s.containerDir, CURRENT_LINK));
    expect((await checkpointUnusable(s.verifyCurrent())).reason).toBe('manifest-missing');
  });

  test('a publish over a bad link replaces it', async () => {
    const s = newStore();
    fs.mkdirSync(s.containerDir, { recursive: true });
    fs.symlinkSync('/etc', path.join(s.containerDir, CURRENT_LINK));
    const res = await publishOne(s, 'fresh');
    expect(await s.current()).toBe(res.dir);
    expect(fs.existsSync('/etc/passwd')).toBe(true);
  });
});

test('tampering after publish is caught by verifyCurrent', async () => {
  const s = newStore();
  const res = await publishOne(s, 'abcdef');
  fs.writeFileSync(path.join(res.dir, 'criu/pages-1.img'), 'abcdeF');
  expect((await checkpointUnusable(s.verifyCurrent())).reason).toBe('corrupt');
  fs.writeFileSync(path.join(res.dir, 'criu/pages-1.img'), 'abc');
  expect((await checkpointUnusable(s.verifyCurrent())).reason).toBe('truncated');
});

test('remove deletes the container dir, and is idempotent', async () => {
  const s = newStore();
  await publishOne(s, 'x');
  await s.remove();
  expect(fs.existsSync(s.containerDir)).toBe(false);
  await s.remove();
  expect(await s.current()).toBeNull();
});
