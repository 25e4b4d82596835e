import { containerdConfigChecks } from '../../core/containerd-config.js';
import { archRuntimesOf, parseContainerdConfig } from '../../core/containerd-toml.js';

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

const settings = { runcRootBase: '/run/containerd-a/runc', configFile: '/etc/arch/arch.env' };

/** Checks of one config file, read by a containerd with or without CAP_SYS_RESOURCE. */
function check(text: string, opts: { runcRootBase?: string; hasSysResource?: boolean } = {}) {
  return containerdConfigChecks([{ file: '/c.toml', text, hasSysResource: opts.hasSysResource ?? false }], {
    ...settings,
    runcRootBase: opts.runcRootBase ?? settings.runcRootBase,
  });
}

describe('containerd CRI config checks', () => {
  test('the arch runtime with its own Root = ARCH_RUNC_ROOT and restrict_oom_score_adj: all ok', () => {
    expect(check(config({ root: '/run/containerd-a/runc' }))).toEqual([
      expect.objectContaining({ ok: true, detail: '/c.toml: runtime "arch": Root /run/containerd-a/runc' }),
    ]);
  });

  test('no Root: a warning that a second containerd would share /run/containerd/runc/k8s.io', () => {
    expect(check(config(), { runcRootBase: '/run/containerd/runc' })).toEqual([
      expect.objectContaining({ ok: false, optional: true, detail: expect.stringMatching(/no Root.*share/) }),
    ]);
  });

  test('runc state elsewhere than ARCH_RUNC_ROOT: a failure naming both and the setting to change', () => {
    const [c] = check(config({ root: '/run/other/runc' }));
    expect(c).toMatchObject({ ok: false, detail: expect.stringContaining('/run/other/runc') });
    expect(c!.optional).toBeFalsy();
    expect(c!.fix).toMatch(/ARCH_RUNC_ROOT in \/etc\/arch\/arch.env/);
    // No Root and a non-default ARCH_RUNC_ROOT: the same mismatch.
    expect(check(config())[0]).toMatchObject({ ok: false, detail: expect.stringContaining('/run/containerd/runc') });
  });

  test("two containerd instances: the other node's own Root is fine, a shared one is a failure", () => {
    const a = { file: '/a.toml', text: config({ root: '/run/containerd-a/runc' }), hasSysResource: true };
    const b = { file: '/b.toml', text: config({ root: '/run/containerd-b/runc' }), hasSysResource: true };
    expect(containerdConfigChecks([a, b], settings).every((c) => c.ok)).toBe(true);
    const both = containerdConfigChecks([a, { ...b, text: a.text }], settings);
    expect(both).toEqual([
      expect.objectContaining({
        ok: false,
        detail: expect.stringMatching(/\/a.toml and \/b.toml keep runc state in the same/),
      }),
    ]);
  });

  test('restrict_oom_score_adj off: a failure only where containerd lacks CAP_SYS_RESOURCE', () => {
    const text = config({ root: '/run/containerd-a/runc', restrict: false });
    expect(check(text)).toContainEqual(
      expect.objectContaining({ ok: false, fix: expect.stringContaining('restrict_oom_score_adj = true') }),
    );
    expect(check(text, { hasSysResource: true }).every((c) => c.ok)).toBe(true);
  });

  test('CRI plugin disabled, or no runtime runs arch-runc', () => {
    expect(check(config({ disabled: '"io.containerd.grpc.v1.cri"' }))).toEqual([
      expect.objectContaining({ ok: true, detail: expect.stringContaining('disabled') }),
    ]);
    expect(check(config({ binary: '/usr/sbin/runc' }))).toEqual([
      expect.objectContaining({ ok: false, optional: true, detail: expect.stringContaining('no CRI runtime') }),
    ]);
  });

  test('a line the reader does not understand is a warning naming the line', () => {
    const [c] = check(`${config()}\nthis is not toml`);
    expect(c).toMatchObject({ ok: false, optional: true, detail: expect.stringMatching(/line 16: /) });
  });
});

describe('the config as TOML', () => {
  test('runtimes found by BinaryName, with their Root', () => {
    const r = archRuntimesOf(parseContainerdConfig(config({ root: '/r' })));
    expect(r).toEqual({
      criDisabled: false,
      restrictOomScoreAdj: true,
      runtimes: [{ handler: 'arch', binaryName: '/usr/local/bin/arch-runc', root: '/r' }],
    });
  });

  test("containerd 1.7's default config (arrays of tables, inline tables, multi-line arrays) is read, not refused", () => {
    // The README's runtime, then what containerd 1.7 writes besides it.
    const text = [
      config({ root: '/run/arch/k8s-runc' }),
      `  [${CRI}.cni]`,
      '    conf_dir = "/etc/cni/net.d"',
      '[plugins."io.containerd.transfer.v1.local"]',
      '  config_path = ""',
      '  [[plugins."io.containerd.transfer.v1.local".unpack_config]]',
      '    differ = ""',
      '    platform = "linux/amd64"',
      '    snapshotter = "overlayfs"',
      '[timeouts]',
      '  "io.containerd.timeout.shim.cleanup" = "5s"',
      '[proxy_plugins]',
      '[stream_processors]',
      '  [stream_processors."io.containerd.ocicrypt.decoder.v1.tar"]',
      '    accepts = [',
      '      "application/vnd.oci.image.layer.v1.tar+encrypted",',
      '    ]',
      '    env = ["OCICRYPT_KEYPROVIDER_CONFIG=/etc/containerd/ocicrypt/ocicrypt_keyprovider.conf"]',
      'imports = []',
    ].join('\n');
    // 'imports' after a table belongs to it in TOML: still nothing ARCH reads.
    expect(archRuntimesOf(parseContainerdConfig(text)).runtimes).toEqual([
      { handler: 'arch', binaryName: '/usr/local/bin/arch-runc', root: '/run/arch/k8s-runc' },
    ]);
    expect(check(text, { runcRootBase: '/run/arch/k8s-runc' })).toEqual([
      expect.objectContaining({ ok: true, detail: '/c.toml: runtime "arch": Root /run/arch/k8s-runc' }),
    ]);
  });

  test('a file that is not TOML: an optional failure naming the file and the line', () => {
    expect(check('version = 2\n[plugins\nx = 1\n')).toEqual([
      expect.objectContaining({ ok: false, optional: true, detail: expect.stringMatching(/^\/c\.toml: line 2: /) }),
    ]);
  });
});
