import { archRuntimesOf, containerdConfigChecks, readTomlTables } from '../../core/containerd-config.js';

const CRI = 'plugins."io.containerd.grpc.v1.cri"';

/** A containerd 1.6/1.7 (version 2) config with an arch runtime, as the README shows it. */
function config(opts: { root?: string; restrict?: boolean; binary?: string; disabled?: string } = {}): string {
  return [
    'version = 2',
    `disabled_plugins = [${opts.disabled ?? ''}]`,
    '',
    `[${CRI}]`,
    `  restrict_oom_score_adj = ${opts.restrict ?? true}`,
    '  sandbox_image = "registry.example/pause:3.6" # a comment',
    `[${CRI}.containerd.runtimes.runc]`,
    '  runtime_type = "io.containerd.runc.v2"',
    `[${CRI}.containerd.runtimes.runc.options]`,
    '  BinaryName = ""',
    '  Root = ""',
    `[${CRI}.containerd.runtimes.arch]`,
    '  runtime_type = "io.containerd.runc.v2"',
    `[${CRI}.containerd.runtimes.arch.options]`,
    `  BinaryName = "${opts.binary ?? '/usr/local/bin/arch-runc'}"`,
    ...(opts.root !== undefined ? [`  Root = "${opts.root}"`] : []),
  ].join('\n');
}

const settings = { runcRootBase: '/run/containerd-a/runc', configFile: '/etc/arch/arch.env', hasSysResource: false };

describe('containerd CRI config checks', () => {
  test('the arch runtime with its own Root = ARCH_RUNC_ROOT and restrict_oom_score_adj: all ok', () => {
    const checks = containerdConfigChecks('/c.toml', config({ root: '/run/containerd-a/runc' }), settings);
    expect(checks).toEqual([expect.objectContaining({ ok: true, detail: expect.stringContaining('"arch"') })]);
  });

  test('no Root: a warning that every containerd on the host shares /run/containerd/runc/k8s.io', () => {
    const checks = containerdConfigChecks('/c.toml', config(), { ...settings, runcRootBase: '/run/containerd/runc' });
    expect(checks).toEqual([
      expect.objectContaining({ ok: false, optional: true, detail: expect.stringMatching(/no Root.*shares/) }),
    ]);
  });

  test('runc state elsewhere than ARCH_RUNC_ROOT: a failure naming both and the setting to change', () => {
    const [c] = containerdConfigChecks('/c.toml', config({ root: '/run/other/runc' }), settings);
    expect(c).toMatchObject({ ok: false, detail: expect.stringContaining('/run/other/runc') });
    expect(c!.optional).toBeFalsy();
    expect(c!.fix).toMatch(/ARCH_RUNC_ROOT=\/run\/other\/runc/);
    // No Root and a non-default ARCH_RUNC_ROOT: the same mismatch.
    expect(containerdConfigChecks('/c.toml', config(), settings)[0]).toMatchObject({
      ok: false,
      detail: expect.stringContaining('no Root'),
    });
  });

  test('restrict_oom_score_adj off: a failure only where containerd lacks CAP_SYS_RESOURCE', () => {
    const text = config({ root: '/run/containerd-a/runc', restrict: false });
    const without = containerdConfigChecks('/c.toml', text, settings);
    expect(without).toContainEqual(
      expect.objectContaining({ ok: false, fix: expect.stringContaining('restrict_oom_score_adj = true') }),
    );
    expect(containerdConfigChecks('/c.toml', text, { ...settings, hasSysResource: true }).every((c) => c.ok)).toBe(
      true,
    );
  });

  test('CRI plugin disabled, or no runtime runs arch-runc', () => {
    const off = containerdConfigChecks('/c.toml', config({ disabled: '"io.containerd.grpc.v1.cri"' }), settings);
    expect(off).toEqual([expect.objectContaining({ ok: true, detail: expect.stringContaining('disabled') })]);
    const none = containerdConfigChecks('/c.toml', config({ binary: '/usr/sbin/runc' }), settings);
    expect(none).toEqual([
      expect.objectContaining({ ok: false, optional: true, detail: expect.stringContaining('no CRI runtime') }),
    ]);
  });

  test('a line the reader does not understand is a warning naming the line', () => {
    const [c] = containerdConfigChecks('/c.toml', `${config()}\nthis is not toml`, settings);
    expect(c).toMatchObject({ ok: false, optional: true, detail: expect.stringMatching(/line 16: /) });
  });
});

describe('readTomlTables', () => {
  test('quoted table parts, strings with # and escapes, arrays, numbers, booleans', () => {
    const t = readTomlTables(
      ['a = 1', '[x."y.z" . w]', 'k = "v # not a comment \\" q" # comment', 'l = [\'a\', "b"]', 'b = false'].join('\n'),
    );
    expect(Object.fromEntries(t)).toEqual({
      a: 1,
      'x."y.z".w.k': 'v # not a comment " q',
      'x."y.z".w.l': ['a', 'b'],
      'x."y.z".w.b': false,
    });
  });

  test('runtimes found by BinaryName, with their Root', () => {
    const r = archRuntimesOf(readTomlTables(config({ root: '/r' })));
    expect(r).toEqual({
      criDisabled: false,
      restrictOomScoreAdj: true,
      runtimes: [{ handler: 'arch', binaryName: '/usr/local/bin/arch-runc', root: '/r' }],
    });
  });
});
