import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ArchInputError } from '../../contract/errors.js';
import {
  criuEnv,
  loadSettings,
  parseEmptyDirMaxBytes,
  parseEnvFile,
  parseKeptFilesMaxBytes,
} from '../../core/settings.js';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-settings-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function configFile(text: string): string {
  const f = path.join(dir, `arch-${Math.random().toString(16).slice(2)}.env`);
  fs.writeFileSync(f, text);
  return f;
}

describe('parseEnvFile', () => {
  test('KEY=VALUE, export, quotes, comments, blank and junk lines', () => {
    const vars = parseEnvFile(
      [
        '# comment',
        '',
        'A=1',
        'export B=two words',
        "C='/opt/x y'",
        'D="q"',
        '  E = x',
        'not a line',
        'F=',
        'G=a=b',
        '1BAD=x',
      ].join('\n'),
    );
    expect(vars).toEqual({ A: '1', B: 'two words', C: '/opt/x y', D: 'q', F: '', G: 'a=b' });
  });

  test('what test/support/arch-env.ts writes reads back', () => {
    expect(parseEnvFile("ARCH_RUNC=/usr/sbin/runc\nARCH_LOG_FILE='/tmp/a b/arch.log'\n")).toEqual({
      ARCH_RUNC: '/usr/sbin/runc',
      ARCH_LOG_FILE: '/tmp/a b/arch.log',
    });
  });
});

describe('loadSettings', () => {
  test('defaults with no config file', () => {
    const s = loadSettings({ ARCH_CONFIG: path.join(dir, 'missing.env') });
    expect(s).toMatchObject({
      runc: 'runc',
      criu: 'criu',
      criuNoBreakpoints: false,
      criuNetworkLock: 'auto',
      fsync: true,
      stageDumpsInMemory: true,
      sealDirect: false,
      unsealThreads: 1,
      emptyDirMaxBytes: 4 * 1024 ** 3,
      logFile: undefined,
      logLevel: 'info',
      nodeName: os.hostname(),
      runcRootBase: '/run/containerd/runc',
      defaultCheckpointRoot: '/var/lib/arch/checkpoints',
      temporalAddress: 'localhost:7233',
      temporalNamespace: 'default',
      configFile: path.join(dir, 'missing.env'),
    });
    expect(criuEnv(s)).toEqual({ PATH: expect.stringMatching(/\/shim\/criu-path:/) });
  });

  test('file values, and the environment overrides the file', () => {
    const f = configFile(
      'ARCH_RUNC=/usr/sbin/runc\nARCH_CRIU=/opt/arch/criu/bin/criu\nARCH_CRIU_NO_BREAKPOINTS=yes\nARCH_NODE_NAME=file-node\nARCH_LOG_FILE=/var/log/arch.log\nARCH_FSYNC=off\n',
    );
    const s = loadSettings({ ARCH_CONFIG: f, ARCH_NODE_NAME: 'env-node' });
    expect(s).toMatchObject({
      runc: '/usr/sbin/runc',
      criu: '/opt/arch/criu/bin/criu',
      criuNoBreakpoints: true,
      nodeName: 'env-node',
      logFile: '/var/log/arch.log',
      fsync: false,
    });
    expect(criuEnv(s)).toEqual({ PATH: expect.stringMatching(/\/shim\/criu-path:/), CRIU_FAULT: '130' });
  });

  test('a bad boolean names the setting and the fix', () => {
    const f = configFile('ARCH_CRIU_NO_BREAKPOINTS=maybe\n');
    let err: unknown;
    try {
      loadSettings({ ARCH_CONFIG: f });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ArchInputError);
    expect((err as ArchInputError).field).toBe('ARCH_CRIU_NO_BREAKPOINTS');
    expect((err as ArchInputError).message).toBe(
      'ARCH_CRIU_NO_BREAKPOINTS: "maybe" is not a boolean. Fix: set ARCH_CRIU_NO_BREAKPOINTS=1 or ARCH_CRIU_NO_BREAKPOINTS=0',
    );
  });

  test.each(['auto', 'iptables', 'nftables', 'skip'])('ARCH_CRIU_NETWORK_LOCK=%s is taken', (v) => {
    expect(
      loadSettings({ ARCH_CONFIG: path.join(dir, 'missing.env'), ARCH_CRIU_NETWORK_LOCK: v }).criuNetworkLock,
    ).toBe(v);
  });

  test('periodic checkpoints: none and one at a time by default; a node default interval and a limit', () => {
    const none = loadSettings({ ARCH_CONFIG: path.join(dir, 'missing.env') });
    expect(none.defaultCheckpointIntervalMs).toBeUndefined();
    expect(none.maxConcurrentCheckpoints).toBe(1);
    const s = loadSettings({
      ARCH_CONFIG: configFile('ARCH_DEFAULT_CHECKPOINT_INTERVAL=10m\nARCH_MAX_CONCURRENT_CHECKPOINTS=3\n'),
    });
    expect(s.defaultCheckpointIntervalMs).toBe(600_000);
    expect(s.maxConcurrentCheckpoints).toBe(3);
    expect(loadSettings({ ARCH_CONFIG: configFile('ARCH_STAGE_DUMPS_IN_MEMORY=0\n') }).stageDumpsInMemory).toBe(false);
  });

  test.each([
    [
      'ARCH_DEFAULT_CHECKPOINT_INTERVAL',
      '2',
      /^ARCH_DEFAULT_CHECKPOINT_INTERVAL: "2" is not a duration\. Fix: set ARCH_DEFAULT_CHECKPOINT_INTERVAL to a duration of at least 5s/,
    ],
    ['ARCH_DEFAULT_CHECKPOINT_INTERVAL', '1ms', /^ARCH_DEFAULT_CHECKPOINT_INTERVAL: "1ms" is shorter than 5 s\. Fix:/],
    ['ARCH_MAX_CONCURRENT_CHECKPOINTS', '0', /^ARCH_MAX_CONCURRENT_CHECKPOINTS: "0" is not a positive integer\. Fix:/],
    ['ARCH_STAGE_DUMPS_IN_MEMORY', 'maybe', /^ARCH_STAGE_DUMPS_IN_MEMORY: /],
  ])('%s=%s is refused with the fix', (k, v, msg) => {
    expect(() => loadSettings({ ARCH_CONFIG: path.join(dir, 'missing.env'), [k]: v })).toThrow(msg);
  });

  test('an unknown network lock method names the setting and the values', () => {
    expect(() => loadSettings({ ARCH_CONFIG: path.join(dir, 'missing.env'), ARCH_CRIU_NETWORK_LOCK: 'nft' })).toThrow(
      'ARCH_CRIU_NETWORK_LOCK: "nft" is not a network lock method. Fix: set ARCH_CRIU_NETWORK_LOCK to one of auto, iptables, nftables, skip (auto: nftables where CRIU supports it)',
    );
  });

  test.each(['ARCH_LOG_FILE', 'ARCH_RUNC_ROOT', 'ARCH_DEFAULT_CHECKPOINT_PATH'])('relative %s is refused', (k) => {
    expect(() => loadSettings({ ARCH_CONFIG: path.join(dir, 'missing.env'), [k]: 'rel/x' })).toThrow(
      new RegExp(`^${k}: "rel/x" is a relative path`),
    );
  });

  test('an unreadable config file (a directory) is an error, not silently ignored', () => {
    expect(() => loadSettings({ ARCH_CONFIG: dir })).toThrow(/EISDIR/);
  });
});

