import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tar from 'tar';
import { CheckpointUnusableError } from '../../contract/errors.js';
import type { OciSpec } from '../../core/oci-spec.js';
import {
  captureVolume,
  keptVolumes,
  openInVolumes,
  podUidOf,
  volumeBytes,
  podScratchVolumes,
  keepVolumeFiles,
  undoVolumeWrite,
  restoreVolume,
  type VolumeRecord,
} from '../../core/pod-volumes.js';

/**
 * A pod's emptyDir kept with the checkpoint and written into the new pod's
 * (core/pod-volumes.ts), on real directories laid out as kubelet lays them
 * out: what is kept, what is written back (in a new pod and in the same
 * one), what is left alone, what refuses the restore, and what a restore
 * that fails after leaves.
 */
let root: string;
let from: string; // the old pod's emptyDir
let to: string; // the new pod's emptyDir
let tarFile: string;
const emptyDir = (pod: string) => path.join(root, 'kubelet/pods', pod, 'volumes/kubernetes.io~empty-dir/scratch');
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-volumes-'));
  from = emptyDir('0a6e1c1e-4a8e-4b8e-9c1e-000000000001');
  to = emptyDir('0a6e1c1e-4a8e-4b8e-9c1e-000000000002');
  fs.mkdirSync(from, { recursive: true });
  fs.mkdirSync(to, { recursive: true });
  tarFile = path.join(root, 'volume-0.tar');
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

const podSpec = (source: string, destination = '/scratch'): OciSpec => ({
  mounts: [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination, type: 'bind', source, options: ['rbind', 'rprivate', 'rw'] },
    { destination: '/etc/hosts', type: 'bind', source: '/var/lib/kubelet/pods/x/etc-hosts', options: ['rbind'] },
  ],
});

async function capture(): Promise<VolumeRecord> {
  const r = await captureVolume(from, tarFile);
  return { destination: '/scratch', pod: podUidOf(from), files: r.files, bytes: r.bytes };
}

test("a spec's emptyDir binds are found by kubelet's layout; host paths, /dev/shm and mounts over them are not", () => {
  expect(podScratchVolumes(podSpec(from))).toEqual([{ destination: '/scratch', source: from }]);
  expect(podScratchVolumes(podSpec('/data/host-path'))).toEqual([]);
  expect(podScratchVolumes(podSpec(from, '/dev/shm'))).toEqual([]);
  const over = podSpec(from);
  over.mounts!.push({ destination: '/scratch/', type: 'bind', source: '/srv/other', options: ['rbind'] });
  expect(podScratchVolumes(over)).toEqual([]);
  expect(podScratchVolumes(undefined)).toEqual([]);
});

test("a subPath of an emptyDir is found (kubelet's volume-subpaths bind); a subPath of another kind of volume is not", () => {
  const pod = path.join(root, 'kubelet/pods/0a6e1c1e-4a8e-4b8e-9c1e-000000000001');
  const subPath = (volume: string) => {
    const dir = path.join(pod, 'volume-subpaths', volume, 'job', '2');
    fs.mkdirSync(dir, { recursive: true });
    return dir;
  };
  fs.mkdirSync(path.join(pod, 'volumes/kubernetes.io~csi/data'), { recursive: true });
  expect(podScratchVolumes(podSpec(subPath('scratch'), '/tmp'))).toEqual([
    { destination: '/tmp', source: subPath('scratch') },
  ]);
  expect(podScratchVolumes(podSpec(subPath('data'), '/data'))).toEqual([]);
  expect(podScratchVolumes(podSpec(subPath('nothing'), '/x'))).toEqual([]);
});

