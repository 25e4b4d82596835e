import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CONTAINERD_DEFAULT_RUNC_ROOT } from '../../core/containerd-toml.js';
import { containerdConfigRoots, dockerExecRoot, findRuncRoots, runcRootOf } from '../../core/runc-roots.js';
import { loadSettings, type Settings } from '../../core/settings.js';

/** Where ARCH looks for runc's state: settings, containerd's config, Docker's daemon.json. */
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-runc-roots-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const settings = (over: Partial<Settings>): Settings => ({
  ...loadSettings({ ARCH_CONFIG: path.join(tmp, 'none.env') }),
  ...over,
});

test("containerd config: the runtimes' Root options (v2 and v3 tables); comments and other tables ignored", () => {
  const text = [
    'version = 2',
    'root = "/var/lib/containerd"',
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
    '  BinaryName = ""',
    '  Root = ""',
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.arch.options]',
    '  BinaryName = "/usr/local/bin/arch-runc"',
    '  Root = "/run/arch/k8s-runc/"  # its own',
    '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata.options]',
    "  Root = '/run/kata-runc'",
    '[plugins."io.containerd.grpc.v1.cri".registry]',
    '  Root = "/not/a/runtime"',
    '# Root = "/commented/out"',
  ].join('\n');
  expect(containerdConfigRoots(text)).toEqual(['/run/arch/k8s-runc', '/run/kata-runc']);
});

test('docker daemon.json: exec-root when set', () => {
  expect(dockerExecRoot('{"exec-root": "/srv/docker-exec/"}')).toBe('/srv/docker-exec');
  expect(dockerExecRoot('{"data-root": "/srv/docker"}')).toBeUndefined();
  expect(() => dockerExecRoot('{not json')).toThrow();
});

test('discovery: ARCH_RUNC_ROOT entries first, then containerd default and config roots, then Docker; missing named roots warn', async () => {
  const named = path.join(tmp, 'named');
  const cri = path.join(tmp, 'cri-root');
  const exec = path.join(tmp, 'docker-exec');
  fs.mkdirSync(named);
  fs.mkdirSync(cri);
  fs.mkdirSync(path.join(exec, 'runtime-runc'), { recursive: true });
  const cdConfig = path.join(tmp, 'config.toml');
  fs.writeFileSync(
    cdConfig,
    `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n  Root = "${cri}"\n`,
  );
  const dkConfig = path.join(tmp, 'daemon.json');
  fs.writeFileSync(dkConfig, JSON.stringify({ 'exec-root': exec }));
  const missing = path.join(tmp, 'missing');
  const found = await findRuncRoots(
    settings({
      runcRoots: [named, missing],
      discoverRuncRoots: true,
      containerdConfig: cdConfig,
      dockerConfig: dkConfig,
    }),
  );
  expect(found.searched.map((s) => s.base)).toEqual([
    named,
    missing,
    CONTAINERD_DEFAULT_RUNC_ROOT,
    cri,
    path.join(exec, 'runtime-runc'),
  ]);
  expect(found.bases).toEqual(expect.arrayContaining([named, cri, path.join(exec, 'runtime-runc')]));
  expect(found.bases).not.toContain(missing);
  expect(found.warnings).toEqual([
    { field: 'ARCH_RUNC_ROOT', message: expect.stringContaining(`${missing} does not exist`) },
  ]);
  expect(found.searched.find((s) => s.base === path.join(exec, 'runtime-runc'))?.source).toContain(dkConfig);
});

test('discovery off: only ARCH_RUNC_ROOT; config files named in settings that are missing warn with their setting', async () => {
  const only = path.join(tmp, 'only');
  fs.mkdirSync(only);
  const off = await findRuncRoots(settings({ runcRoots: [only], discoverRuncRoots: false }));
  expect(off.searched.map((s) => s.base)).toEqual([only]);
  expect(off.warnings).toEqual([]);
  const bad = await findRuncRoots(
    settings({
      runcRoots: [],
      discoverRuncRoots: true,
      containerdConfig: path.join(tmp, 'no-config.toml'),
      dockerConfig: path.join(tmp, 'no-daemon.json'),
    }),
  );
  expect(bad.warnings.map((w) => w.field)).toEqual(['ARCH_CONTAINERD_CONFIG', 'ARCH_DOCKER_CONFIG']);
  // Docker's default exec-root is still searched.
  expect(bad.searched.map((s) => s.base)).toContain('/run/docker/runtime-runc');
});

test('a containerd config that is not TOML: a warning naming the setting and the line; the default roots are still searched', async () => {
  const cdConfig = path.join(tmp, 'broken.toml');
  fs.writeFileSync(cdConfig, 'version = 2\n[plugins."io.containerd.grpc.v1.cri"\n');
  const found = await findRuncRoots(
    settings({ runcRoots: [], discoverRuncRoots: true, containerdConfig: cdConfig, dockerConfig: path.join(tmp, 'x') }),
  );
  expect(found.warnings).toContainEqual({
    field: 'ARCH_CONTAINERD_CONFIG',
    message: expect.stringMatching(
      /broken\.toml is not valid TOML \(line 2: .*\): its runtimes' Root options were not searched/,
    ),
  });
  expect(found.searched.map((s) => s.base)).toContain(CONTAINERD_DEFAULT_RUNC_ROOT);
});

test('ARCH_RUNC_ROOT is a list (":" or ","), relative entries refused; runcRootBase is its first entry', () => {
  const s = loadSettings({ ARCH_CONFIG: path.join(tmp, 'none.env'), ARCH_RUNC_ROOT: '/a/runc:/b/runc,/a/runc' });
  expect(s.runcRoots).toEqual(['/a/runc', '/b/runc']);
  expect(s.runcRootBase).toBe('/a/runc');
  expect(s.discoverRuncRoots).toBe(true);
  expect(() => loadSettings({ ARCH_CONFIG: path.join(tmp, 'none.env'), ARCH_RUNC_ROOT: '/a:rel' })).toThrow(
    /ARCH_RUNC_ROOT/,
  );
  const d = loadSettings({ ARCH_CONFIG: path.join(tmp, 'none.env') });
  expect(d.runcRoots).toEqual([]);
  expect(d.runcRootBase).toBe('/run/containerd/runc');
});

test('runcRootOf: the base that holds the container, else the first', async () => {
  const a = path.join(tmp, 'of-a');
  const b = path.join(tmp, 'of-b');
  fs.mkdirSync(path.join(b, 'moby', 'c1'), { recursive: true });
  fs.writeFileSync(path.join(b, 'moby', 'c1', 'state.json'), '{}');
  fs.mkdirSync(a);
  const s = settings({ runcRoots: [a, b], runcRootBase: a, discoverRuncRoots: false });
  expect(await runcRootOf(s, 'moby', 'c1')).toBe(path.join(b, 'moby'));
  expect(await runcRootOf(s, 'moby', 'c2')).toBe(path.join(a, 'moby'));
});
