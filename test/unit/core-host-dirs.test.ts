import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  allowedRootOf,
  holdDir,
  mayRemove,
  RECORD_SUFFIX,
  requireAllowedRoot,
  type OwnerRecord,
} from '../../core/host-dirs.js';
import { loadSettings, parseAllowedRoots } from '../../core/settings.js';
import { CheckpointStore } from '../../core/store.js';
import { inputError } from '../support/input-error.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-host-dirs-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const rec = (o: Partial<OwnerRecord> = {}): OwnerRecord => ({
  kind: 'checkpoint',
  namespace: 'default',
  key: 'job',
  containerId: 'job',
  node: 'n',
  createdByArch: true,
  createdAt: '',
  ...o,
});

describe('allowed roots', () => {
  test('the longest root that holds the path; a prefix of a name is not a root of it', () => {
    expect(allowedRootOf('/var/lib/arch/x', ['/var/lib', '/var/lib/arch'])).toBe('/var/lib/arch');
    expect(allowedRootOf('/var/lib/arch', ['/var/lib/arch'])).toBe('/var/lib/arch');
    expect(allowedRootOf('/var/lib/archive/x', ['/var/lib/arch'])).toBeUndefined();
  });

  test('outside every root: the error names the field, the roots and the setting to change', () => {
    const err = inputError(() => requireAllowedRoot('/etc/x', ['/var/lib/arch'], 'ARCH_CHECKPOINT_HOST_PATH'));
    expect(err.field).toBe('ARCH_CHECKPOINT_HOST_PATH');
    expect(err.message).toMatch(
      /"\/etc\/x" is not under a root this node allows \(\/var\/lib\/arch\).*ARCH_ALLOWED_ROOTS/,
    );
  });

  test('ARCH_ALLOWED_ROOTS: default /var/lib/arch, lists by ":" or ",", the default checkpoint root always in, "/" refused', () => {
    expect(parseAllowedRoots(undefined, '/var/lib/arch/checkpoints')).toEqual([
      '/var/lib/arch',
      '/var/lib/arch/checkpoints',
    ]);
    expect(parseAllowedRoots('/a:/b, /c', '/d')).toEqual(['/a', '/b', '/c', '/d']);
    expect(inputError(() => parseAllowedRoots('/a:/', '/d')).field).toBe('ARCH_ALLOWED_ROOTS');
    expect(inputError(() => parseAllowedRoots('rel', '/d')).field).toBe('ARCH_ALLOWED_ROOTS');
  });

  test('the environment wins over the settings file', () => {
    const file = path.join(dir, 'arch.env');
    fs.writeFileSync(file, 'ARCH_ALLOWED_ROOTS=/from/file\nARCH_LOG_FILE=/from/file.log\n');
    const s = loadSettings({ ARCH_CONFIG: file, ARCH_ALLOWED_ROOTS: '/from/env', ARCH_LOG_FILE: '/from/env.log' });
    expect(s.allowedRoots).toContain('/from/env');
    expect(s.allowedRoots).not.toContain('/from/file');
    expect(s.logFile).toBe('/from/env.log');
  });
});

