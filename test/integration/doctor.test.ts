import { execa } from 'execa';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CRIU_RUN_DIR, criuRunEnv } from '../../core/criu-network-lock.js';
import { criuSearchPath } from '../../core/criu-path.js';
import type { Check } from '../../core/doctor-check.js';
import { criuProbeCacheCheck } from '../../core/doctor.js';
import type { NetworkLockSetting } from '../../core/settings.js';
import { criuBinary, writeArchConfig } from '../support/arch-env.js';
import { REPO_ROOT } from '../support/images.js';

/**
 * `arch-cli doctor` on this machine's real runc, containerd and CRIU: what it
 * reports, and the fix it names when a setting is wrong; and the network
 * lock method CRIU is given (core/criu-network-lock.ts).
 */

const CLI = path.join(REPO_ROOT, 'bin/arch-cli');
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-doctor-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function doctor(overrides: Record<string, string> = {}, env: Record<string, string> = {}) {
  const config = writeArchConfig(fs.mkdtempSync(path.join(dir, 'cfg-')), overrides);
  const r = await execa(CLI, ['doctor', '--json'], { env: { ARCH_CONFIG: config, ...env }, reject: false });
  return { exitCode: r.exitCode, out: r.stdout, err: r.stderr, config };
}

function parse(out: string): { ok: boolean; checks: Check[] } {
  return JSON.parse(out) as { ok: boolean; checks: Check[] };
}

test('every dependency with its version, CRIU probed, and the network lock this node uses', async () => {
  const r = await doctor();
  const report = parse(r.out);
  const byName = new Map(report.checks.map((c) => [c.name, c]));
  expect(report.checks.filter((c) => !c.ok && !c.optional)).toEqual([]);
  expect(report.ok).toBe(true);
  expect(r.exitCode).toBe(0);
  for (const name of ['runc', 'containerd', 'ctr', 'criu', 'iproute2'])
    expect(byName.get(name)?.version).toMatch(/^\d/);
  expect(Number(byName.get('criu')!.version!.split('.')[0])).toBeGreaterThanOrEqual(4);
  expect(byName.get('criu check')?.ok).toBe(true);
  expect(byName.get('hardware breakpoints')?.ok).toBe(true);
  // `auto` picks what CRIU itself says it can do.
  const nft = await execa(criuBinary(), ['check', '--feature', 'network_lock_nftables'], { reject: false });
  expect(byName.get('network lock')).toMatchObject({ ok: true, version: nft.exitCode === 0 ? 'nftables' : 'iptables' });
  // Whether CRIU can keep its kernel probes: /run must be a tmpfs (a warning at most).
  const runFs = (await execa('stat', ['-f', '-c', '%T', '/run'])).stdout.trim();
  expect(byName.get('CRIU probe cache')).toMatchObject({ ok: runFs === 'tmpfs', optional: true });
  // Dirty page tracking (pre-dumps): an information line that says what CRIU says on this machine.
  const dirty = await execa(criuBinary(), ['check', '--feature', 'mem_dirty_track'], { reject: false });
  expect(byName.get('dirty page tracking')).toMatchObject({
    ok: true,
    info: true,
    version: dirty.exitCode === 0 ? 'present' : 'absent',
    detail: expect.stringContaining('pre-dumps could cut the freeze time') as string,
  });
  const text = await execa(CLI, ['doctor'], { env: { ARCH_CONFIG: r.config }, reject: false });
  expect(text.stdout).toMatch(
    new RegExp(`^info  dirty page tracking\\s+${dirty.exitCode === 0 ? 'present' : 'absent'}  `, 'm'),
  );
});

test('a CRIU that is not there: the failure says which setting to fix, exit code 1', async () => {
  const r = await doctor({ ARCH_CRIU: path.join(dir, 'no-such-criu') });
  const report = parse(r.out);
  expect(report.ok).toBe(false);
  expect(r.exitCode).toBe(1);
  expect(report.checks.find((c) => c.name === 'criu')).toMatchObject({
    ok: false,
    fix: expect.stringContaining('ARCH_CRIU'),
  });
});

test('an unknown network lock method is refused with the field and its values', async () => {
  const r = await doctor({ ARCH_CRIU_NETWORK_LOCK: 'pf' });
  expect(r.exitCode).toBe(2);
  expect(JSON.parse(r.out)).toMatchObject({
    error: expect.stringContaining('ARCH_CRIU_NETWORK_LOCK: "pf" is not a network lock method'),
  });
  expect(JSON.parse(r.out).error).toContain('auto, iptables, nftables, skip');
});