test('a tree of files, directories, symlinks and second names comes back with contents, modes, owners and times', async () => {
  fs.mkdirSync(path.join(from, 'sub/deeper'), { recursive: true, mode: 0o750 });
  fs.writeFileSync(path.join(from, 'spill.bin'), Buffer.alloc(3 << 20, 9), { mode: 0o640 });
  fs.writeFileSync(path.join(from, 'sub/deeper/result.txt'), 'partial result\n', { mode: 0o600 });
  fs.chownSync(path.join(from, 'sub/deeper/result.txt'), 1234, 5678);
  fs.linkSync(path.join(from, 'spill.bin'), path.join(from, 'sub/spill-again.bin'));
  fs.symlinkSync('deeper/result.txt', path.join(from, 'sub/latest'));
  fs.symlinkSync('/etc/passwd', path.join(from, 'abs-link')); // a target is data, read in the container
  const old = new Date('2026-01-02T03:04:05Z');
  fs.utimesSync(path.join(from, 'sub/deeper/result.txt'), old, old);
  execFileSync('mkfifo', [path.join(from, 'fifo')]); // not a file to carry: left out

  const rec = await capture();
  expect(rec).toEqual({
    destination: '/scratch',
    pod: '0a6e1c1e-4a8e-4b8e-9c1e-000000000001',
    files: 7,
    bytes: (3 << 20) + 15,
  });
  // What an encrypted checkpoint's scratch is sized for: at least the files' bytes (directories and links add a little).
  expect(await volumeBytes({ destination: '/scratch', source: from })).toBeGreaterThanOrEqual(rec.bytes);
  expect(await volumeBytes({ destination: '/scratch', source: from })).toBeLessThan(rec.bytes + 64 * 1024);
  const r = await restoreVolume(tarFile, podSpec(to), rec);
  expect(r).toMatchObject({ samePod: false, replaced: [] });
  expect(r.hold).toBeUndefined();
  expect(r.created.sort()).toEqual(
    ['abs-link', 'spill.bin', 'sub', 'sub/deeper', 'sub/deeper/result.txt', 'sub/latest', 'sub/spill-again.bin'].sort(),
  );
  expect(fs.readFileSync(path.join(to, 'spill.bin')).equals(Buffer.alloc(3 << 20, 9))).toBe(true);
  const res = fs.statSync(path.join(to, 'sub/deeper/result.txt'));
  expect({ uid: res.uid, gid: res.gid, mode: res.mode & 0o777, mtime: res.mtime.toISOString() }).toEqual({
    uid: 1234,
    gid: 5678,
    mode: 0o600,
    mtime: old.toISOString(),
  });
  expect(fs.statSync(path.join(to, 'sub')).mode & 0o777).toBe(0o750);
  expect(fs.readlinkSync(path.join(to, 'sub/latest'))).toBe('deeper/result.txt');
  expect(fs.readlinkSync(path.join(to, 'abs-link'))).toBe('/etc/passwd');
  expect(fs.statSync(path.join(to, 'sub/spill-again.bin')).ino).toBe(fs.statSync(path.join(to, 'spill.bin')).ino);

  // A restore that fails after takes them all back.
  await undoVolumeWrite(podSpec(to), r);
  expect(fs.readdirSync(to)).toEqual([]);
});

/** A directory's entries and what each holds (a file's bytes, a symlink's target, a directory's entries). */
function tree(dir: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const at = path.join(dir, e.name);
    out[e.name] = e.isDirectory()
      ? tree(at)
      : e.isSymbolicLink()
        ? `-> ${fs.readlinkSync(at)}`
        : fs.readFileSync(at, 'utf8');
  }
  return out;
}

describe('in the same pod (the kubelet restarting a crashed container), its emptyDir outlived the container', () => {
  /** The emptyDir at a checkpoint left running, then what the lost run did after it. */
  async function lostRunAfterCheckpoint(): Promise<VolumeRecord> {
    fs.mkdirSync(path.join(from, 'out'));
    fs.writeFileSync(path.join(from, 'progress'), 'line 1\n');
    fs.writeFileSync(path.join(from, 'out/resume.pt'), 'step 1');
    fs.writeFileSync(path.join(from, 'tmp-gone-later'), 'removed by the lost run');
    const rec = await capture();
    fs.appendFileSync(path.join(from, 'progress'), 'line 2\n');
    fs.writeFileSync(path.join(from, 'out/resume.pt'), 'step 2');
    fs.rmSync(path.join(from, 'tmp-gone-later'));
    fs.writeFileSync(path.join(from, 'out/result-2'), 'made after the checkpoint');
    return rec;
  }
  const afterLostRun = {
    progress: 'line 1\nline 2\n',
    out: { 'resume.pt': 'step 2', 'result-2': 'made after the checkpoint' },
  };

  test("the job's names hold what they held at the checkpoint; names made after are left", async () => {
    const rec = await lostRunAfterCheckpoint();
    const w = await restoreVolume(tarFile, podSpec(from), rec);
    expect(w).toMatchObject({ samePod: true, created: ['tmp-gone-later'] });
    expect(w.replaced.map(([name]) => name).sort()).toEqual(['out/resume.pt', 'progress']);
    await keepVolumeFiles(podSpec(from), w);
    expect(tree(from)).toEqual({
      progress: 'line 1\n',
      out: { 'resume.pt': 'step 1', 'result-2': 'made after the checkpoint' },
      'tmp-gone-later': 'removed by the lost run',
    });
  });

  test('a restore that fails after puts back what the lost run left (the fresh start resumes from its own files)', async () => {
    const rec = await lostRunAfterCheckpoint();
    const w = await restoreVolume(tarFile, podSpec(from), rec);
    // Until the restore succeeds, what was replaced is held aside in one directory of ARCH's.
    expect(fs.readdirSync(from).filter((n) => n.startsWith('.arch-replaced-'))).toEqual([w.hold]);
    await undoVolumeWrite(podSpec(from), w);
    expect(tree(from)).toEqual(afterLostRun);
  });
});

