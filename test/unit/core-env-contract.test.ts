import {
  checkpointDirOf,
  effectiveIntervalMs,
  envListToMap,
  parseContract,
  workDirOf,
  type EnabledContract,
} from '../../core/env-contract.js';
import { ArchInputError } from '../../contract/errors.js';
import { inputError } from '../support/input-error.js';

const env = (o: Record<string, string>): Map<string, string> => new Map(Object.entries(o));
/** Roots covering every path these tests name; the allowed-roots tests below use their own. */
const OPTS = { allowedRoots: ['/var/lib', '/x', '/ck', '/sh', '/mnt/shared'] };

function enabled(c: ReturnType<typeof parseContract>): EnabledContract {
  if (!c.enabled) throw new Error('contract is not enabled');
  return c;
}

describe('envListToMap', () => {
  test('K=V pairs, last one wins, "=" inside values kept, junk ignored', () => {
    const m = envListToMap(['A=1', 'B=x=y', 'A=2', 'NOEQ', '=v', 'E=']);
    expect([...m]).toEqual([
      ['A', '2'],
      ['B', 'x=y'],
      ['E', ''],
    ]);
  });

  test('undefined env', () => {
    expect(envListToMap(undefined).size).toBe(0);
  });
});

describe('parseContract: enable', () => {
  test('absent or 0: disabled, whatever else is set (even nonsense)', () => {
    expect(parseContract(env({}), OPTS)).toEqual({ enabled: false });
    expect(parseContract(env({ ARCH_ENABLE: '0', ARCH_CHECKPOINT_HOST_PATH: 'rel' }), OPTS)).toEqual({
      enabled: false,
    });
  });

  test.each(['yes', 'true', 'on', '2', ' 1', '1 ', '', '01', 'TRUE'])(
    'ARCH_ENABLE=%j is refused, naming the field and both fixes',
    (v) => {
      const err = inputError(() => parseContract(env({ ARCH_ENABLE: v, ARCH_CHECKPOINT_HOST_PATH: '/x' }), OPTS));
      expect(err.field).toBe('ARCH_ENABLE');
      expect(err.message).toBe(
        `ARCH_ENABLE: "${v}" is not 0 or 1. Fix: set ARCH_ENABLE=1 to enable ARCH or ARCH_ENABLE=0 to disable it`,
      );
    },
  );
});

describe('parseContract: local mode', () => {
  test('ARCH_CHECKPOINT_HOST_PATH, normalised', () => {
    expect(parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/var/lib//arch/' }), OPTS)).toEqual({
      enabled: true,
      mode: 'local',
      checkpointRoot: '/var/lib/arch',
      priority: 0,
      allowedRoot: '/var/lib',
    });
  });

  test('relative path: the field and the fix', () => {
    const err = inputError(() => parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: 'rel/path' }), OPTS));
    expect(err.field).toBe('ARCH_CHECKPOINT_HOST_PATH');
    expect(err.message).toContain('"rel/path" is a relative path');
    expect(err.fix).toContain('absolute path');
  });

  test('".." in the path', () => {
    const err = inputError(() =>
      parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/var/lib/../../etc' }), OPTS),
    );
    expect(err.field).toBe('ARCH_CHECKPOINT_HOST_PATH');
    expect(err.message).toContain('".."');
  });

  test('missing (or empty) without a node default: says how to set either mode', () => {
    for (const e of [{ ARCH_ENABLE: '1' }, { ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '' }] as Record<
      string,
      string
    >[]) {
      const err = inputError(() => parseContract(env(e), OPTS));
      expect(err.field).toBe('ARCH_CHECKPOINT_HOST_PATH');
      expect(err.message).toContain('is not set');
      expect(err.fix).toContain('ARCH_SHAREDFS_HOST_PATH');
      expect(err.fix).toContain('ARCH_WORKDIR_CONTAINER_PATH');
    }
  });

  test('missing with a node default: the default', () => {
    expect(
      enabled(parseContract(env({ ARCH_ENABLE: '1' }), { ...OPTS, defaultCheckpointRoot: '/var/lib/arch/checkpoints' }))
        .checkpointRoot,
    ).toBe('/var/lib/arch/checkpoints');
  });

  test('ARCH_PRIORITY', () => {
    expect(
      enabled(parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/x', ARCH_PRIORITY: '-7' }), OPTS))
        .priority,
    ).toBe(-7);
    expect(
      enabled(parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/x', ARCH_PRIORITY: '' }), OPTS))
        .priority,
    ).toBe(0);
    for (const bad of ['high', '1.5', '1e3', '9999999']) {
      const err = inputError(() =>
        parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/x', ARCH_PRIORITY: bad }), OPTS),
      );
      expect(err.field).toBe('ARCH_PRIORITY');
      expect(err.fix).toContain('integer');
    }
  });
});

