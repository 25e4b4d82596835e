/**
 * Parse a runc command line as containerd's shim writes it:
 *   [global options] SUBCOMMAND [options] [ID]
 * e.g. --root /run/containerd/runc/default --log B/log.json --log-format json
 *      create --bundle B --pid-file B/init.pid ID
 * Only what ARCH needs is interpreted; the original argv is always kept so a
 * pass-through hands runc exactly what it was given.
 */
const GLOBAL_WITH_VALUE = new Set(['--log', '--log-format', '--root', '--criu', '--rootless']);
// Subcommand options that take a value (runc 1.1). Unknown options are assumed
// to be boolean; an unknown option with a value makes the id guess wrong, in
// which case the caller sees no valid id and passes the call through.
const SUB_WITH_VALUE = new Set([
  '--bundle',
  '-b',
  '--console-socket',
  '--pid-file',
  '--preserve-fds',
  '--image-path',
  '--work-path',
  '--parent-path',
  '--page-server',
  '--status-fd',
  '--manage-cgroups-mode',
  '--empty-ns',
  '--signal',
  '-s',
  '--format',
  '-f',
  '--lsm-profile',
  '--lsm-mount-context',
]);

export interface RuncCall {
  argv: string[];
  globals: Map<string, string | true>;
  subcommand: string | undefined;
  /** Where the subcommand stands in argv (argv.length when there is none). */
  subcommandIndex: number;
  options: Map<string, string | true>;
  positionals: string[];
  /** runc's state root (--root), default /run/runc. */
  root: string;
}

function splitEq(arg: string): [string, string | undefined] {
  const eq = arg.indexOf('=');
  return eq > 0 ? [arg.slice(0, eq), arg.slice(eq + 1)] : [arg, undefined];
}

export function parseRuncArgs(argv: string[]): RuncCall {
  const globals = new Map<string, string | true>();
  const options = new Map<string, string | true>();
  const positionals: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('-')) break;
    const [name, inline] = splitEq(a);
    if (inline !== undefined) globals.set(name, inline);
    else if (GLOBAL_WITH_VALUE.has(name)) globals.set(name, argv[++i] ?? '');
    else globals.set(name, true);
  }
  const subcommand = argv[i];
  const sub = i;
  for (i++; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('-') && a.length > 1) {
      const [name, inline] = splitEq(a);
      // The subcommand's own option names differ from the global ones; `-f` is
      // --force for delete but --format for state/list, both harmless here.
      if (inline !== undefined) options.set(name, inline);
      else if (SUB_WITH_VALUE.has(name) && !(name === '-f' && subcommand === 'delete'))
        options.set(name, argv[++i] ?? '');
      else options.set(name, true);
    } else {
      positionals.push(a);
    }
  }
  const root = globals.get('--root');
  return {
    argv,
    globals,
    subcommand,
    subcommandIndex: sub,
    options,
    positionals,
    root: typeof root === 'string' && root ? root : '/run/runc',
  };
}

export function optionString(call: RuncCall, ...names: string[]): string | undefined {
  for (const n of names) {
    const v = call.options.get(n);
    if (typeof v === 'string') return v;
  }
  return undefined;
}

/**
 * Descriptors beyond stdio that runc itself uses from the caller: the N after
 * stdio that --preserve-fds hands to the container, and --status-fd. The
 * front (shim/arch-runc.c) execs runc (everything inherited); where Node starts runc these
 * must be passed on by number, or they are lost.
 */
export function inheritedFds(call: RuncCall): number[] {
  const out = new Set<number>();
  const n = Number(optionString(call, '--preserve-fds') ?? 0);
  if (Number.isInteger(n) && n > 0 && n <= 1024) for (let fd = 3; fd < 3 + n; fd++) out.add(fd);
  const status = Number(optionString(call, '--status-fd') ?? -1);
  if (Number.isInteger(status) && status >= 3 && status <= 65535) out.add(status);
  return [...out].sort((a, b) => a - b);
}

/**
 * `runc run -d` as the two calls it stands for: create (same options, less
 * run's own) and start. The globals are kept as they are.
 */
export function splitDetachedRun(call: RuncCall, id: string): { create: string[]; start: string[] } {
  const globals = call.argv.slice(0, call.subcommandIndex);
  const rest = call.argv
    .slice(call.subcommandIndex + 1)
    .filter((a) => !['-d', '--detach', '--keep', '-d=true', '--detach=true'].includes(a));
  return { create: [...globals, 'create', ...rest], start: [...globals, 'start', id] };
}

/** The container id: the first positional after the subcommand. */
export function containerIdOf(call: RuncCall): string | undefined {
  return call.positionals[0];
}

/** containerd's runc shim uses --root <base>/<namespace>: the namespace is its last component. */
export function namespaceOfRoot(root: string): string {
  const parts = root.replace(/\/+$/, '').split('/');
  return parts[parts.length - 1] || 'default';
}