test("in a new pod, names its init containers wrote are replaced by the job's, other names are left", async () => {
  fs.mkdirSync(path.join(from, 'data'));
  fs.writeFileSync(path.join(from, 'data/input'), 'input as the job read it');
  fs.writeFileSync(path.join(from, 'data/partial'), "the job's partial result");
  fs.symlinkSync('data/partial', path.join(from, 'latest'));
  const rec = await capture();
  // What an init container of the new pod wrote before the job's container is created.
  fs.mkdirSync(path.join(to, 'data'));
  fs.writeFileSync(path.join(to, 'data/input'), 'input downloaded again');
  fs.writeFileSync(path.join(to, 'data/other'), "not the job's");
  fs.writeFileSync(path.join(to, 'latest'), 'a file where the job had a symlink');
  const before = tree(to);
  const r = await restoreVolume(tarFile, podSpec(to), rec);
  expect(r).toMatchObject({ samePod: false, created: ['data/partial'] });
  expect(r.replaced.map(([name]) => name).sort()).toEqual(['data/input', 'latest']);
  expect(fs.readFileSync(path.join(to, 'data/input'), 'utf8')).toBe('input as the job read it');
  expect(fs.readFileSync(path.join(to, 'data/other'), 'utf8')).toBe("not the job's");
  expect(fs.readlinkSync(path.join(to, 'latest'))).toBe('data/partial');

  // A restore that fails after leaves the new pod's emptyDir as its init containers left it.
  await undoVolumeWrite(podSpec(to), r);
  expect(tree(to)).toEqual(before);
  // One that succeeds leaves nothing of ARCH's there.
  const again = await restoreVolume(tarFile, podSpec(to), rec);
  await keepVolumeFiles(podSpec(to), again);
  expect(fs.readdirSync(to).sort()).toEqual(['data', 'latest']);
});

test('in a new pod, a symlink or a directory where the job had something else refuses the restore: nothing written through it, created names taken back', async () => {
  fs.writeFileSync(path.join(from, 'a-first'), 'created, then taken back');
  fs.mkdirSync(path.join(from, 'sub'));
  fs.writeFileSync(path.join(from, 'sub/x'), 'job data');
  const rec = await capture();
  const outside = path.join(root, 'outside');
  fs.mkdirSync(outside);
  fs.symlinkSync(outside, path.join(to, 'sub'));
  await expect(restoreVolume(tarFile, podSpec(to), rec)).rejects.toMatchObject({ reason: 'volume' });
  expect(fs.readdirSync(outside)).toEqual([]);
  expect(fs.readdirSync(to)).toEqual(['sub']);

  fs.rmSync(path.join(to, 'sub'));
  fs.mkdirSync(path.join(to, 'sub/x'), { recursive: true }); // a directory where the job had a file
  fs.writeFileSync(path.join(to, 'a-first'), 'written by an init container'); // replaced, then put back
  await expect(restoreVolume(tarFile, podSpec(to), rec)).rejects.toThrow(/"sub\/x" is a directory/);
  expect(tree(to)).toEqual({ 'a-first': 'written by an init container', sub: { x: {} } });
});

test("a hold directory a stopped restore left at the emptyDir's root is not the job's: not captured", async () => {
  fs.mkdirSync(path.join(from, '.arch-replaced-0123456789abcdef'));
  fs.writeFileSync(path.join(from, '.arch-replaced-0123456789abcdef/0'), 'moved aside');
  fs.mkdirSync(path.join(from, 'sub/.arch-replaced-0123456789abcdef'), { recursive: true }); // below the root: the job's
  expect(await capture()).toMatchObject({ files: 2, bytes: 0 });
});

