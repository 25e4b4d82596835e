import { execa } from 'execa';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tar from 'tar';
import { CheckpointUnusableError } from '../../contract/errors.js';
import { DEVSHM_TAR } from '../../core/checkpoint-layout.js';
import { captureDevShm, devShmSource, removeDevShmFiles, restoreDevShm } from '../../core/dev-shm.js';
import type { OciSpec } from '../../core/oci-spec.js';

/**
 * A pod's /dev/shm kept with the checkpoint and written back into the new
 * pod's (core/dev-shm.ts), on real directories: what is kept, what is
 * replaced, and what refuses the restore before anything is written.
 */
let root: string;
let from: string; // the old pod's /dev/shm
let ck: string; // the checkpoint directory
let to: string; // the new pod's /dev/shm
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-devshm-'));
  for (const d of ['from', 'ck', 'to']) fs.mkdirSync(path.join(root, d));
  [from, ck, to] = ['from', 'ck', 'to'].map((d) => path.join(root, d)) as [string, string, string];
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

const IPC_OF_POD = { namespaces: [{ type: 'ipc', path: '/proc/1234/ns/ipc' }] };
const podSpec = (source: string): OciSpec => ({
  linux: IPC_OF_POD,
  mounts: [
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid'] },
    { destination: '/dev/shm', type: 'bind', source, options: ['rbind', 'ro'] },
  ],
});

test('the /dev/shm a spec binds in from the host is found; a tmpfs of its own is not', () => {
  expect(devShmSource(podSpec('/run/pod/shm'))).toBe('/run/pod/shm');
  const own = { namespaces: [{ type: 'ipc' }] };
  expect(devShmSource({ linux: own, mounts: [{ destination: '/dev/shm/', source: '/x', options: ['bind'] }] })).toBe(
    '/x',
  );
  expect(devShmSource({ linux: own, mounts: [{ destination: '/dev/shm', type: 'tmpfs', source: 'shm' }] })).toBe(
    undefined,
  );
  expect(devShmSource({ linux: own, mounts: [{ destination: '/dev/shm', type: 'bind', source: 'rel' }] })).toBe(
    undefined,
  );
  expect(devShmSource({})).toBeUndefined();
  // The host's IPC namespace (hostIPC, --ipc host): the node's own /dev/shm, never kept nor written.
  expect(devShmSource({ mounts: [{ destination: '/dev/shm', type: 'bind', source: '/dev/shm' }] })).toBeUndefined();
});

async function captured(): Promise<{ files: number; bytes: number }> {
  const r = await captureDevShm(from, ck);
  return { files: r.files, bytes: r.bytes };
}

test("its files come back in the new pod's /dev/shm: contents, modes, owners; names of the same file replaced, others left", async () => {
  fs.writeFileSync(path.join(from, 'psm_1'), Buffer.alloc(3 << 20, 7), { mode: 0o640 });
  fs.writeFileSync(path.join(from, 'sem.lock'), 'x', { mode: 0o666 });
  fs.chmodSync(path.join(from, 'sem.lock'), 0o666);
  fs.chownSync(path.join(from, 'sem.lock'), 1234, 5678);
  fs.mkdirSync(path.join(from, 'a-dir')); // not shared memory: left out
  fs.symlinkSync('/etc/passwd', path.join(from, 'a-link'));
  const rec = await captureDevShm(from, ck);
  expect(rec).toEqual({ files: 2, bytes: (3 << 20) + 1, skipped: expect.arrayContaining(['a-dir', 'a-link']) });

  fs.writeFileSync(path.join(to, 'psm_1'), 'what the lost run wrote after the checkpoint, longer than nothing');
  fs.writeFileSync(path.join(to, 'sidecar'), 'another container of the pod');
  const r = await restoreDevShm(ck, podSpec(to), rec);
  expect(r.names.sort()).toEqual(['psm_1', 'sem.lock']);
  expect(r.created).toEqual(['sem.lock']);
  expect(fs.readFileSync(path.join(to, 'psm_1')).equals(Buffer.alloc(3 << 20, 7))).toBe(true);
  expect(fs.statSync(path.join(to, 'psm_1')).mode & 0o7777).toBe(0o640);
  const sem = fs.statSync(path.join(to, 'sem.lock'));
  expect([sem.mode & 0o7777, sem.uid, sem.gid]).toEqual([0o666, 1234, 5678]);
  expect(fs.readFileSync(path.join(to, 'sidecar'), 'utf8')).toBe('another container of the pod');
  expect(fs.readdirSync(to).sort()).toEqual(['psm_1', 'sem.lock', 'sidecar']);
  // A restore that fails later takes back only what it created (a semaphore left behind could hang the fresh start).
  await removeDevShmFiles(podSpec(to), r.created);
  expect(fs.readdirSync(to).sort()).toEqual(['psm_1', 'sidecar']);
});

