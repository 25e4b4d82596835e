import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CheckpointUnusableError } from '../../contract/errors.js';
import { readRollbackVolumes } from '../../core/env-contract.js';
import type { OciMount, OciSpec } from '../../core/oci-spec.js';
import { LINKS_NAME } from '../../core/closed-files.js';
import { keptFilesWriter } from '../../core/work-files.js';
import {
  captureVolumeFiles,
  grownVolumeFileFix,
  jobVolumes,
  prepareVolumeRollBacks,
  type VolumeFiles,
} from '../../core/volume-files.js';

/**
 * ARCH_ROLLBACK_VOLUMES: which of a container's mounts it names, what a job
 * holds open there (read from /proc of a real process whose "container
 * path" is the host directory itself), and the cut back before a restore on
 * real files, in the mount of the same destination.
 */
const roots: string[] = [];
const holders: ChildProcess[] = [];
afterEach(() => {
  for (const p of holders.splice(0)) p.kill('SIGKILL');
  for (const d of roots.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-volume-files-'));
  roots.push(d);
  return d;
};
const bind = (destination: string, source: string, ...opts: string[]): OciMount => ({
  destination,
  source,
  type: 'bind',
  options: ['rbind', ...opts],
});
const specOf = (...mounts: OciMount[]): OciSpec => ({ mounts });

describe('ARCH_ROLLBACK_VOLUMES', () => {
  test('comma-separated absolute paths, normalized, each once', () => {
    expect(readRollbackVolumes('/results, /logs/,/results')).toEqual({ paths: ['/results', '/logs'] });
    expect(readRollbackVolumes('')).toBeUndefined();
    expect(readRollbackVolumes(undefined)).toBeUndefined();
  });

  test.each([
    ['results', 'is not an absolute path'],
    ['/a/../etc', 'is not an absolute path without . or .. parts'],
    ['/', "the container's root (/) is not a volume"],
    ['/ok,/ba\td', 'is not an absolute path'],
  ])('%j is kept as an error naming the field and the fix', (v, what) => {
    const r = readRollbackVolumes(v);
    expect(r && 'invalid' in r).toBe(true);
    const err = (r as { invalid: Error & { field: string; fix: string } }).invalid;
    expect(err.field).toBe('ARCH_ROLLBACK_VOLUMES');
    expect(err.message).toContain(what);
    expect(err.fix).toContain('comma-separated');
  });

  test('more than 32 paths are refused', () => {
    const many = Array.from({ length: 33 }, (_, i) => `/v${i}`).join(',');
    expect(readRollbackVolumes(many)).toEqual({ invalid: expect.any(Error) });
  });
});

describe('jobVolumes', () => {
  test('named writable bind mounts are taken, the rest are said why', () => {
    const spec = specOf(
      bind('/results', '/srv/pv-1'),
      bind('/ro', '/srv/ro', 'ro'),
      bind('/scratch', '/var/lib/kubelet/pods/0a1b2c3d-1111-2222-3333-444455556666/volumes/kubernetes.io~empty-dir/s'),
      bind('/work', '/mnt/shared/work/default/j'),
      { destination: '/proc', type: 'proc', source: 'proc' },
    );
    const got = jobVolumes(spec, ['/results', '/ro', '/scratch', '/work', '/nothing', '/proc'], '/work');
    expect(got.volumes).toEqual([{ destination: '/results', source: '/srv/pv-1' }]);
    expect(got.ignored).toEqual([
      { destination: '/ro', why: 'it is mounted read-only' },
      { destination: '/scratch', why: 'it is an emptyDir, kept whole with every checkpoint' },
      { destination: '/work', why: 'it is the work directory, rolled back anyway' },
      { destination: '/nothing', why: 'no volume (bind mount) is mounted there' },
      { destination: '/proc', why: 'no volume (bind mount) is mounted there' },
    ]);
  });

  test('the last mount at a destination is the one the container sees', () => {
    const spec = specOf(bind('/results', '/srv/a'), { destination: '/results/', type: 'tmpfs', source: 'tmpfs' });
    expect(jobVolumes(spec, ['/results']).volumes).toEqual([]);
    expect(jobVolumes(specOf(bind('/results', '/srv/a'), bind('/results/', '/srv/b')), ['/results']).volumes).toEqual([
      { destination: '/results', source: '/srv/b' },
    ]);
  });
});

/** A process holding `redirections` (sh syntax, relative to dir) open until killed. */
async function holding(dir: string, redirections: string): Promise<number> {
  const p = spawn('sh', ['-c', `cd "$1" && exec ${redirections} sleep 60`, 'sh', dir], { stdio: 'ignore' });
  holders.push(p);
  await once(p, 'spawn');
  for (let i = 0; i < 200; i++) {
    if (fs.readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim() === 'sleep') return p.pid!;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('the holder never became sleep');
}

describe('capture, then roll back in the new mount', () => {
  test('files open for writing are recorded per volume, and cut back in the volume mounted at the same place', async () => {
    const vol = tmp();
    const other = tmp();
    fs.writeFileSync(path.join(vol, 'out.csv'), 'a,1\n');
    fs.mkdirSync(path.join(vol, 'logs'));
    fs.writeFileSync(path.join(vol, 'input.txt'), 'read only\n');
    fs.writeFileSync(path.join(other, 'o.txt'), 'o\n');
    // Here the "container path" is the host directory itself: /proc shows the files under it.
    const pid = await holding(vol, `3>>out.csv 4>logs/job.log 5<input.txt 6>>${other}/o.txt`);
    const captured = await captureVolumeFiles(
      [pid],
      [
        { destination: vol, source: vol },
        { destination: '/elsewhere', source: other },
      ],
    );
    await captured.sync(true);
    const tail = expect.stringMatching(/^[0-9a-f]{64}$/);
    expect(captured.records).toEqual([
      {
        destination: vol,
        files: [
          { path: 'out.csv', size: 4, ino: expect.any(String), append: true },
          { path: 'logs/job.log', size: 0, ino: expect.any(String), append: false },
        ],
        // The files the job does not hold open there (core/closed-files.ts).
        closed: [
          { path: 'input.txt', size: 10, ino: expect.any(String), tail, mtimeNs: expect.stringMatching(/^\d+$/) },
        ],
        // Its directories (and symlinks): what is not among them at the restore is the lost run's.
        closedNonFiles: ['logs'],
        // Every one of them has a second name there (put back if the lost run deletes or moves it).
        closedLinks: expect.stringMatching(LINKS_NAME),
      },
      // The holder's o.txt shows under the host path, not /elsewhere: not open there, as far as this place knows.
      {
        destination: '/elsewhere',
        files: [],
        closed: [{ path: 'o.txt', size: 2, ino: expect.any(String), tail, mtimeNs: expect.stringMatching(/^\d+$/) }],
        closedNonFiles: [],
        closedLinks: expect.stringMatching(LINKS_NAME),
      },
    ]);
    // The lost run went on writing; the restore's container mounts the same volume at /results.
    fs.appendFileSync(path.join(vol, 'out.csv'), 'b,2\nc,3\n');
    fs.appendFileSync(path.join(vol, 'logs/job.log'), 'later\n');
    const recorded: VolumeFiles[] = [{ ...captured.records[0]!, destination: '/results' }];
    const ready = await prepareVolumeRollBacks(specOf(bind('/results', vol)), recorded);
    expect(ready.map((r) => r.destination)).toEqual(['/results']);
    const cut = await ready[0]!.rollBack.apply(undefined);
    expect(cut).toEqual(
      expect.arrayContaining([
        { path: 'out.csv', from: 12, to: 4, how: 'cut' },
        { path: 'logs/job.log', from: 6, to: 0, how: 'cut' },
      ]),
    );
    expect(fs.readFileSync(path.join(vol, 'out.csv'), 'utf8')).toBe('a,1\n');
    expect(fs.readFileSync(path.join(vol, 'input.txt'), 'utf8')).toBe('read only\n');
  });

  test('a database the job rewrites in a volume is kept through the volume capture and written back whole', async () => {
    const vol = tmp();
    fs.writeFileSync(path.join(vol, 'state.db'), 'page1page2');
    const pid = await holding(vol, '3<>state.db');
    const captured = await captureVolumeFiles([pid], [{ destination: vol, source: vol }]);
    const kept = path.join(tmp(), 'kept-files.bin');
    const writer = await keptFilesWriter(kept, Infinity);
    await captured.keepContents(writer.sink);
    await writer.close();
    await captured.sync(false);
    expect(captured.records[0]!.files).toEqual([
      {
        path: 'state.db',
        size: 10,
        ino: expect.any(String),
        append: false,
        inPlace: { mtimeNs: expect.any(String) },
        kept: 0,
        mode: 0o644,
        uid: 0,
        gid: 0,
      },
    ]);
    fs.writeFileSync(path.join(vol, 'state.db'), 'PAGE1page2page3');
    const recorded: VolumeFiles[] = captured.records.map((r) => ({ ...r, destination: '/data' }));
    const [ready] = await prepareVolumeRollBacks(specOf(bind('/data', vol)), recorded);
    expect(await ready!.rollBack.apply(kept)).toEqual([{ path: 'state.db', from: 15, to: 10, how: 'rewritten' }]);
    expect(fs.readFileSync(path.join(vol, 'state.db'), 'utf8')).toBe('page1page2');
  });

  test('a volume not mounted in the new container, or a file replaced there: refused, nothing cut anywhere', async () => {
    const a = tmp();
    const b = tmp();
    fs.writeFileSync(path.join(a, 'x'), 'grown since\n');
    fs.writeFileSync(path.join(b, 'y'), 'y and more\n');
    const rec = (dir: string, name: string): VolumeFiles['files'][number] => ({
      path: name,
      size: 1,
      ino: String(fs.statSync(path.join(dir, name)).ino),
      append: false,
    });
    const recorded = [
      { destination: '/a', files: [rec(a, 'x')] },
      { destination: '/b', files: [rec(b, 'y')] },
    ];
    const missing = await prepareVolumeRollBacks(specOf(bind('/a', a)), recorded).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(CheckpointUnusableError);
    expect((missing as CheckpointUnusableError).reason).toBe('volume-files');
    expect(String(missing)).toContain('no writable volume mounted there: mount the same volume at /b');
    // Replaced: another inode under the name.
    fs.writeFileSync(path.join(b, 'y.new'), 'another file\n');
    fs.renameSync(path.join(b, 'y.new'), path.join(b, 'y'));
    const replaced = await prepareVolumeRollBacks(specOf(bind('/a', a), bind('/b', b)), recorded).catch(
      (e: unknown) => e,
    );
    expect(String(replaced)).toContain('"y" in the volume at /b is another file than the one the job had open');
    expect(String(replaced)).toContain('ARCH_ROLLBACK_VOLUMES says only this job writes there');
    expect(fs.readFileSync(path.join(a, 'x'), 'utf8')).toBe('grown since\n');
  });

  test('a symlink planted at a recorded name is not followed', async () => {
    const vol = tmp();
    const outside = tmp();
    fs.writeFileSync(path.join(outside, 'precious'), 'do not cut me\n');
    fs.writeFileSync(path.join(vol, 'out'), 'x');
    const files = [{ path: 'out', size: 0, ino: String(fs.statSync(path.join(vol, 'out')).ino), append: false }];
    fs.rmSync(path.join(vol, 'out'));
    fs.symlinkSync(path.join(outside, 'precious'), path.join(vol, 'out'));
    await expect(prepareVolumeRollBacks(specOf(bind('/v', vol)), [{ destination: '/v', files }])).rejects.toThrow(
      'is a symlink now in the volume at /v',
    );
    expect(fs.readFileSync(path.join(outside, 'precious'), 'utf8')).toBe('do not cut me\n');
  });
});

describe('grownVolumeFileFix', () => {
  const spec = specOf(bind('/results', '/srv/pv'), bind('/results/deep', '/srv/deep'), bind('/cfg', '/srv/cfg', 'ro'));
  test('names the volume to roll back, the deepest mount that holds the file', () => {
    const m =
      'criu failed (criu: Error (criu/files-reg.c:2114): File results/deep/out.csv has bad size 870 (expect 512))';
    expect(grownVolumeFileFix(m, spec, [])).toContain('set ARCH_ROLLBACK_VOLUMES=/results/deep on the container');
    expect(grownVolumeFileFix(m.replace('/deep', ''), spec, [])).toContain('ARCH_ROLLBACK_VOLUMES=/results ');
  });
  test('nothing for a volume already named, a read-only one, a file outside volumes, or another error', () => {
    expect(grownVolumeFileFix('File /results/a has bad size 2 (expect 1)', spec, ['/results'])).toBeUndefined();
    expect(grownVolumeFileFix('File /cfg/a has bad size 2 (expect 1)', spec, [])).toBeUndefined();
    expect(grownVolumeFileFix('File /tmp/a has bad size 2 (expect 1)', spec, [])).toBeUndefined();
    expect(grownVolumeFileFix("Can't fork for 7: File exists", spec, [])).toBeUndefined();
  });
});