describe('ARCH_EMPTYDIR_MAX_BYTES', () => {
  test.each<[string | undefined, number]>([
    [undefined, 4 * 1024 ** 3],
    ['', 4 * 1024 ** 3],
    ['0', 0],
    ['1048576', 1 << 20],
    ['512MiB', 512 * 1024 ** 2],
    ['1.5GiB', 1.5 * 1024 ** 3],
    ['16 GiB', 16 * 1024 ** 3],
    ['2TiB', 2 * 1024 ** 4],
    ['unlimited', Infinity],
  ])('%s -> %d bytes', (v, bytes) => expect(parseEmptyDirMaxBytes(v)).toBe(bytes));

  test.each(['4G', '-1', 'lots', '1e9', '4 gib'])('"%s" is refused, naming the setting and the fix', (v) => {
    expect(() => parseEmptyDirMaxBytes(v)).toThrow(ArchInputError);
    expect(() => parseEmptyDirMaxBytes(v)).toThrow(/ARCH_EMPTYDIR_MAX_BYTES.*512MiB or 16GiB.*unlimited/s);
  });
});

describe('ARCH_KEPT_FILES_MAX_BYTES', () => {
  test('the same sizes, its own name in the error, 4 GiB by default', () => {
    expect([undefined, '64MiB', '0', 'unlimited'].map(parseKeptFilesMaxBytes)).toEqual([
      4 * 1024 ** 3,
      64 * 1024 ** 2,
      0,
      Infinity,
    ]);
    expect(() => parseKeptFilesMaxBytes('4G')).toThrow(/ARCH_KEPT_FILES_MAX_BYTES.*0: keep no rewritten file/s);
    expect(loadSettings({ ARCH_CONFIG: '/nonexistent', ARCH_KEPT_FILES_MAX_BYTES: '1MiB' }).keptFilesMaxBytes).toBe(
      1024 ** 2,
    );
  });
});
