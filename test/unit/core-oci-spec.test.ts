import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { hostUserOf, withCheckpointableRuntimes, withResolvedBindSources, type OciSpec } from '../../core/oci-spec.js';

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

test("libuv's io_uring and Go's multipath TCP are turned off for an ARCH container, unless its owner set them", () => {
  const spec = { process: { env: ['PATH=/bin', 'ARCH_ENABLE=1'] } } as OciSpec;
  expect(withCheckpointableRuntimes(spec).process?.env).toEqual([
    'PATH=/bin',
    'ARCH_ENABLE=1',
    'UV_USE_IO_URING=0',
    'GODEBUG=multipathtcp=0',
  ]);
  expect(spec.process?.env).toEqual(['PATH=/bin', 'ARCH_ENABLE=1']); // not changed in place
  const own = { process: { env: ['UV_USE_IO_URING=1', 'GODEBUG=http2debug=1,multipathtcp=1'] } } as OciSpec;
  expect(withCheckpointableRuntimes(own).process).toBe(own.process);
  expect(withCheckpointableRuntimes({} as OciSpec).process?.env).toEqual([
    'UV_USE_IO_URING=0',
    'GODEBUG=multipathtcp=0',
  ]);
  // The owner's other GODEBUG settings stay; the first GODEBUG is the one Go reads.
  const debug = { process: { env: ['UV_USE_IO_URING=0', 'GODEBUG=gctrace=1', 'GODEBUG=x=1'] } } as OciSpec;
  expect(withCheckpointableRuntimes(debug).process?.env).toEqual([
    'UV_USE_IO_URING=0',
    'GODEBUG=gctrace=1,multipathtcp=0',
    'GODEBUG=x=1',
  ]);
  const empty = { process: { env: ['UV_USE_IO_URING=0', 'GODEBUG='] } } as OciSpec;
  expect(withCheckpointableRuntimes(empty).process?.env).toEqual(['UV_USE_IO_URING=0', 'GODEBUG=multipathtcp=0']);
  // io_uring is refused by the seccomp filter whatever the owner set; applied again, nothing changes.
  const once = withCheckpointableRuntimes(own);
  expect(once.linux?.seccomp).toMatchObject({
    syscalls: [{ names: ['io_uring_setup', 'io_uring_enter', 'io_uring_register'] }],
  });
  expect(withCheckpointableRuntimes(once)).toBe(once);
});

describe('withResolvedBindSources', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-bind-src-'));
    fs.writeFileSync(path.join(dir, 'tini-static'), 'binary');
    fs.symlinkSync('tini-static', path.join(dir, 'docker-init'));
    fs.mkdirSync(path.join(dir, 'data'));
    fs.symlinkSync(path.join(dir, 'data'), path.join(dir, 'data-link'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test("a bind mount whose source is a symlink gets the symlink's target; everything else is left as it is", async () => {
    const spec: OciSpec = {
      mounts: [
        {
          destination: '/sbin/docker-init',
          type: 'bind',
          source: path.join(dir, 'docker-init'),
          options: ['rbind', 'ro'],
        },
        { destination: '/data', source: path.join(dir, 'data-link'), options: ['bind'] },
        { destination: '/plain', type: 'bind', source: path.join(dir, 'tini-static'), options: ['rbind'] },
        { destination: '/work', type: 'bind', source: '/proc/self/fd/9', options: ['rbind'] },
        { destination: '/tmp', type: 'tmpfs', source: 'tmpfs' },
        { destination: '/gone', type: 'bind', source: path.join(dir, 'missing'), options: ['rbind'] },
      ],
    };
    const out = await withResolvedBindSources(spec);
    expect(out.mounts!.map((m) => m.source)).toEqual([
      path.join(dir, 'tini-static'),
      path.join(dir, 'data'),
      path.join(dir, 'tini-static'),
      '/proc/self/fd/9',
      'tmpfs',
      path.join(dir, 'missing'),
    ]);
    expect(out.mounts![0]!.options).toEqual(['rbind', 'ro']);
    expect(spec.mounts![0]!.source).toBe(path.join(dir, 'docker-init')); // the caller's spec is not changed
  });

  test('nothing to resolve: the same spec back', async () => {
    const spec: OciSpec = { mounts: [{ destination: '/x', type: 'bind', source: dir, options: ['rbind'] }] };
    expect(await withResolvedBindSources(spec)).toBe(spec);
    const none: OciSpec = {};
    expect(await withResolvedBindSources(none)).toBe(none);
  });
});
