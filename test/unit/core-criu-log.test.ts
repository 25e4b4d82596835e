import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { criuErrors, isSeizeTimeout, withCriuErrors } from '../../core/criu-log.js';

/** The error a failed `runc checkpoint` becomes, with `log` as its dump.log. */
async function dumpFailure(log: string): Promise<Error> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-criu-log-'));
  try {
    fs.writeFileSync(path.join(dir, 'dump.log'), log);
    return await withCriuErrors('runc checkpoint failed', new Error('criu failed'), path.join(dir, 'dump.log'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The one line a failed dump or restore gets from CRIU's log (dump.log of a real failed dump, shortened). */
const DUMP_LOG = [
  '(00.000012) Version: 4.2 (gitid 0)',
  "(00.056832) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted",
  '(00.060000) Dumping task 1',
  "(00.072454) Error (criu/files-reg.c:1031): Can't dump ghost file /tmp/spill of 6291456 size, increase limit",
  '(00.072482) Error (criu/cr-dump.c:1545): Dump files (pid: 3194) failed with -1',
  '(00.076128) Error (criu/cr-dump.c:1975): Dumping FAILED.',
].join('\n');

test('the cause comes first, then where CRIU gave up; the harmless rlimit line is left out', () => {
  expect(criuErrors(DUMP_LOG).split(' | ')).toEqual([
    "(00.072454) Error (criu/files-reg.c:1031): Can't dump ghost file /tmp/spill of 6291456 size, increase limit",
    '(00.072482) Error (criu/cr-dump.c:1545): Dump files (pid: 3194) failed with -1',
    '(00.076128) Error (criu/cr-dump.c:1975): Dumping FAILED.',
  ]);
});

test('a log without errors gives nothing', () => {
  expect(criuErrors('(00.000012) Version: 4.2\n(00.1) Dumping finished successfully')).toBe('');
});

test('a dump refused the rlimits of a non-root process says which capability ARCH lacks', () => {
  const log = [
    "(00.058890) Error (criu/cr-dump.c:389): Can't get rlimit 0: Operation not permitted",
    '(00.058894) Error (criu/cr-dump.c:1584): Dump core (pid: 24065) failed with -1',
    '(00.079486) Error (criu/cr-dump.c:1975): Dumping FAILED.',
  ].join('\n');
  const said = criuErrors(log).split(' | ');
  expect(said[0]).toContain("Can't get rlimit 0");
  expect(said[said.length - 1]).toMatch(/without CAP_SYS_RESOURCE .* non-root user: give ARCH that capability/);
  // Other failures get no such hint.
  expect(criuErrors(DUMP_LOG)).not.toContain('CAP_SYS_RESOURCE');
});

test("a job connected to a UNIX socket outside its container: the cause, and not CRIU's --ext-unix-sk advice alone", () => {
  // dump.log of a real dump of a process connected to another process's listening socket.
  const log = [
    "(00.052518) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted",
    '(00.061120) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option.',
    '(00.061497) Error (criu/cr-dump.c:1975): Dumping FAILED.',
  ].join('\n');
  const said = criuErrors(log).split(' | ');
  expect(said[0]).toContain('External socket is used');
  expect(said[said.length - 1]).toMatch(
    /connected to a UNIX socket whose other end is outside its container .*Fix: do not mount that socket into the job/,
  );
});

test('a job whose stdio is a UNIX socket from outside its network namespace: the cause and the fix', () => {
  // dump.log of a real dump of a container run by arch-runc with a Node.js child_process 'pipe' as its stderr.
  const log = [
    "(00.052518) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted",
    '(00.098639) Error (criu/sk-unix.c:351): unix: Unix socket 6671404 not found',
    '(00.098661) Error (criu/cr-dump.c:1545): Dump files (pid: 3608) failed with -1',
    '(00.108269) Error (criu/cr-dump.c:1975): Dumping FAILED.',
  ].join('\n');
  const said = criuErrors(log).split(' | ');
  expect(said[0]).toContain('Unix socket 6671404 not found');
  expect(said[said.length - 1]).toMatch(
    /UNIX socket made outside its network namespace, most often its stdin, stdout or stderr .*Fix: give the container its stdio as a pipe, FIFO or file/,
  );
});

test("a socket bound to the old pod's address: the cause and the fix", () => {
  // restore.log of a real restore, in a new pod (another IP), of a job listening on its pod's IP.
  const log = [
    "(00.092182)      1: Error (criu/sk-inet.c:1059): inet: Can't bind inet socket (id 11): Cannot assign requested address",
    '(00.092196)      1: Error (criu/files.c:1221): Unable to open fd=4 id=0xb',
    '(00.093557) Error (criu/cr-restore.c:2331): Restoring FAILED.',
  ].join('\n');
  const said = criuErrors(log).split(' | ');
  expect(said[0]).toContain("Can't bind inet socket (id 11): Cannot assign requested address");
  expect(said[said.length - 1]).toMatch(
    /bound to an IP address this container does not have .*Fix: have the job listen on all addresses \(0\.0\.0\.0 or ::\)/,
  );
});

test('a file the kernel would not pass to CRIU (an io_uring) is named as the likely cause', () => {
  // dump.log of a real dump of a process holding an io_uring instance.
  const log = [
    'pie: 625: Error (criu/pie/parasite.c:588): send_fds failed (-22)',
    "(00.061142) Error (criu/parasite-syscall.c:280): Can't retrieve FDs from socket",
    '(00.061146) Error (compel/src/lib/infect-rpc.c:44): Message reply from daemon is trimmed (12/0)',
    '(00.061155) Error (criu/cr-dump.c:1545): Dump files (pid: 625) failed with -1',
    '(00.061497) Error (criu/cr-dump.c:1975): Dumping FAILED.',
  ].join('\n');
  expect(criuErrors(log)).toMatch(
    /\| the kernel refused to hand CRIU one of the job's open files, .*io_uring.*Fix: create the container again/,
  );
  expect(criuErrors(DUMP_LOG)).not.toMatch(/io_uring|UNIX socket/);
});

test("a multipath TCP socket (a Go program's listener) is named with Go's switch", () => {
  // dump.log of a real dump of a Go 1.26 program listening on TCP.
  const log = [
    '(00.063297) Error (criu/sk-inet.c:137): inet: Unsupported proto 262 for socket bf950',
    '(00.063300) Error (criu/sk-inet.c:139): inet: For Go programs, consider using "GODEBUG=multipathtcp=0" to disable MPTCP',
    '(00.063323) Error (criu/cr-dump.c:1545): Dump files (pid: 4321) failed with -1',
    '(00.066647) Error (criu/cr-dump.c:1975): Dumping FAILED.',
  ].join('\n');
  expect(criuErrors(log)).toMatch(
    /\| one of the job's sockets is a multipath TCP \(MPTCP\) socket.*GODEBUG=multipathtcp=0/,
  );
  expect(criuErrors(DUMP_LOG)).not.toMatch(/MPTCP/);
});

test('a process that would not stop (state D): the cause with its hint, without the network unlock that follows; worth another try', async () => {
  // dump.log of a real dump of a job waiting in posix_spawn for a child held in open(2) (workloads.test.ts).
  const log = [
    "(00.062881) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted",
    '(10.071658) Error (criu/cr-dump.c:1655): Timeout reached. Try to interrupt: 0',
    '(10.071913) Error (compel/src/lib/infect.c:262): Unseizable non-zombie 25322 found, state D, err -1/4',
    'Error: Could not process rule: No such file or directory',
    '(10.074454) Error (compel/src/lib/infect.c:417): Unable to detach from 25322: No such process',
    '(10.074531) Error (criu/cr-dump.c:1975): Dumping FAILED.',
  ].join('\n');
  const said = criuErrors(log).split(' | ');
  expect(said.slice(0, -1)).toEqual([
    '(10.071658) Error (criu/cr-dump.c:1655): Timeout reached. Try to interrupt: 0',
    '(10.071913) Error (compel/src/lib/infect.c:262): Unseizable non-zombie 25322 found, state D, err -1/4',
    '(10.074454) Error (compel/src/lib/infect.c:417): Unable to detach from 25322: No such process',
    '(10.074531) Error (criu/cr-dump.c:1975): Dumping FAILED.',
  ]);
  expect(said[said.length - 1]).toMatch(
    /stayed in uninterruptible sleep \(state D\).*vfork.*Fix: find what that process waits on/,
  );
  expect(isSeizeTimeout(await dumpFailure(log))).toBe(true);
  expect(isSeizeTimeout(await dumpFailure(DUMP_LOG))).toBe(false);
  // Only CRIU's own lines count: a file name the job chose, quoted in another error, does not.
  const named =
    "(00.072454) Error (criu/files-reg.c:1031): Can't dump ghost file /tmp/Unseizable non-zombie 1 found, state D";
  expect(isSeizeTimeout(await dumpFailure(named))).toBe(false);
  expect(isSeizeTimeout(new Error((await dumpFailure(log)).message))).toBe(false); // the message alone says nothing
});

test('a cgroup that would not freeze in time gets the same hint, and another try', async () => {
  const log = [
    '(02.071229) Error (criu/seize.c:560): Unable to freeze cgroup /sys/fs/cgroup/freezer/default/job (20 x 100ms attempts, timeout: 2s)',
    '(02.074531) Error (criu/cr-dump.c:1975): Dumping FAILED.',
  ].join('\n');
  expect(criuErrors(log)).toMatch(/\| a process of the job stayed in uninterruptible sleep/);
  expect(isSeizeTimeout(await dumpFailure(log))).toBe(true);
});
