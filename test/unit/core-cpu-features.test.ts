import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CheckpointUnusableError } from '../../contract/errors.js';
import {
  assertCpuCanRun,
  cpuOfJob,
  featuresIn,
  thisCpu,
  ticksSinceBoot,
  type CpuRecord,
} from '../../core/cpu-features.js';

/** /proc/cpuinfo's first lines on an Intel node with AVX-512 and an AMD one without (shortened). */
const INTEL =
  'processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 popcnt aes avx avx2 fma bmi1 bmi2 erms avx512f avx512dq avx512cd avx512bw avx512vl hypervisor md_clear flush_l1d\n\nprocessor\t: 1\nflags\t\t: fpu\n';
const AMD =
  'processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 sse4a popcnt aes avx avx2 fma bmi1 bmi2 erms vaes sha_ni hypervisor arat\n';
const ARM = 'processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve\n';

const cpu = (text: string, arch = 'x64'): CpuRecord => ({ arch, features: featuresIn(text, arch) });

test('only flags that name instructions count, from the first CPU, sorted', () => {
  expect(featuresIn(INTEL, 'x64')).toEqual([
    'aes',
    'avx',
    'avx2',
    'avx512bw',
    'avx512cd',
    'avx512dq',
    'avx512f',
    'avx512vl',
    'bmi1',
    'bmi2',
    'fma',
    'popcnt',
    'sse',
    'sse2',
    'sse4_1',
    'sse4_2',
    'ssse3',
  ]);
  // On arm64 every Features entry names instructions.
  expect(featuresIn(ARM, 'arm64')).toEqual([
    'aes',
    'asimd',
    'atomics',
    'crc32',
    'evtstrm',
    'fp',
    'pmull',
    'sha1',
    'sha2',
    'sve',
  ]);
  expect(featuresIn('', 'x64')).toEqual([]);
});

test('a checkpoint from a CPU with AVX-512 is refused on one without, naming what is missing and the fix', () => {
  let err: unknown;
  try {
    assertCpuCanRun(cpu(INTEL), cpu(AMD));
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(CheckpointUnusableError);
  expect((err as CheckpointUnusableError).reason).toBe('cpu-features');
  expect((err as Error).message).toContain('avx512bw, avx512cd, avx512dq, avx512f, avx512vl, which this node');
  expect((err as Error).message).toContain('SIGILL');
  expect((err as Error).message).toContain('Fix: run the job on nodes whose CPUs have them');
});

test('a CPU with more (or other non-instruction) features restores; another architecture does not', () => {
  // The AMD node's extras (sse4a, vaes, sha_ni) and the hosts' other flags do not matter the other way round.
  expect(() =>
    assertCpuCanRun(cpu(AMD.replace(' sse4a', '').replace(' vaes', '').replace(' sha_ni', '')), cpu(AMD)),
  ).not.toThrow();
  expect(() =>
    assertCpuCanRun(
      cpu(INTEL),
      cpu(`${INTEL.split('\n')[0]}\nflags\t: ${INTEL.split('flags\t\t: ')[1]!.split('\n')[0]} avx512_vnni\n`),
    ),
  ).not.toThrow();
  expect(() => assertCpuCanRun(cpu(ARM, 'arm64'), cpu(AMD))).toThrow(/taken on a arm64 CPU and this node's is x64/);
  // A checkpoint of an older ARCH records no CPU: not checked.
  expect(() => assertCpuCanRun(undefined, cpu(AMD))).not.toThrow();
});

test("this node's record comes from /proc/cpuinfo; none where it cannot be read", () => {
  const here = thisCpu();
  expect(here?.arch).toBe(process.arch);
  if (process.arch === 'x64') expect(here?.features).toContain('sse2');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-cpu-'));
  try {
    expect(thisCpu(path.join(dir, 'missing'))).toBeUndefined();
    fs.writeFileSync(path.join(dir, 'cpuinfo'), AMD);
    expect(thisCpu(path.join(dir, 'cpuinfo'))?.features).toContain('sha_ni');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a restored job's CPU is the one its processes started on, until it starts a process here", async () => {
  const here = thisCpu()!;
  const older = { arch: here.arch, features: here.features.slice(0, 2) };
  const now = ticksSinceBoot();
  // This test's own process started before "the restore": a restored process.
  await expect(cpuOfJob([process.pid], { cpu: older, atTicks: now })).resolves.toEqual(older);
  // Started after it (the restore was long before): it chose on this CPU.
  await expect(cpuOfJob([process.pid], { cpu: older, atTicks: 0 })).resolves.toEqual(here);
  // Not restored, or from a checkpoint that records no CPU, or of another architecture: this CPU.
  await expect(cpuOfJob([process.pid], undefined)).resolves.toEqual(here);
  await expect(cpuOfJob([process.pid], { atTicks: now })).resolves.toEqual(here);
  await expect(cpuOfJob([process.pid], { cpu: { ...older, arch: 'riscv64' }, atTicks: now })).resolves.toEqual(here);
  // A process that is gone cannot be told: this CPU.
  await expect(cpuOfJob([2 ** 22 + 7], { cpu: older, atTicks: now })).resolves.toEqual(here);
});
