import { CommanderError, type Command } from 'commander';
import { targetFrom } from '../../cli/connect.js';
import { buildProgram } from '../../cli/program.js';
import { ArchInputError } from '../../contract/errors.js';
import { loadSettings } from '../../core/settings.js';
import { workerOptionsFrom, workerProgram, type WorkerFlags } from '../../worker/options.js';

/**
 * One meaning per flag name (issue 13): -n/--namespace is a containerd
 * namespace, --temporal-namespace (or TEMPORAL_NAMESPACE) is Temporal's.
 * Every command of arch-cli and arch-worker is parsed here with its actions
 * replaced by a recorder: nothing runs, no Temporal is needed.
 */
const settings = loadSettings({ ARCH_CONFIG: '/dev/null', TEMPORAL_NAMESPACE: 'from-env' });

/** Every leaf command, with the arguments it needs to parse; `containerd`: it takes -n/--namespace. */
const COMMANDS: Record<string, { args: string[]; temporal: boolean; containerd: boolean }> = {
  migrate: { args: ['default/job', '--from', 'a', '--to', 'b'], temporal: true, containerd: false },
  drain: { args: ['a'], temporal: true, containerd: true },
  reclaim: { args: ['a'], temporal: true, containerd: false },
  pause: { args: ['--node', 'a'], temporal: true, containerd: true },
  resume: { args: ['--node', 'a'], temporal: true, containerd: true },
  'schedule create': {
    args: ['nightly', '--node', 'a', '--pause', '22:00', '--resume', '06:00'],
    temporal: true,
    containerd: true,
  },
  'schedule ls': { args: [], temporal: true, containerd: false },
  'schedule rm': { args: ['nightly'], temporal: true, containerd: false },
  'schedule pause': { args: ['nightly'], temporal: true, containerd: false },
  'schedule unpause': { args: ['nightly'], temporal: true, containerd: false },
  'schedule trigger': { args: ['nightly', '--action', 'pause'], temporal: true, containerd: false },
  protect: { args: ['default/job', '--every', '10m'], temporal: true, containerd: false },
  ls: { args: [], temporal: true, containerd: true },
  status: { args: [], temporal: true, containerd: false },
  nodes: { args: [], temporal: true, containerd: false },
  dev: { args: [], temporal: true, containerd: true },
  'temporal-setup': { args: [], temporal: true, containerd: false },
  'codec-server': { args: [], temporal: false, containerd: false },
  finalize: { args: [], temporal: false, containerd: true },
  doctor: { args: [], temporal: false, containerd: false },
  // Its own dev server, in namespace default, and its own containerd namespace (arch-demo).
  demo: { args: [], temporal: false, containerd: false },
};

interface Parsed {
  command: string;
  opts: Record<string, unknown>;
  temporalNamespace: string;
}

function leaves(cmd: Command, prefix: string[] = []): Array<{ path: string; cmd: Command }> {
  return cmd.commands
    .filter((c) => c.name() !== 'help')
    .flatMap((c) =>
      c.commands.length ? leaves(c, [...prefix, c.name()]) : [{ path: [...prefix, c.name()].join(' '), cmd: c }],
    );
}

async function program() {
  const { program, ctx } = await buildProgram(settings);
  let parsed: Parsed | undefined;
  for (const { path, cmd } of leaves(program)) {
    cmd.configureOutput({ writeErr: () => undefined });
    cmd.action((...args: unknown[]) => {
      parsed = {
        command: path,
        opts: args.at(-2) as Record<string, unknown>,
        temporalNamespace: targetFrom(settings, ctx.globals()).namespace,
      };
    });
  }
  for (const c of [program, ...program.commands]) c.configureOutput({ writeErr: () => undefined });
  return {
    program,
    async parse(argv: string[]): Promise<Parsed> {
      await program.parseAsync(argv, { from: 'user' });
      if (!parsed) throw new Error(`no command ran for ${argv.join(' ')}`);
      return parsed;
    },
  };
}

const parse = async (argv: string[]) => (await program()).parse(argv);

async function usageError(argv: string[]): Promise<CommanderError> {
  const err = await parse(argv).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CommanderError);
  return err as CommanderError;
}

const argvOf = (name: string) => [...name.split(' '), ...COMMANDS[name]!.args];

test('the table covers every command arch-cli has, and says truly which take -n/--namespace', async () => {
  const all = leaves((await program()).program);
  expect(all.map((l) => l.path).sort()).toEqual(Object.keys(COMMANDS).sort());
  for (const { path, cmd } of all) {
    const ns = cmd.options.find((o) => o.long === '--namespace');
    expect([path, !!ns]).toEqual([path, COMMANDS[path]!.containerd]);
    if (ns) expect(ns.short).toBe('-n');
    // Nothing but the global option names the Temporal namespace.
    expect(cmd.options.some((o) => o.long === '--temporal-namespace')).toBe(false);
  }
});