test("volumes over the node's ARCH_EMPTYDIR_MAX_BYTES are left, each measured on its own", async () => {
  fs.writeFileSync(path.join(from, 'spill'), Buffer.alloc(4096, 1));
  fs.writeFileSync(path.join(to, 'dataset'), Buffer.alloc(3 << 20, 2));
  const small = { destination: '/scratch', source: from };
  const big = { destination: '/cache', source: to };
  const r = await keptVolumes([small, big], 1 << 20);
  expect(r.kept).toEqual([{ volume: small, bytes: expect.any(Number) }]);
  expect(r.kept[0]!.bytes).toBeGreaterThanOrEqual(4096);
  expect(r.left).toEqual([{ destination: '/cache', bytes: expect.any(Number) }]);
  expect(r.left[0]!.bytes).toBeGreaterThanOrEqual(3 << 20);
  expect((await keptVolumes([small, big], Infinity)).left).toEqual([]);
  expect((await keptVolumes([small, big], 0)).kept).toEqual([]);
});

test('the files a process holds open below a volume are named (by its path there), at most 5 per volume', async () => {
  const fds = ['a', 'b', 'c', 'd', 'e', 'f'].map((n) => fs.openSync(path.join(to, n), 'w'));
  fds.push(fs.openSync(path.join(from, 'spill'), 'w'));
  try {
    const held = await openInVolumes([process.pid], [to, from, path.join(root, 'nothing-open')]);
    expect(held.get(to)).toHaveLength(5);
    expect(held.get(to)![0]).toBe(path.join(to, 'a'));
    expect(held.get(from)).toEqual([path.join(from, 'spill')]);
    expect(held.has(path.join(root, 'nothing-open'))).toBe(false);
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
});

test('capture reads no file and no directory through a symlink', async () => {
  const secret = path.join(root, 'host-secret');
  fs.mkdirSync(secret);
  fs.writeFileSync(path.join(secret, 'key'), 'host key');
  fs.symlinkSync(secret, path.join(from, 'dir-link'));
  fs.symlinkSync(path.join(secret, 'key'), path.join(from, 'file-link'));
  await capture();
  const listed: { path: string; type: string; size: number }[] = [];
  await tar.t({ file: tarFile, onReadEntry: (e) => listed.push({ path: e.path, type: e.type, size: e.size ?? 0 }) });
  expect(listed.sort((a, b) => a.path.localeCompare(b.path))).toEqual([
    { path: 'dir-link', type: 'SymbolicLink', size: 0 },
    { path: 'file-link', type: 'SymbolicLink', size: 0 },
  ]);
  expect(fs.readFileSync(tarFile).includes('host key')).toBe(false);
});

test('an emptyDir source that is itself a symlink is not read', async () => {
  const real = path.join(root, 'elsewhere');
  fs.mkdirSync(real);
  fs.rmSync(from, { recursive: true });
  fs.symlinkSync(real, from);
  await expect(captureVolume(from, tarFile)).rejects.toMatchObject({ code: 'ENOTDIR' }); // O_NOFOLLOW with O_DIRECTORY says so for a symlink
});

test('an archive that does not match its signed record, or a container without that emptyDir, refuses the restore', async () => {
  fs.writeFileSync(path.join(from, 'a'), 'abc');
  fs.writeFileSync(path.join(from, 'b'), 'def');
  const rec = await capture();
  await expect(restoreVolume(tarFile, podSpec(to), { ...rec, files: 1 })).rejects.toMatchObject({ reason: 'volume' });
  await expect(restoreVolume(tarFile, podSpec(to), { ...rec, bytes: 3 })).rejects.toBeInstanceOf(
    CheckpointUnusableError,
  );
  await expect(restoreVolume(tarFile, podSpec(to, '/elsewhere'), rec)).rejects.toThrow(
    /no emptyDir mounted there.*Mount the same emptyDir volume at \/scratch/,
  );
  expect(fs.readdirSync(to)).toEqual([]);
});

test('an empty emptyDir is kept as an empty archive and restores as nothing', async () => {
  const rec = await capture();
  expect(rec).toMatchObject({ destination: '/scratch', files: 0, bytes: 0 });
  expect(await restoreVolume(tarFile, podSpec(to), rec)).toEqual({
    destination: '/scratch',
    samePod: false,
    created: [],
    replaced: [],
  });
});