describe('parseContract: shared mode', () => {
  test('both variables: shared mode, checkpoints under <shared>/checkpoint, and it wins over the local path', () => {
    const c = parseContract(
      env({
        ARCH_ENABLE: '1',
        ARCH_SHAREDFS_HOST_PATH: '/mnt/shared/',
        ARCH_WORKDIR_CONTAINER_PATH: '/work/',
        ARCH_CHECKPOINT_HOST_PATH: 'ignored/relative',
      }),
      OPTS,
    );
    expect(c).toEqual({
      enabled: true,
      mode: 'shared',
      sharedRoot: '/mnt/shared',
      checkpointRoot: '/mnt/shared/checkpoint',
      workdirContainerPath: '/work',
      priority: 0,
      allowedRoot: '/mnt/shared',
    });
  });

  test("a host path outside the node's allowed roots: refused, naming the field and ARCH_ALLOWED_ROOTS", () => {
    const local = inputError(() =>
      parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/etc/arch' }), {
        allowedRoots: ['/var/lib/arch'],
      }),
    );
    expect(local.field).toBe('ARCH_CHECKPOINT_HOST_PATH');
    expect(local.fix).toContain('ARCH_ALLOWED_ROOTS');
    const shared = inputError(() =>
      parseContract(
        env({ ARCH_ENABLE: '1', ARCH_SHAREDFS_HOST_PATH: '/run/containerd', ARCH_WORKDIR_CONTAINER_PATH: '/work' }),
        { allowedRoots: ['/var/lib/arch'] },
      ),
    );
    expect(shared.field).toBe('ARCH_SHAREDFS_HOST_PATH');
  });

  test('only ARCH_SHAREDFS_HOST_PATH: names the missing ARCH_WORKDIR_CONTAINER_PATH', () => {
    const err = inputError(() =>
      parseContract(env({ ARCH_ENABLE: '1', ARCH_SHAREDFS_HOST_PATH: '/mnt/shared' }), OPTS),
    );
    expect(err.field).toBe('ARCH_WORKDIR_CONTAINER_PATH');
    expect(err.message).toContain('half-set shared mode');
    expect(err.fix).toContain('/work');
  });

  test('only ARCH_WORKDIR_CONTAINER_PATH: names the missing ARCH_SHAREDFS_HOST_PATH (even with a local path set)', () => {
    for (const e of [
      { ARCH_ENABLE: '1', ARCH_WORKDIR_CONTAINER_PATH: '/work' },
      { ARCH_ENABLE: '1', ARCH_WORKDIR_CONTAINER_PATH: '/work', ARCH_CHECKPOINT_HOST_PATH: '/x' },
    ] as Record<string, string>[]) {
      const err = inputError(() => parseContract(env(e), OPTS));
      expect(err.field).toBe('ARCH_SHAREDFS_HOST_PATH');
      expect(err.message).toContain('half-set shared mode');
      expect(err.fix).toContain('ARCH_WORKDIR_CONTAINER_PATH');
    }
  });

  test('relative shared path / workdir, workdir "/" or with ".."', () => {
    const cases: [Record<string, string>, string, RegExp][] = [
      [
        { ARCH_SHAREDFS_HOST_PATH: 'mnt/shared', ARCH_WORKDIR_CONTAINER_PATH: '/work' },
        'ARCH_SHAREDFS_HOST_PATH',
        /relative path/,
      ],
      [
        { ARCH_SHAREDFS_HOST_PATH: '/mnt/shared', ARCH_WORKDIR_CONTAINER_PATH: 'work' },
        'ARCH_WORKDIR_CONTAINER_PATH',
        /relative path/,
      ],
      [
        { ARCH_SHAREDFS_HOST_PATH: '/mnt/shared', ARCH_WORKDIR_CONTAINER_PATH: '/' },
        'ARCH_WORKDIR_CONTAINER_PATH',
        /is "\/"/,
      ],
      [
        { ARCH_SHAREDFS_HOST_PATH: '/mnt/shared', ARCH_WORKDIR_CONTAINER_PATH: '/work/../..' },
        'ARCH_WORKDIR_CONTAINER_PATH',
        /"\.\."/,
      ],
      [
        { ARCH_SHAREDFS_HOST_PATH: '/mnt/../shared', ARCH_WORKDIR_CONTAINER_PATH: '/work' },
        'ARCH_SHAREDFS_HOST_PATH',
        /"\.\."/,
      ],
    ];
    for (const [e, field, msg] of cases) {
      const err = inputError(() => parseContract(env({ ARCH_ENABLE: '1', ...e }), OPTS));
      expect(err.field).toBe(field);
      expect(err.message).toMatch(msg);
      expect(err.message).toContain('Fix: ');
    }
  });
});

