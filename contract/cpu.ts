/**
 * A node's CPU as a checkpoint records it, and what another CPU lacks to
 * run a job checkpointed on it: plain data and a pure comparison, shared by
 * the restore (core/cpu-features.ts) and the workflows that choose a node.
 */
export interface CpuRecord {
  /** process.arch of the node (x64, arm64). */
  arch: string;
  /** Its instruction-set extensions, sorted. */
  features: string[];
}

/**
 * What `here` lacks to run a job whose processes started on `recorded`,
 * said as the end of a sentence ("lacks avx512f, avx512bw, which …" /
 * "is arm64, …"); undefined when nothing (or when either is not known).
 */
export function cpuShortfall(
  recorded: CpuRecord | undefined,
  here: CpuRecord | undefined,
): { what: string; missing: string[] } | undefined {
  if (!recorded || !here) return undefined;
  if (recorded.arch !== here.arch)
    return { what: `is ${here.arch} and the job's was ${recorded.arch}`, missing: [recorded.arch] };
  const have = new Set(here.features);
  const missing = recorded.features.filter((f) => !have.has(f));
  return missing.length ? { what: `lacks ${missing.join(', ')}`, missing } : undefined;
}
