import { containerIdOf, namespaceOfRoot, optionString, parseRuncArgs } from '../../core/runc-args.js';

const ROOT = '/run/containerd/runc/default';
const B = '/run/containerd/io.containerd.runtime.v2.task/default/job-1';
/** The globals containerd's runc shim (1.6) puts before every subcommand. */
const G = ['--root', ROOT, '--log', `${B}/log.json`, '--log-format', 'json'];

describe('parseRuncArgs on what containerd sends', () => {
  test('create', () => {
    const argv = [...G, 'create', '--bundle', B, '--pid-file', `${B}/init.pid`, 'job-1'];
    const c = parseRuncArgs(argv);
    expect(c.argv).toBe(argv);
    expect(c.subcommand).toBe('create');
    expect(c.root).toBe(ROOT);
    expect([...c.globals]).toEqual([
      ['--root', ROOT],
      ['--log', `${B}/log.json`],
      ['--log-format', 'json'],
    ]);
    expect(optionString(c, '--bundle', '-b')).toBe(B);
    expect(optionString(c, '--pid-file')).toBe(`${B}/init.pid`);
    expect(containerIdOf(c)).toBe('job-1');
    expect(namespaceOfRoot(c.root)).toBe('default');
  });

  test('create with a console socket and preserved fds, -b and = forms', () => {
    const c = parseRuncArgs([
      ...G,
      'create',
      '-b',
      B,
      '--console-socket=/tmp/s.sock',
      '--preserve-fds',
      '2',
      '--no-pivot',
      'job-1',
    ]);
    expect(optionString(c, '--bundle', '-b')).toBe(B);
    expect(optionString(c, '--console-socket')).toBe('/tmp/s.sock');
    expect(c.options.get('--no-pivot')).toBe(true);
    expect(c.positionals).toEqual(['job-1']);
  });

  test('start / delete / delete --force / delete -f / kill', () => {
    expect(containerIdOf(parseRuncArgs([...G, 'start', 'job-1']))).toBe('job-1');
    const d = parseRuncArgs([...G, 'delete', '--force', 'job-1']);
    expect(d.options.get('--force')).toBe(true);
    expect(containerIdOf(d)).toBe('job-1');
    // -f is --force for delete (boolean), not --format: the id must not be eaten.
    expect(containerIdOf(parseRuncArgs([...G, 'delete', '-f', 'job-1']))).toBe('job-1');
    const k = parseRuncArgs([...G, 'kill', '--all', 'job-1', '9']);
    expect(k.positionals).toEqual(['job-1', '9']);
  });

  test('checkpoint as containerd issues it', () => {
    const c = parseRuncArgs([
      ...G,
      'checkpoint',
      '--image-path',
      '/ck/img',
      '--work-path',
      '/ck/work',
      '--leave-running',
      '--manage-cgroups-mode',
      'soft',
      '--file-locks',
      'job-1',
    ]);
    expect(c.subcommand).toBe('checkpoint');
    expect(optionString(c, '--image-path')).toBe('/ck/img');
    expect(optionString(c, '--work-path')).toBe('/ck/work');
    expect(c.options.get('--leave-running')).toBe(true);
    expect(c.options.get('--manage-cgroups-mode')).toBe('soft');
    expect(containerIdOf(c)).toBe('job-1');
  });

  test('state/list with -f/--format take a value', () => {
    const l = parseRuncArgs(['--root', ROOT, 'list', '-f', 'json']);
    expect(l.options.get('-f')).toBe('json');
    expect(containerIdOf(l)).toBeUndefined();
    expect(containerIdOf(parseRuncArgs(['ps', '--format', 'json', 'job-1']))).toBe('job-1');
  });

  test('"--" ends options', () => {
    const c = parseRuncArgs(['exec', 'job-1', '--', 'sh', '-c', 'x']);
    expect(c.positionals).toEqual(['job-1', 'sh', '-c', 'x']);
  });

  test('no subcommand (--version, --help) and no --root', () => {
    const v = parseRuncArgs(['--version']);
    expect(v.subcommand).toBeUndefined();
    expect(v.globals.get('--version')).toBe(true);
    expect(v.root).toBe('/run/runc');
    expect(containerIdOf(v)).toBeUndefined();
  });

  test('global booleans and --root=', () => {
    const c = parseRuncArgs(['--debug', '--systemd-cgroup', '--root=/r/k8s.io', '--criu', '/opt/criu', 'state', 'x']);
    expect(c.root).toBe('/r/k8s.io');
    expect(c.globals.get('--debug')).toBe(true);
    expect(c.globals.get('--criu')).toBe('/opt/criu');
    expect(c.subcommand).toBe('state');
    expect(containerIdOf(c)).toBe('x');
  });

  test("an empty --root falls back to runc's default", () => {
    expect(parseRuncArgs(['--root', '', 'state', 'x']).root).toBe('/run/runc');
  });

  test('a trailing option without its value does not throw', () => {
    const c = parseRuncArgs(['--root']);
    expect(c.subcommand).toBeUndefined();
    expect(parseRuncArgs(['create', '--bundle']).options.get('--bundle')).toBe('');
  });
});

describe('namespaceOfRoot', () => {
  test.each([
    ['/run/containerd/runc/default', 'default'],
    ['/run/containerd/runc/k8s.io/', 'k8s.io'],
    ['/run/containerd/runc/k8s.io//', 'k8s.io'],
    ['/run/runc', 'runc'],
    ['relative/ns', 'ns'],
    // The caller validates: ".." must reach validateNamespace, not vanish.
    ['/run/containerd/runc/..', '..'],
    ['/', 'default'],
  ])('%p -> %p', (root, ns) => {
    expect(namespaceOfRoot(root)).toBe(ns);
  });
});
