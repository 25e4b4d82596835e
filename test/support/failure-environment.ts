import type { Circus } from '@jest/types';
import { TestEnvironment as NodeEnvironment } from 'jest-environment-node';

/** What after-failure needs of a live test cluster (temporal.ts registers them). */
export interface DiagnosableCluster {
  dir: string;
  logDigest(): string;
}

/**
 * Jest's node environment, plus a count of failed tests and hooks that the
 * test file can read (globalThis.__archFailures): test/support/after-failure
 * shows the test clusters' logged warnings and errors after a failure, before
 * the cluster (its logs included) is removed. Without it, a failure that only
 * CI hit shows the assertion and nothing of why.
 */
export default class FailureCountingEnvironment extends NodeEnvironment {
  handleTestEvent(event: Circus.Event): void {
    if (event.name === 'test_fn_failure' || event.name === 'hook_failure') {
      const g = this.global as typeof this.global & { __archFailures?: number };
      g.__archFailures = (g.__archFailures ?? 0) + 1;
    }
  }
}