describe.each(Object.keys(COMMANDS).filter((c) => COMMANDS[c]!.temporal))('%s', (name) => {
  test('--temporal-namespace names the Temporal namespace, before or after the command', async () => {
    expect((await parse(argvOf(name))).temporalNamespace).toBe('from-env');
    expect((await parse(['--temporal-namespace', 'tns', ...argvOf(name)])).temporalNamespace).toBe('tns');
    const after = await parse([...argvOf(name), '--temporal-namespace=tns2']);
    expect(after).toMatchObject({ command: name, temporalNamespace: 'tns2' });
    expect(after.opts.namespace).toBeUndefined();
  });
});

describe.each(Object.keys(COMMANDS).filter((c) => COMMANDS[c]!.containerd))('%s', (name) => {
  test('-n/--namespace is the containerd namespace; the Temporal one stays put', async () => {
    for (const flag of ['-n', '--namespace']) {
      const p = await parse([...argvOf(name), flag, 'k8s.io']);
      expect(p.command).toBe(name);
      expect([p.opts.namespace].flat()).toEqual(['k8s.io']);
      expect(p.temporalNamespace).toBe('from-env');
    }
    const both = await parse(['--temporal-namespace', 'tns', ...argvOf(name), '-n', 'default']);
    expect([both.opts.namespace].flat()).toEqual(['default']);
    expect(both.temporalNamespace).toBe('tns');
  });
});

describe.each(Object.keys(COMMANDS).filter((c) => !COMMANDS[c]!.containerd))('%s', (name) => {
  test('--namespace is refused, pointing to --temporal-namespace', async () => {
    for (const flag of [['--namespace', 'x'], ['-n', 'x'], ['--namespace=x']]) {
      const err = await usageError([...argvOf(name), ...flag]);
      expect(err.code).toBe('commander.unknownOption');
      expect(err.message).toContain(`\`arch-cli ${name}\` takes no containerd namespace`);
      expect(err.message).toContain('--temporal-namespace');
    }
  });
});

test('--namespace before any command is refused the same way (it used to be the Temporal namespace)', async () => {
  for (const argv of [
    ['--namespace', 'x', 'status'],
    ['-n', 'x', 'ls'],
  ]) {
    const err = await usageError(argv);
    expect(err.message).toMatch(/names a containerd namespace.*--temporal-namespace/);
  }
});

test('the issue: `dev --namespace archbars` is the containerd namespace of the worker', async () => {
  const p = await parse(['dev', '--namespace', 'archbars']);
  expect(p.opts.namespace).toEqual(['archbars']);
  expect(p.temporalNamespace).toBe('from-env');
});

test("finalize's old --ns says what it is called now", async () => {
  expect((await usageError(['finalize', '--ns', 'x'])).message).toMatch(/--ns is now -n\/--namespace/);
  expect((await parse(['finalize', '-n', 'a', 'b', '-n', 'c'])).opts.namespace).toEqual(['a', 'b', 'c']);
});

describe('arch-worker', () => {
  const worker = (argv: string[]) =>
    workerOptionsFrom(workerProgram(settings).parse(argv, { from: 'user' }).opts<WorkerFlags>(), settings);

  test('--temporal-namespace is the Temporal namespace; -n/--namespace (repeatable) the containerd ones', () => {
    const o = worker(['--node', 'a', '--temporal-namespace', 'tns', '-n', 'default', '--namespace', 'k8s.io']);
    expect(o.settings.temporalNamespace).toBe('tns');
    expect(o.namespaces).toEqual(['default', 'k8s.io']);
  });

  test('without flags: TEMPORAL_NAMESPACE, and every containerd namespace', () => {
    const o = worker(['--node', 'a']);
    expect(o.settings.temporalNamespace).toBe('from-env');
    expect(o.namespaces).toBeUndefined();
  });

  test('--runc-root is where the worker lists, checkpoints and records exits (searched first)', () => {
    const o = worker(['--node', 'a', '--runc-root', '/run/node-b/runc']);
    expect(o.settings.runcRootBase).toBe('/run/node-b/runc');
    expect(o.settings.runcRoots[0]).toBe('/run/node-b/runc');
  });

  test('a containerd namespace that is no name is refused, naming the flag', () => {
    expect(() => worker(['--node', 'a', '-n', '../etc'])).toThrow(ArchInputError);
    expect(() => worker(['--node', 'a', '-n', '../etc'])).toThrow(/--namespace/);
  });
});
