import fsp from 'node:fs/promises';
import { errorMessage } from '../contract/errors.js';

/**
 * What CRIU's log says went wrong, for the one line a failed dump or restore
 * gets: its first error (most often the cause: a socket it cannot dump, a
 * file that "has bad size") and its last three (where it gave up, such as
 * "Can't fork for N": shim/main.ts reads that one), without repeats.
 * CRIU 4.2 logs one error it goes on from at every dump and restore under
 * runc here ("rlimit: Can't setup RLIMIT_NOFILE for self"): never the
 * cause, so never the first line.
 */
const HARMLESS = /rlimit: Can't setup RLIMIT_NOFILE for self/;
/** What CRIU says of a process it could not freeze or stop in time (seizeTimedOut below). */
const WOULD_NOT_STOP = /Unseizable non-zombie \d+ found, state D|Unable to freeze cgroup /;
/** A dump that failed before CRIU locked the network still unlocks it: nft finds no table to delete. */
const AFTERMATH = /^Error: Could not process rule: No such file or directory$/;

export function criuErrors(log: string): string {
  const errors = log.split('\n').filter((l) => /Error|error/.test(l) && !HARMLESS.test(l) && !AFTERMATH.test(l));
  const said = [...new Set([...errors.slice(0, 1), ...errors.slice(-3)])].join(' | ');
  const hint = KNOWN_CAUSES.find((c) => errors.some((l) => c.error.test(l)))?.hint;
  return hint ? `${said} | ${hint}` : said;
}

/**
 * Errors whose CRIU line does not say what to change. CRIU reads each
 * process's resource limits with prlimit(2), which needs CAP_SYS_RESOURCE
 * for a process of another user: where ARCH runs without it (a sandbox, a
 * DaemonSet that drops it), every container whose processes are not root
 * fails its dump (arch-cli doctor's "capabilities" check says so ahead),
 * unless it has a user namespace of its own: there CRIU, root in the
 * namespace's parent, holds every capability (runc-compat.test.ts).
 * Each hint was written from CRIU's log of that very failure, reproduced.
 */
const KNOWN_CAUSES: { error: RegExp; hint: string }[] = [
  {
    error: /Can't get rlimit \d+: Operation not permitted/,
    hint:
      'CRIU runs without CAP_SYS_RESOURCE here, so it cannot checkpoint processes that run as a non-root user: give ARCH ' +
      'that capability (see `arch-cli doctor`), or run the container in a user namespace of its own (a pod with ' +
      'hostUsers: false), where CRIU holds every capability',
  },
  {
    // CRIU's own advice (--ext-unix-sk) is not one a container's owner can take, nor one that would keep the connection.
    error: /External socket is used|Can't dump name-less external socket/,
    hint:
      'a process of the job is connected to a UNIX socket whose other end is outside its container (a host socket ' +
      "mounted in, such as /dev/log, docker.sock or a node agent's; or a process of another container): no checkpoint " +
      'can carry that connection. Fix: do not mount that socket into the job, or have the job connect only while it uses it',
  },
  {
    // CRIU finds the job's UNIX sockets through its network namespace: one made in another (the host's) is not there.
    error: /Unix socket \d+ not found/,
    hint:
      "one of the job's files is a UNIX socket made outside its network namespace, most often its stdin, stdout or " +
      "stderr (a systemd unit's journal stream, a Node.js child_process 'pipe', a process manager's socket) or a socket " +
      'handed in (socket activation, --preserve-fds): no checkpoint can carry it. Fix: give the container its stdio as a ' +
      'pipe, FIFO or file, as containerd, Docker and Kubernetes do, and hand it no sockets',
  },
  {
    // A socket bound to one address (not 0.0.0.0): a new pod, or a container on another network, has another.
    error: /Can't bind inet socket \(id \d+\): Cannot assign requested address/,
    hint:
      "one of the job's sockets is bound to an IP address this container does not have (a Kubernetes pod's address " +
      "changes with the pod, a container's with its network, a host-network job's with its node): no restore can " +
      'bind it again. Fix: have the job listen on all addresses (0.0.0.0 or ::) rather than its own, as servers in ' +
      'containers usually do',
  },
  {
    // IPPROTO_MPTCP: Go >= 1.24 listens with multipath TCP by default; CRIU dumps no MPTCP socket (oci-spec.ts).
    error: /Unsupported proto 262 for socket/,
    hint:
      "one of the job's sockets is a multipath TCP (MPTCP) socket, which CRIU cannot checkpoint; Go programs from " +
      'Go 1.24 listen with MPTCP by default. Fix: GODEBUG=multipathtcp=0 in the container (ARCH adds it to containers ' +
      'whose GODEBUG does not name multipathtcp, when they are created), or a program that opens plain TCP sockets',
  },
  {
    // CRIU's seize gave up (seizeTimedOut below); core/checkpoint.ts tries again before it says so.
    error: WOULD_NOT_STOP,
    hint:
      'a process of the job stayed in uninterruptible sleep (state D) for as long as CRIU waited, try after try: most ' +
      'often a write to a slow or hung disk or network filesystem, or a parent waiting for a child it started with ' +
      'vfork (posix_spawn) before that child ran its program. The job runs on. Fix: find what that process waits on ' +
      '(cat /proc/<pid>/stack as root) and checkpoint again once it no longer does',
  },
  {
    // The kernel would not pass one of the job's files to CRIU: an io_uring opened after ARCH looked (see open-files.ts).
    error: /send_fds failed \(-22\)|Can't retrieve FDs from socket/,
    hint:
      "the kernel refused to hand CRIU one of the job's open files, which is what an io_uring instance does. " +
      'Fix: create the container again (ARCH refuses io_uring in the containers it creates; this one is older), ' +
      'or turn io_uring off in the job',
  },
];

