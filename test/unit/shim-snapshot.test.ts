import { execa } from 'execa';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { shimFrontCheck, shimSnapshotCheck } from '../../core/doctor.js';
import { REPO_ROOT } from '../support/images.js';

/**
 * bin/arch-runc starts its Node side from the V8 start-up snapshot the build
 * made (scripts/build-shim-snapshot.ts) only with the Node its stamp names,
 * unchanged since; otherwise through start.cjs. Any other Node would crash on
 * the blob, and a container create must not fail for that.
 *
 * Each test runs the real front on a copy of the built shim (ARCH_HOME), on
 * a `start` of a container the shim created (its marker file in the runc
 * root): the Node side looks at it and hands the call to ARCH_RUNC, here
 * /bin/echo, so the output shows the call arrived whole. Which way Node
 * started is made visible by removing the other way: no start.cjs, or a blob
 * of garbage (which crashes Node if it is ever used).
 */
const BUILT = path.join(REPO_ROOT, 'dist/shim');
const FRONT = path.join(REPO_ROOT, 'bin/arch-runc');
const ID = 'snap-1';
let home: string;
let root: string;
let conf: string;

beforeEach(() => {
  home = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-snapshot-'));
  const shim = path.join(home, 'dist/shim');
  fs.mkdirSync(shim, { recursive: true });
  for (const f of ['start.cjs', 'arch-runc.cjs', 'arch-runc.blob', 'arch-runc.blob.stamp'])
    fs.copyFileSync(path.join(BUILT, f), path.join(shim, f));
  root = path.join(home, 'runc/default');
  fs.mkdirSync(path.join(root, ID), { recursive: true });
  fs.writeFileSync(path.join(root, ID, 'arch.json'), '{}');
  conf = path.join(home, 'arch.env');
  // The runc the calls reach prints them, marked "direct" where the front execs it itself (no Node).
  const echo = path.join(home, 'runc-echo');
  fs.writeFileSync(echo, '#!/bin/sh\necho "${ARCH_RUNC_EXEC:+direct }$*"\n', { mode: 0o755 });
  fs.writeFileSync(conf, `ARCH_RUNC=${echo}\n`);
});
afterEach(() => fs.rmSync(home, { recursive: true, force: true }));

const shimFile = (f: string) => path.join(home, 'dist/shim', f);
const stamp = () => fs.readFileSync(shimFile('arch-runc.blob.stamp'), 'utf8').split('\n');

async function front(args: string[], env: Record<string, string> = {}) {
  return execa(FRONT, args, { env: { ARCH_CONFIG: conf, ARCH_HOME: home, ...env }, reject: false });
}
/** A call of an ARCH container that the front hands to Node, which passes it to runc unchanged. */
const call = () => [
  '--root',
  root,
  '--log',
  path.join(home, 'a log.json'),
  '--criu',
  '/nonexistent/criu',
  'restore',
  ID,
];
/** A blob that would crash Node: proves the front did not use it. */
const spoilBlob = () => fs.writeFileSync(shimFile('arch-runc.blob'), Buffer.alloc(4096, 0x5a));

test('the build made a blob and a stamp naming this Node', () => {
  const [node, , identity] = stamp();
  expect(node).toBe(fs.realpathSync(process.execPath));
  expect(identity).toMatch(/^(\d+:\d+:\d+:\d+:\d+;)+$/);
  expect(fs.statSync(shimFile('arch-runc.blob')).size).toBeGreaterThan(1 << 20);
});

test('with the Node the stamp names, unchanged: started from the snapshot (start.cjs is not needed), the call arrives whole', async () => {
  fs.rmSync(shimFile('start.cjs'));
  fs.rmSync(shimFile('arch-runc.cjs'));
  const r = await front(call());
  expect(r.stderr).toBe('');
  expect(r.exitCode).toBe(0);
  expect(r.stdout).toBe(call().join(' '));
});

test('from the snapshot, the exit code of the real runc comes back', async () => {
  fs.rmSync(shimFile('start.cjs'));
  fs.writeFileSync(conf, 'ARCH_RUNC=/bin/false\n');
  expect((await front(call())).exitCode).toBe(1);
});

test.each([
  [
    'the Node has changed since the build (another identity)',
    () => {
      const [node, libs, identity] = stamp();
      fs.writeFileSync(shimFile('arch-runc.blob.stamp'), `${node}\n${libs}\n${identity!.replace(/^\d+:\d+/, '1:1')}\n`);
    },
  ],
  [
    'the stamp names a Node that is not there',
    () => {
      const [, libs, identity] = stamp();
      fs.writeFileSync(shimFile('arch-runc.blob.stamp'), `/nonexistent/node\n${libs}\n${identity}\n`);
    },
  ],
  [
    'a library the stamp names is gone',
    () => {
      const [node, libs, identity] = stamp();
      fs.writeFileSync(shimFile('arch-runc.blob.stamp'), `${node}\n${libs} /nonexistent/libnode.so.1\n${identity}\n`);
    },
  ],
  ['no stamp', () => fs.rmSync(shimFile('arch-runc.blob.stamp'))],
  ['an empty stamp', () => fs.writeFileSync(shimFile('arch-runc.blob.stamp'), '')],
])('%s: started through start.cjs, the blob left alone', async (_what, change) => {
  spoilBlob();
  change();
  const r = await front(call());
  expect(r.stderr).toBe('');
  expect(r.exitCode).toBe(0);
  expect(r.stdout).toBe(call().join(' '));
});