describe('checkpointDirOf / workDirOf', () => {
  const local = enabled(parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/ck' }), OPTS));
  const shared = enabled(
    parseContract(
      env({ ARCH_ENABLE: '1', ARCH_SHAREDFS_HOST_PATH: '/sh', ARCH_WORKDIR_CONTAINER_PATH: '/work' }),
      OPTS,
    ),
  );

  test('layout of both modes', () => {
    expect(checkpointDirOf(local, 'default', 'job')).toBe('/ck/default/job');
    expect(workDirOf(local, 'default', 'job')).toBeUndefined();
    expect(checkpointDirOf(shared, 'k8s.io', 'job')).toBe('/sh/checkpoint/k8s.io/job');
    expect(workDirOf(shared, 'k8s.io', 'job')).toBe('/sh/work/k8s.io/job');
  });

  test('escaping namespace/id never becomes a path', () => {
    expect(() => checkpointDirOf(local, '..', 'job')).toThrow(ArchInputError);
    expect(() => checkpointDirOf(local, 'default', '../../etc')).toThrow(ArchInputError);
    expect(() => workDirOf(shared, 'default', '..')).toThrow(ArchInputError);
  });
});

describe('ARCH_CHECKPOINT_ID: the checkpoint named by the user instead of the container id', () => {
  test('both modes keep checkpoint and work dir under the name; unset or empty: the container id', () => {
    const local = enabled(
      parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/ck', ARCH_CHECKPOINT_ID: 'train-7' }), OPTS),
    );
    expect(local.checkpointId).toBe('train-7');
    expect(checkpointDirOf(local, 'k8s.io', '4f9c0e1d2b3a')).toBe('/ck/k8s.io/train-7');
    const shared = enabled(
      parseContract(
        env({
          ARCH_ENABLE: '1',
          ARCH_SHAREDFS_HOST_PATH: '/sh',
          ARCH_WORKDIR_CONTAINER_PATH: '/work',
          ARCH_CHECKPOINT_ID: 'web-0',
        }),
        OPTS,
      ),
    );
    expect(checkpointDirOf(shared, 'k8s.io', 'abc')).toBe('/sh/checkpoint/k8s.io/web-0');
    expect(workDirOf(shared, 'k8s.io', 'abc')).toBe('/sh/work/k8s.io/web-0');
    const empty = enabled(
      parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/ck', ARCH_CHECKPOINT_ID: '' }), OPTS),
    );
    expect(empty.checkpointId).toBeUndefined();
    expect(checkpointDirOf(empty, 'default', 'job')).toBe('/ck/default/job');
  });

  test.each(['..', '.', '../x', 'a/b', '/abs', 'a\0b', 'sp ace', 'x'.repeat(129)])(
    'ARCH_CHECKPOINT_ID=%j is refused, naming the field and the fix',
    (v) => {
      const err = inputError(() =>
        parseContract(env({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/ck', ARCH_CHECKPOINT_ID: v }), OPTS),
      );
      expect(err.field).toBe('ARCH_CHECKPOINT_ID');
      expect(err.fix).toContain('letters, digits');
    },
  );

  test('ignored when ARCH is off, like every other variable', () => {
    expect(parseContract(env({ ARCH_ENABLE: '0', ARCH_CHECKPOINT_ID: '../x' }), OPTS)).toEqual({ enabled: false });
  });
});

describe('parseContract: ARCH_CHECKPOINT_INTERVAL', () => {
  const base = { ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: '/x' };
  test.each([
    ['30s', 30_000],
    ['10m', 600_000],
    ['1h', 3_600_000],
    ['5s', 5_000],
    ['1m30s', 90_000],
  ])('%s is %d ms', (v, ms) => {
    const c = enabled(parseContract(env({ ...base, ARCH_CHECKPOINT_INTERVAL: v }), OPTS));
    expect(c.checkpointInterval).toEqual({ ms });
    expect(effectiveIntervalMs(c, 60_000)).toBe(ms);
  });

  test('unset: the node default applies; off: none even with a node default', () => {
    const unset = enabled(parseContract(env(base), OPTS));
    expect(unset.checkpointInterval).toBeUndefined();
    expect(effectiveIntervalMs(unset, 60_000)).toBe(60_000);
    expect(effectiveIntervalMs(unset, undefined)).toBeUndefined();
    const off = enabled(parseContract(env({ ...base, ARCH_CHECKPOINT_INTERVAL: 'off' }), OPTS));
    expect(effectiveIntervalMs(off, 60_000)).toBeUndefined();
  });

  test.each(['0', '-1s', '2', '1ms', '4s', '10 minutes', 'soon'])(
    '%j keeps ARCH on, without periodic checkpoints, and says the field and the fix',
    (v) => {
      const c = enabled(parseContract(env({ ...base, ARCH_CHECKPOINT_INTERVAL: v }), OPTS));
      expect(c.mode).toBe('local');
      const i = c.checkpointInterval;
      if (!i || i === 'off' || !('invalid' in i)) throw new Error(`expected an invalid interval, got ${String(i)}`);
      expect(i.invalid.field).toBe('ARCH_CHECKPOINT_INTERVAL');
      expect(i.invalid.message).toContain(`ARCH_CHECKPOINT_INTERVAL: "${v}"`);
      expect(i.invalid.fix).toBe(
        'set ARCH_CHECKPOINT_INTERVAL to a duration of at least 5s with its unit, e.g. 30s, 10m or 1h',
      );
      expect(effectiveIntervalMs(c, 60_000)).toBeUndefined();
    },
  );
});