test('an empty /dev/shm: nothing to write, and no bound /dev/shm is needed then', async () => {
  const rec = await captured();
  expect(rec).toEqual({ files: 0, bytes: 0 });
  await expect(restoreDevShm(ck, { mounts: [] }, rec)).resolves.toEqual({ names: [], created: [] });
});

async function refusal(p: Promise<unknown>): Promise<string> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CheckpointUnusableError);
  expect((err as CheckpointUnusableError).reason).toBe('devshm');
  return (err as Error).message;
}

test('a symlink or a FIFO at a name in the new /dev/shm refuses the restore; nothing is written, nothing followed', async () => {
  fs.writeFileSync(path.join(from, 'a'), 'A');
  fs.writeFileSync(path.join(from, 'b'), 'B');
  const rec = await captured();
  const outside = path.join(root, 'outside');
  fs.writeFileSync(outside, 'host file');
  fs.symlinkSync(outside, path.join(to, 'b'));
  expect(await refusal(restoreDevShm(ck, podSpec(to), rec))).toMatch('/dev/shm/b is a symlink');
  expect(fs.readFileSync(outside, 'utf8')).toBe('host file');
  expect(fs.existsSync(path.join(to, 'a'))).toBe(false);

  fs.rmSync(path.join(to, 'b'));
  await execa('mkfifo', [path.join(to, 'b')]);
  expect(await refusal(restoreDevShm(ck, podSpec(to), rec))).toMatch('/dev/shm/b is not a regular file');
  expect(fs.existsSync(path.join(to, 'a'))).toBe(false);
});

test("files kept, and this container's /dev/shm a tmpfs of its own: refused with the reason, not lost silently", async () => {
  fs.writeFileSync(path.join(from, 'a'), 'A');
  const rec = await captured();
  expect(
    await refusal(
      restoreDevShm(
        ck,
        { linux: IPC_OF_POD, mounts: [{ destination: '/dev/shm', type: 'tmpfs', source: 'shm' }] },
        rec,
      ),
    ),
  ).toMatch("this container's /dev/shm is not a pod's (a tmpfs of its own");
});

test('an archive that is not what the signed manifest says is refused before anything is written', async () => {
  fs.writeFileSync(path.join(from, 'a'), 'AAAA');
  const rec = await captured();
  expect(await refusal(restoreDevShm(ck, podSpec(to), { files: 2, bytes: rec.bytes }))).toMatch(
    'holds 1 files, the manifest records 2',
  );
  // A directory and a nested file, as an archive from elsewhere would hold.
  fs.mkdirSync(path.join(root, 'evil', 'd'), { recursive: true });
  fs.writeFileSync(path.join(root, 'evil', 'd', 'f'), 'x');
  await tar.c({ file: path.join(ck, DEVSHM_TAR), cwd: path.join(root, 'evil') }, ['d/f']);
  expect(await refusal(restoreDevShm(ck, podSpec(to), { files: 1, bytes: 1 }))).toMatch(
    '"d/f" is not a file at the top of /dev/shm',
  );
  expect(fs.readdirSync(to)).toEqual([]);
  // More bytes than signed: refused by the layer archive's own check.
  await expect(restoreDevShm(ck, podSpec(to), { files: 1, bytes: 0 })).rejects.toThrow(/archive-size|more than/);
});

test("a file with two names (a semaphore and CRIU's link remap of it) comes back as one file with both names", async () => {
  fs.writeFileSync(path.join(from, 'sem.mp-abc'), 'semaphore');
  fs.linkSync(path.join(from, 'sem.mp-abc'), path.join(from, 'link_remap.3'));
  const rec = await captured();
  expect(rec).toEqual({ files: 2, bytes: 9 });
  fs.writeFileSync(path.join(to, 'link_remap.3'), 'a stale file of that name'); // replaced, as a file is
  const r = await restoreDevShm(ck, podSpec(to), rec);
  expect(r.names.sort()).toEqual(['link_remap.3', 'sem.mp-abc']);
  expect(r.created).toEqual(['sem.mp-abc']);
  const [a, b] = ['sem.mp-abc', 'link_remap.3'].map((n) => fs.statSync(path.join(to, n)));
  expect([a!.ino, a!.nlink, fs.readFileSync(path.join(to, 'link_remap.3'), 'utf8')]).toEqual([b!.ino, 2, 'semaphore']);
});

test('a second name that is a symlink in the new /dev/shm refuses the restore; the symlink target is untouched', async () => {
  fs.writeFileSync(path.join(from, 'sem.x'), 'S');
  fs.linkSync(path.join(from, 'sem.x'), path.join(from, 'link_remap.1'));
  const rec = await captured();
  const outside = path.join(root, 'outside');
  fs.writeFileSync(outside, 'host file');
  fs.symlinkSync(outside, path.join(to, 'link_remap.1'));
  expect(await refusal(restoreDevShm(ck, podSpec(to), rec))).toMatch('/dev/shm/link_remap.1 is a symlink');
  expect(fs.readFileSync(outside, 'utf8')).toBe('host file');
  expect(fs.readdirSync(to)).toEqual(['link_remap.1']);
});