test('ARCH_NODE_BIN naming another Node: that Node runs start.cjs', async () => {
  spoilBlob();
  const other = path.join(home, 'other-node');
  fs.writeFileSync(other, `#!/bin/sh\necho other-node >&2\nexec ${JSON.stringify(process.execPath)} "$@"\n`, {
    mode: 0o755,
  });
  const r = await front(call(), { ARCH_NODE_BIN: other });
  expect(r.stderr).toBe('other-node');
  expect(r.exitCode).toBe(0);
  expect(r.stdout).toBe(call().join(' '));
});

describe('arch-cli doctor says whether the front is built (without it no container starts under arch-runc)', () => {
  test('bin/arch-runc links to the built front: ok', async () => {
    fs.copyFileSync(path.join(BUILT, 'arch-runc'), shimFile('arch-runc'));
    fs.mkdirSync(path.join(home, 'bin'));
    fs.symlinkSync('../dist/shim/arch-runc', path.join(home, 'bin/arch-runc'));
    const c = await shimFrontCheck(home);
    expect(c).toMatchObject({ name: 'arch-runc front', ok: true });
    expect(c.detail).toContain(shimFile('arch-runc'));
  });

  test('a link to a front never built (a clone without npm run build), or no link: a failure naming the fix', async () => {
    fs.mkdirSync(path.join(home, 'bin'));
    fs.symlinkSync('../dist/shim/arch-runc', path.join(home, 'bin/arch-runc'));
    for (let i = 0; i < 2; i++) {
      const c = await shimFrontCheck(home);
      expect(c).toMatchObject({ ok: false, detail: expect.stringContaining('is not built') });
      expect(c.optional).toBeFalsy();
      expect(c.fix).toContain('npm run build');
      fs.rmSync(path.join(home, 'bin/arch-runc'), { force: true });
    }
  });
});

describe('arch-cli doctor says whether arch-runc starts from the snapshot (a warning, never a failure)', () => {
  test('the stamp holds: ok', async () => {
    const c = await shimSnapshotCheck(home);
    expect(c).toMatchObject({ name: 'arch-runc start-up snapshot', ok: true, optional: true });
    expect(c.detail).toContain(fs.realpathSync(process.execPath));
  });

  test('Node changed since the build: a warning that names the Node and the fix', async () => {
    const [node, libs, identity] = stamp();
    fs.writeFileSync(shimFile('arch-runc.blob.stamp'), `${node}\n${libs}\n${identity!.replace(/^\d+:\d+/, '1:1')}\n`);
    const c = await shimSnapshotCheck(home);
    expect(c).toMatchObject({ ok: false, optional: true });
    // It names the Node (and, where Node is a shared library as on Debian 13, libnode too).
    expect(c.detail!.startsWith(`${node} `)).toBe(true);
    expect(c.detail).toContain('changed since the build');
    expect(c.fix).toContain('install.sh');
  });

  test('no snapshot built: a warning', async () => {
    fs.rmSync(shimFile('arch-runc.blob.stamp'));
    expect(await shimSnapshotCheck(home)).toMatchObject({
      ok: false,
      optional: true,
      detail: expect.stringContaining('made no snapshot'),
    });
  });
});

describe('the snapshot build (scripts/build-shim-snapshot.ts) never fails the build', () => {
  /** The script and what it needs, in the temp ARCH_HOME (it works on the checkout it lives in). */
  function stageBuild(): string {
    for (const f of ['scripts/build-shim-snapshot.js', 'core/shim-snapshot.js']) {
      fs.mkdirSync(path.dirname(path.join(home, 'dist', f)), { recursive: true });
      fs.copyFileSync(path.join(REPO_ROOT, 'dist', f), path.join(home, 'dist', f));
    }
    fs.copyFileSync(path.join(REPO_ROOT, 'package.json'), path.join(home, 'package.json'));
    fs.symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(home, 'node_modules'));
    return path.join(home, 'dist/scripts/build-shim-snapshot.js');
  }

  test('a warm-up that fails: exit 0, a warning that says why, no stamp (the old blob is never used again)', async () => {
    const script = stageBuild();
    const r = await execa(process.execPath, [script], { env: { TMPDIR: path.join(home, 'missing') }, reject: false });
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toMatch(/^warning: no start-up snapshot for arch-runc .*mkdtemp/);
    expect(r.stderr).not.toMatch(/not yet fully verified/);
    expect(fs.existsSync(shimFile('arch-runc.blob.stamp'))).toBe(false);
    // And the front starts through start.cjs.
    spoilBlob();
    expect((await front(call())).stdout).toBe(call().join(' '));
  });

  test('a good build replaces the blob by a rename and writes the stamp for this Node', async () => {
    const script = stageBuild();
    const before = fs.statSync(shimFile('arch-runc.blob')).ino;
    const r = await execa(process.execPath, [script], { reject: false });
    expect(r.stderr).toBe('');
    expect(fs.statSync(shimFile('arch-runc.blob')).ino).not.toBe(before);
    expect(stamp()[0]).toBe(fs.realpathSync(process.execPath));
    fs.rmSync(shimFile('start.cjs'));
    expect((await front(call())).stdout).toBe(call().join(' '));
  });
});
