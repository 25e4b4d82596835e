import { hostUserOf, withCheckpointableRuntimes, type OciSpec } from '../../core/oci-spec.js';

test("the job's host user: the spec's process.user, root when unset", () => {
  expect(hostUserOf({})).toEqual({ uid: 0, gid: 0 });
  expect(hostUserOf({ process: { user: { uid: 1000, gid: 1001 } } })).toEqual({ uid: 1000, gid: 1001 });
  expect(hostUserOf({ process: { user: { uid: 1000 } } })).toEqual({ uid: 1000, gid: 0 });
});

test("in a user namespace, the container's ids through its maps; an id no range maps owns nothing", () => {
  const remapped = (uid: number, gid: number): OciSpec => ({
    process: { user: { uid, gid } },
    linux: {
      uidMappings: [
        { containerID: 0, hostID: 100000, size: 1000 },
        { containerID: 1000, hostID: 200000, size: 65536 },
      ],
      gidMappings: [{ containerID: 0, hostID: 100000, size: 65536 }],
    },
  });
  expect(hostUserOf(remapped(0, 0))).toEqual({ uid: 100000, gid: 100000 });
  expect(hostUserOf(remapped(999, 5))).toEqual({ uid: 100999, gid: 100005 });
  expect(hostUserOf(remapped(1000, 1000))).toEqual({ uid: 200000, gid: 101000 });
  expect(hostUserOf(remapped(70000, 0))).toBeUndefined();
  expect(hostUserOf(remapped(0, 70000))).toBeUndefined();
});

test("libuv's io_uring is turned off for an ARCH container, unless its owner set the variable", () => {
  const spec = { process: { env: ['PATH=/bin', 'ARCH_ENABLE=1'] } } as OciSpec;
  expect(withCheckpointableRuntimes(spec).process?.env).toEqual(['PATH=/bin', 'ARCH_ENABLE=1', 'UV_USE_IO_URING=0']);
  expect(spec.process?.env).toEqual(['PATH=/bin', 'ARCH_ENABLE=1']); // not changed in place
  const own = { process: { env: ['UV_USE_IO_URING=1'] } } as OciSpec;
  expect(withCheckpointableRuntimes(own)).toBe(own);
  expect(withCheckpointableRuntimes({} as OciSpec).process?.env).toEqual(['UV_USE_IO_URING=0']);
});
