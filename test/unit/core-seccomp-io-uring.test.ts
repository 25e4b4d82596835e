import type { OciSpec } from '../../core/oci-spec.js';
import { IO_URING_SYSCALLS, withIoUringRefused } from '../../core/seccomp-io-uring.js';

const REFUSE = { names: [...IO_URING_SYSCALLS], action: 'SCMP_ACT_ERRNO', errnoRet: 38 };

test('a container without a filter gets one that allows everything but io_uring, which answers ENOSYS', () => {
  const spec: OciSpec = { process: { args: ['/job'] }, linux: { cgroupsPath: '/x' } };
  const out = withIoUringRefused(spec);
  expect(out.linux).toMatchObject({
    cgroupsPath: '/x',
    seccomp: { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [REFUSE] },
  });
  // The native architecture and its 32-bit ones: a filter naming only the native one kills 32-bit programs.
  const arches = (out.linux?.seccomp as { architectures?: string[] }).architectures;
  if (process.arch === 'x64') expect(arches).toEqual(['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
  expect(spec.linux?.seccomp).toBeUndefined(); // not changed in place
  expect(withIoUringRefused(out)).toBe(out); // applied again (a restore into the same bundle): nothing changes
  expect(withIoUringRefused<OciSpec>({}).linux?.seccomp).toMatchObject({ syscalls: [REFUSE] });
});

test("an allow-list profile that lists io_uring (Docker 20.10's default): the calls leave its rule and are refused", () => {
  const docker: OciSpec = {
    linux: {
      seccomp: {
        defaultAction: 'SCMP_ACT_ERRNO',
        defaultErrnoRet: 1,
        architectures: ['SCMP_ARCH_X86_64'],
        syscalls: [
          {
            names: ['read', 'io_uring_enter', 'io_uring_register', 'io_uring_setup', 'write'],
            action: 'SCMP_ACT_ALLOW',
          },
          { names: ['ptrace'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '4.8' } },
        ],
      },
    },
  };
  const out = withIoUringRefused(docker);
  expect(out.linux?.seccomp).toEqual({
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: 1,
    architectures: ['SCMP_ARCH_X86_64'],
    syscalls: [
      { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW' },
      { names: ['ptrace'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '4.8' } },
      REFUSE,
    ],
  });
  expect(withIoUringRefused(out)).toBe(out);
  // A rule that held nothing else goes; a deny-list profile (default allow) gets the refusal too.
  const only: OciSpec = {
    linux: {
      seccomp: {
        defaultAction: 'SCMP_ACT_LOG',
        syscalls: [
          { names: ['io_uring_setup'], action: 'SCMP_ACT_NOTIFY' },
          { names: ['kexec_load'], action: 'SCMP_ACT_KILL' },
        ],
      },
    },
  };
  expect(withIoUringRefused(only).linux?.seccomp).toEqual({
    defaultAction: 'SCMP_ACT_LOG',
    syscalls: [{ names: ['kexec_load'], action: 'SCMP_ACT_KILL' }, REFUSE],
  });
});

test("a profile that refuses io_uring already (Docker 25's, recent containerd releases') keeps its own answer", () => {
  const refusing: OciSpec = {
    linux: { seccomp: { defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW' }] } },
  };
  expect(withIoUringRefused(refusing)).toBe(refusing);
  // A rule of the owner's that refuses one call keeps it (one rule per call); the others are refused by ARCH's.
  const killsSetup: OciSpec = {
    linux: {
      seccomp: {
        defaultAction: 'SCMP_ACT_ALLOW',
        syscalls: [{ names: ['io_uring_setup'], action: 'SCMP_ACT_KILL_PROCESS' }],
      },
    },
  };
  expect((withIoUringRefused(killsSetup).linux?.seccomp as { syscalls: unknown[] }).syscalls).toEqual([
    { names: ['io_uring_setup'], action: 'SCMP_ACT_KILL_PROCESS' },
    { ...REFUSE, names: ['io_uring_enter', 'io_uring_register'] },
  ]);
});
