/**
 * io_uring refused inside ARCH containers, through the container's seccomp
 * filter: io_uring_setup, io_uring_enter and io_uring_register answer ENOSYS,
 * as on a kernel built without io_uring.
 *
 * Why: no checkpoint can take an io_uring instance (the kernel will not pass
 * one to CRIU, core/open-files.ts), and runtimes open them without being
 * asked. libuv from 1.49 (Node.js 22 and later, Debian 13's Node.js 20 on
 * the system libuv 1.50) opens one per event loop to batch its epoll calls,
 * whatever UV_USE_IO_URING says (that switch only governs its SQPOLL ring for
 * files), so no Node.js job there could ever be checkpointed. Every io_uring
 * user falls back when io_uring_setup fails (libuv to plain epoll, liburing
 * callers to their synchronous paths), because Docker's and containerd's own
 * default profiles refuse it too, as Android's and ChromeOS's do.
 *
 * ENOSYS, not the EPERM of a plain refusal: "this kernel has no io_uring" is
 * the answer every fallback is written for. Never a kill (SIGSYS): a libuv
 * that meets one dies in uv_loop_init.
 */
export const IO_URING_SYSCALLS = ['io_uring_setup', 'io_uring_enter', 'io_uring_register'] as const;

const ENOSYS = 38;

/** An OCI seccomp rule (linux.seccomp.syscalls[]): the fields ARCH reads; the others are kept as they are. */
interface SeccompRule {
  names?: string[];
  action?: string;
  errnoRet?: number;
  [k: string]: unknown;
}
interface Seccomp {
  defaultAction?: string;
  architectures?: string[];
  syscalls?: SeccompRule[];
  [k: string]: unknown;
}

/** What this reads and writes of an OCI spec (core/oci-spec.ts describes the rest, and calls this). */
interface SpecWithLinux {
  linux?: { [k: string]: unknown };
}

/** Actions under which a call fails without reaching the kernel; any other (ALLOW, LOG, TRACE, NOTIFY) may let it through. */
const REFUSING = new Set([
  'SCMP_ACT_ERRNO',
  'SCMP_ACT_KILL',
  'SCMP_ACT_KILL_THREAD',
  'SCMP_ACT_KILL_PROCESS',
  'SCMP_ACT_TRAP',
]);
const refuses = (action: string | undefined) => action !== undefined && REFUSING.has(action);

/**
 * The architectures a new filter covers: the native one and those its
 * binaries may also run as. A filter lists only the native one otherwise,
 * and the kernel kills a 32-bit program's first call under it.
 */
function hostArchitectures(): string[] | undefined {
  if (process.arch === 'x64') return ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'];
  if (process.arch === 'arm64') return ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM'];
  return undefined;
}

/**
 * The spec with io_uring refused (ENOSYS) by its seccomp filter:
 * - no filter (runc's default, Kubernetes' Unconfined): one that allows
 *   everything else;
 * - a filter that allows io_uring, by its default action or a rule (Docker
 *   20.10's default profile lists the three calls): those rules lose them and
 *   a rule refusing them is added;
 * - a filter that refuses them already (Docker 25's default, recent
 *   containerd releases'): unchanged, with its own answer.
 * Returns `spec` itself when nothing changes, so it can be applied again (a
 * restore re-applies it to the same bundle).
 */
export function withIoUringRefused<S extends SpecWithLinux>(spec: S): S {
  const linux = spec.linux ?? {};
  const seccomp = linux.seccomp as Seccomp | undefined;
  const ours: SeccompRule = { names: [...IO_URING_SYSCALLS], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS };
  if (!seccomp) {
    const architectures = hostArchitectures();
    const filter: Seccomp = {
      defaultAction: 'SCMP_ACT_ALLOW',
      ...(architectures ? { architectures } : {}),
      syscalls: [ours],
    };
    return { ...spec, linux: { ...linux, seccomp: filter } } as S;
  }
  const rules = seccomp.syscalls ?? [];
  const io = (n: string) => (IO_URING_SYSCALLS as readonly string[]).includes(n);
  let stripped = false;
  const kept: SeccompRule[] = [];
  for (const r of rules) {
    if (refuses(r.action) || !r.names?.some(io)) {
      kept.push(r);
      continue;
    }
    stripped = true;
    const names = r.names.filter((n) => !io(n));
    if (names.length > 0) kept.push({ ...r, names });
  }
  // A call a remaining rule refuses keeps that rule's answer: libseccomp takes one rule per call and action.
  const refusedByRule = new Set(kept.flatMap((r) => r.names ?? []));
  const toRefuse = IO_URING_SYSCALLS.filter((n) => !refusedByRule.has(n));
  if (toRefuse.length === 0 || (refuses(seccomp.defaultAction) && !stripped)) {
    return stripped ? ({ ...spec, linux: { ...linux, seccomp: { ...seccomp, syscalls: kept } } } as S) : spec;
  }
  const rule = { ...ours, names: toRefuse };
  return { ...spec, linux: { ...linux, seccomp: { ...seccomp, syscalls: [...kept, rule] } } } as S;
}