/** A failed runc call with what CRIU's log says; `seizeTimedOut`: see seizeTimedOut. */
export class CriuFailure extends Error {
  constructor(
    message: string,
    readonly seizeTimedOut: boolean,
    options: { cause: unknown },
  ) {
    super(message, options);
  }
}

/** A runc error, its last lines (runc's own say only "criu failed"), with CRIU's errors from `logFile`. */
export async function withCriuErrors(what: string, err: unknown, logFile: string): Promise<CriuFailure> {
  const log = await fsp.readFile(logFile, 'utf8').catch(() => '');
  const criu = criuErrors(log);
  return new CriuFailure(
    `${what}: ${errorMessage(err).split('\n').slice(-3).join(' ').trim()}${criu ? ` (criu: ${criu})` : ''}`,
    seizeTimedOut(log),
    { cause: err },
  );
}

/**
 * CRIU stops each of the job's processes with ptrace before it dumps
 * anything, and gives up when one has not stopped within its timeout (10 s
 * unless told: core/checkpoint.ts sets it per try): a process in
 * uninterruptible sleep (state D) stops only once that sleep ends. A write
 * to a busy disk can take that long; a parent blocked in vfork (posix_spawn:
 * Java's ProcessBuilder, Python's subprocess) waits for its child, which
 * CRIU holds stopped before it runs its program, and so never stops at all.
 * The same wait can keep the cgroup freezer from freezing it in time.
 * Nothing was dumped, CRIU let the job go, and the same wait seldom lasts
 * into a second try: such a failure is worth trying again. Read from CRIU's
 * own error lines (their prefix is CRIU's), so that a file name the job
 * chose, quoted in another error, does not make a failure look like this
 * one. A name with a newline in it could still forge such a line: all that
 * buys is the bounded tries of core/checkpoint.ts (SEIZE_TRIES), never a
 * checkpoint that failed being taken for one that worked.
 */
const SEIZE_TIMEOUT_LINE = new RegExp(
  `^\\(\\s*[\\d.]+\\) Error \\([^)]*\\): (?:${WOULD_NOT_STOP.source}|Timeout reached\\. Try to interrupt)`,
);

function seizeTimedOut(log: string): boolean {
  return log.split('\n').some((l) => SEIZE_TIMEOUT_LINE.test(l));
}

export function isSeizeTimeout(err: unknown): boolean {
  return err instanceof CriuFailure && err.seizeTimedOut;
}