test('iptables-restore is required for the iptables method only', async () => {
  // iptables-restore lives in /usr/sbin: without it on PATH, the iptables method cannot work.
  const noSbin = { PATH: '/usr/bin:/bin' };
  const ipt = await doctor({ ARCH_CRIU_NETWORK_LOCK: 'iptables' }, noSbin);
  const iptReport = parse(ipt.out);
  expect(iptReport.checks.find((c) => c.name === 'network lock')).toMatchObject({ ok: true, version: 'iptables' });
  expect(iptReport.checks.find((c) => c.name === 'iptables')).toMatchObject({
    ok: false,
    fix: expect.stringContaining('apt-get install iptables'),
  });
  expect(iptReport.checks.find((c) => c.name === 'iptables')?.optional).toBeFalsy();
  expect(ipt.exitCode).toBe(1);

  const nft = await doctor({ ARCH_CRIU_NETWORK_LOCK: 'nftables' }, noSbin);
  const nftReport = parse(nft.out);
  expect(nftReport.checks.find((c) => c.name === 'iptables')).toMatchObject({ ok: false, optional: true });
  if (nftReport.checks.find((c) => c.name === 'network lock')?.ok) expect(nft.exitCode).toBe(0);
});

describe('the network lock CRIU is given', () => {
  const settings = (criuNetworkLock: NetworkLockSetting) => ({
    criu: criuBinary(),
    criuNetworkLock,
    criuNoBreakpoints: true,
  });

  test.each(['nftables', 'skip'] as const)(
    '%s: a CRIU configuration file naming it, through CRIU_CONFIG_FILE',
    async (m) => {
      const { env, networkLock } = await criuRunEnv(settings(m));
      expect(networkLock).toBe(m);
      expect(env.CRIU_FAULT).toBe('130');
      expect(path.dirname(env.CRIU_CONFIG_FILE!)).toBe(CRIU_RUN_DIR);
      expect(fs.readFileSync(env.CRIU_CONFIG_FILE!, 'utf8')).toMatch(new RegExp(`^network-lock ${m}$`, 'm'));
    },
  );

  test("iptables is CRIU's own default: nothing to add (but ARCH's gzip first on CRIU's PATH)", async () => {
    expect(await criuRunEnv(settings('iptables'))).toEqual({
      env: { CRIU_FAULT: '130', PATH: criuSearchPath() },
      networkLock: 'iptables',
      runcArgs: [],
    });
  });

  test('auto asks CRIU, and a damaged answer file is asked again, not trusted', async () => {
    // The answer is kept for an absolute CRIU path (what the installer sets, and criuBinary() gives).
    const criu = criuBinary();
    expect(path.isAbsolute(criu)).toBe(true);
    const nft = await execa(criu, ['check', '--feature', 'network_lock_nftables'], { reject: false });
    const expected = nft.exitCode === 0 ? 'nftables' : 'iptables';
    const cacheFile = path.join(CRIU_RUN_DIR, 'network-lock.json');
    const saved = fs.existsSync(cacheFile) ? fs.readFileSync(cacheFile) : undefined;
    try {
      fs.mkdirSync(CRIU_RUN_DIR, { recursive: true });
      fs.writeFileSync(cacheFile, '{not json');
      // A fresh process: this one may have the answer in memory already.
      const r = await execa(process.execPath, [
        '--input-type=module',
        '-e',
        `import { networkLockOf } from ${JSON.stringify(path.join(REPO_ROOT, 'dist/core/criu-network-lock.js'))};` +
          `process.stdout.write(await networkLockOf({ criu: ${JSON.stringify(criu)}, criuNetworkLock: 'auto' }));`,
      ]);
      expect(r.stdout).toBe(expected);
      expect(Object.values(JSON.parse(fs.readFileSync(cacheFile, 'utf8')) as Record<string, string>)).toEqual([
        expected,
      ]);
    } finally {
      if (saved) fs.writeFileSync(cacheFile, saved);
      else fs.rmSync(cacheFile, { force: true });
    }
  });
});

test('CRIU probe cache: ok on a tmpfs, a warning with the fix elsewhere (and for a path that is not there)', async () => {
  const tmpfs = fs.mkdtempSync(path.join(dir, 'tmpfs-'));
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'arch-doctor-test', tmpfs]);
  try {
    expect(criuProbeCacheCheck(tmpfs)).toMatchObject({ ok: true, optional: true });
  } finally {
    await execa('umount', [tmpfs]);
  }
  // Not a tmpfs (proc never is; the test's own directory may be one, as /tmp is on Debian 13).
  const notTmpfs = criuProbeCacheCheck('/proc');
  expect(notTmpfs).toMatchObject({ ok: false, optional: true });
  expect(notTmpfs.detail).toContain('/proc is not a tmpfs');
  expect(notTmpfs.fix).toContain('mount /proc as a tmpfs');
  expect(criuProbeCacheCheck(path.join(dir, 'missing'))).toMatchObject({ ok: false, optional: true });
});
