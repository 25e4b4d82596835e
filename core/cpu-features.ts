import fs from 'node:fs';
import { readProcStat } from './processes.js';
import { CheckpointUnusableError } from '../contract/errors.js';
import { cpuShortfall, type CpuRecord } from '../contract/cpu.js';

/**
 * The instruction-set extensions of a node's CPU, recorded with each
 * checkpoint, so that a restore on a CPU that lacks one is refused before
 * anything runs.
 *
 * A process picks its instructions once, when it starts: glibc resolves its
 * string and memory functions for the CPU it finds (memcpy with AVX-512 on
 * CPUs that have it), numeric libraries (OpenBLAS, MKL, PyTorch, NumPy) do
 * the same, and JITs compile for it. Restored on a CPU without those
 * instructions it dies with SIGILL at its next memcpy, and its orchestrator
 * restarts it into the same restore: a crash loop the job never leaves.
 * Spot fleets mix instance types (an Intel node with AVX-512 reclaimed, the
 * job rescheduled on an AMD one without), and CRIU checks instructions
 * only against an image runc never asks it to write (`--cpu-cap` with
 * cpuinfo.img). A refused restore starts the job fresh with reason
 * `cpu-features`, naming what is missing.
 *
 * Only flags that name instructions a program may use count (the list
 * below, as CRIU's own instruction mask does): the others (`hypervisor`,
 * mitigations, timer and power features) differ between hosts that run the
 * same code. On arm64 every `Features` entry names instructions.
 */
const X86_INSTRUCTION_FLAGS = new Set(
  (
    'mmx sse sse2 pni ssse3 sse4_1 sse4_2 sse4a popcnt abm bmi1 bmi2 lahf_lm cx8 cx16 cmov movbe ' +
    'avx avx2 fma fma4 f16c xop tbm aes pclmulqdq sha_ni vaes vpclmulqdq gfni adx rdrand rdseed rdpid ' +
    'fsgsbase clflushopt clwb clzero xsave xsaveopt xsavec xsaves xgetbv1 3dnowprefetch prefetchwt1 ' +
    'avx512f avx512dq avx512cd avx512bw avx512vl avx512ifma avx512vbmi avx512_vbmi2 avx512_vnni ' +
    'avx512_bitalg avx512_vpopcntdq avx512_bf16 avx512_fp16 avx512_4vnniw avx512_4fmaps avx512_vp2intersect ' +
    'avx_vnni avx_vnni_int8 avx_ifma avx_ne_convert amx_tile amx_bf16 amx_int8 amx_fp16 ' +
    'movdiri movdir64b serialize waitpkg cldemote enqcmd wbnoinvd'
  ).split(' '),
);

export type { CpuRecord };

/** The instruction-set extensions /proc/cpuinfo lists (its first CPU: a node's CPUs are alike). */
export function featuresIn(cpuinfo: string, arch: string = process.arch): string[] {
  const line = /^(?:flags|Features)\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? '';
  const all = line.split(/\s+/).filter(Boolean);
  return [...new Set(arch === 'x64' || arch === 'ia32' ? all.filter((f) => X86_INSTRUCTION_FLAGS.has(f)) : all)].sort();
}

let mine: CpuRecord | undefined;

/** This node's CPU record (undefined where /proc/cpuinfo cannot be read: nothing is then recorded or checked). */
export function thisCpu(cpuinfo = '/proc/cpuinfo'): CpuRecord | undefined {
  if (mine && cpuinfo === '/proc/cpuinfo') return mine;
  let text: string;
  try {
    text = fs.readFileSync(cpuinfo, 'utf8');
  } catch {
    return undefined;
  }
  const r = { arch: process.arch, features: featuresIn(text) };
  if (cpuinfo === '/proc/cpuinfo') mine = r;
  return r;
}

/**
 * Refuse (CheckpointUnusableError 'cpu-features') a checkpoint taken on a
 * CPU of another architecture or with instructions this one lacks. A
 * checkpoint that records no CPU (an older ARCH) is not checked.
 */
export function assertCpuCanRun(recorded: CpuRecord | undefined, here: CpuRecord | undefined): void {
  const short = cpuShortfall(recorded, here);
  if (!short) return;
  if (recorded!.arch !== here!.arch) {
    throw new CheckpointUnusableError(
      'cpu-features',
      `the checkpoint was taken on a ${recorded!.arch} CPU and this node's is ${here!.arch}. Fix: restore it on a ${recorded!.arch} node (a node selector on kubernetes.io/arch)`,
    );
  }
  throw new CheckpointUnusableError(
    'cpu-features',
    `the checkpoint was taken on a CPU with ${short.missing.join(', ')}, which this node's CPU lacks: the job chose those instructions when it started and would die (SIGILL) here. Fix: run the job on nodes whose CPUs have them (one instance family, or a node selector on the CPU's features)`,
  );
}

/** Clock ticks (USER_HZ, 100 a second) since boot, now: what /proc/PID/stat's start times count. */
export function ticksSinceBoot(): number {
  return Math.ceil(Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 100);
}

/** Where a container's processes came from: the restore that made them, as its shim recorded it. */
export interface RestoredCpu {
  /** The `cpu` of the checkpoint it was restored from (absent: it recorded none). */
  cpu?: CpuRecord;
  /** ticksSinceBoot() when that restore was done. */
  atTicks: number;
}

/**
 * The CPU a checkpoint of the job records: the one its processes chose
 * their instructions on. A job restored here runs what its processes chose
 * on the CPU they started on, whatever this node has: the checkpoint it was
 * restored from says which, and that is what a later restore must offer
 * (a job that moved from a CPU without AVX-512 to one with it can move
 * back). A process started since that restore chose here: then this
 * node's CPU. A process the job forks in the few milliseconds between
 * CRIU's resume and the restore's end counts as restored.
 */
export async function cpuOfJob(
  pids: readonly number[] | undefined,
  restored: RestoredCpu | undefined,
): Promise<CpuRecord | undefined> {
  const here = thisCpu();
  if (!restored?.cpu || !pids?.length || restored.cpu.arch !== here?.arch) return here;
  for (const pid of pids) {
    const start = Number((await readProcStat(pid))?.start);
    if (!Number.isFinite(start) || start > restored.atTicks) return here;
  }
  return restored.cpu;
}
