/**
 * Registered for every test file (jest setupFilesAfterEnv). After a failed
 * test it prints what the live test clusters' nodes logged as warnings and
 * errors (see failure-environment.ts). It reads the clusters from a global
 * that test/support/temporal.ts fills, so that test files without a cluster
 * do not load Temporal's client.
 */
import type { DiagnosableCluster } from './failure-environment.js';

const g = globalThis as typeof globalThis & { __archFailures?: number; __archLiveClusters?: Set<DiagnosableCluster> };
let seen = 0;

afterEach(() => {
  const failures = g.__archFailures ?? 0;
  if (failures === seen) return;
  seen = failures;
  for (const c of g.__archLiveClusters ?? []) {
    console.log(`test failed: warnings and errors logged by the nodes of cluster ${c.dir}:\n${c.logDigest()}`);
  }
});