describe('holdDir', () => {
  test('creates the missing directories, reports the record, refuses a symlink on the way', async () => {
    const h = (await holdDir({
      root: dir,
      target: path.join(dir, 'a/b/c'),
      kind: 'checkpoint',
      create: true,
      field: 'F',
    }))!;
    expect(h.created).toBe(true);
    expect(h.record).toBeUndefined();
    await h.writeRecord(rec());
    await h.close();
    expect(JSON.parse(fs.readFileSync(path.join(dir, `a/b/c${RECORD_SUFFIX}`), 'utf8')).containerId).toBe('job');
    const again = (await holdDir({
      root: dir,
      target: path.join(dir, 'a/b/c'),
      kind: 'checkpoint',
      create: false,
      field: 'F',
    }))!;
    expect(again.created).toBe(false);
    expect(again.record?.key).toBe('job');
    await again.close();

    fs.symlinkSync(path.join(dir, 'a'), path.join(dir, 'link'));
    const err = await holdDir({
      root: dir,
      target: path.join(dir, 'link/b/c'),
      kind: 'checkpoint',
      create: true,
      field: 'F',
    }).catch((e: Error) => e);
    expect(String(err)).toMatch(/link" is a symlink/);
    fs.writeFileSync(path.join(dir, 'file'), '');
    expect(
      String(
        await holdDir({ root: dir, target: path.join(dir, 'file/x'), kind: 'work', create: true, field: 'F' }).catch(
          (e: Error) => e,
        ),
      ),
    ).toMatch(/is not a directory/);
  });

  test('nothing is created inside another ARCH directory, and a work dir is never a checkpoint dir', async () => {
    const w = (await holdDir({
      root: dir,
      target: path.join(dir, 'work/default/a'),
      kind: 'work',
      create: true,
      field: 'F',
    }))!;
    await w.writeRecord(rec({ kind: 'work', key: 'a', containerId: 'a' }));
    await w.close();
    const inside = await holdDir({
      root: dir,
      target: path.join(dir, 'work/default/a/x/y'),
      kind: 'checkpoint',
      create: true,
      field: 'F',
    }).catch((e: Error) => e);
    expect(String(inside)).toMatch(/lies inside the shared work directory of container default\/a/);
    expect(fs.existsSync(path.join(dir, 'work/default/a/x'))).toBe(false);
    const same = await holdDir({
      root: dir,
      target: path.join(dir, 'work/default/a'),
      kind: 'checkpoint',
      create: false,
      field: 'F',
    }).catch((e: Error) => e);
    expect(String(same)).toMatch(/is the shared work directory of container default\/a/);
  });

  test('a root that does not exist yet: nothing to find, or made on first use', async () => {
    const root = path.join(dir, 'new-root');
    expect(
      await holdDir({ root, target: path.join(root, 'ns/id'), kind: 'checkpoint', create: false, field: 'F' }),
    ).toBeUndefined();
    const h = (await holdDir({
      root,
      target: path.join(root, 'ns/id'),
      kind: 'checkpoint',
      create: true,
      field: 'F',
    }))!;
    expect(h.created).toBe(true);
    await h.close();
  });

  test('absent target without create: undefined', async () => {
    expect(
      await holdDir({ root: dir, target: path.join(dir, 'none/x'), kind: 'work', create: false, field: 'F' }),
    ).toBeUndefined();
  });
});

describe('removal', () => {
  test('only a directory ARCH created for that very container', () => {
    expect(mayRemove(undefined, 'checkpoint', 'default', 'job')).toMatchObject({
      ok: false,
      why: expect.stringMatching(/no ownership record/),
    });
    expect(mayRemove(rec({ createdByArch: false }), 'checkpoint', 'default', 'job').ok).toBe(false);
    expect(mayRemove(rec({ containerId: 'other' }), 'checkpoint', 'default', 'job')).toMatchObject({
      ok: false,
      why: 'it belongs to container default/other',
    });
    expect(mayRemove(rec({ kind: 'work' }), 'checkpoint', 'default', 'job').ok).toBe(false);
    expect(mayRemove(rec(), 'checkpoint', 'default', 'job').ok).toBe(true);
  });

  test('CheckpointStore: a directory it did not create keeps its files; its own goes', async () => {
    const foreign = path.join(dir, 'default/foreign');
    fs.mkdirSync(foreign, { recursive: true });
    fs.writeFileSync(path.join(foreign, 'keep.txt'), 'x');
    const guard = { root: dir, field: 'ARCH_CHECKPOINT_HOST_PATH' };
    const owner = { namespace: 'default', key: 'foreign', containerId: 'foreign', node: 'n' };
    expect(await new CheckpointStore(foreign, guard).remove({ namespace: 'default', id: 'foreign' })).toMatchObject({
      removed: false,
    });
    await expect(new CheckpointStore(foreign, guard).begin(owner)).rejects.toThrow(
      /exists and is not an ARCH checkpoint directory/,
    );
    expect(fs.existsSync(path.join(foreign, 'keep.txt'))).toBe(true);

    const own = new CheckpointStore(path.join(dir, 'default/own'), guard);
    const staging = await own.begin({ ...owner, key: 'own', containerId: 'own' });
    await own.abort(staging);
    expect(await own.remove({ namespace: 'default', id: 'someone-else' })).toMatchObject({ removed: false });
    expect(await own.remove({ namespace: 'default', id: 'own' })).toEqual({ removed: true });
    expect(fs.existsSync(path.join(dir, 'default/own'))).toBe(false);
    expect(fs.existsSync(path.join(dir, `default/own${RECORD_SUFFIX}`))).toBe(false);
  });
});
