import { criuErrors } from '../../core/criu-log.js';

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
