import type {
  CheckpointInfo,
  ContainerSpec,
  ContainerSummary,
  DrainPlanSummary,
  PlannedContainer,
  ReceiveResult,
  RestoreResult,
  TransferOffer,
} from '../../contract/types.js';
import type { Stubs } from './workflow-env.js';

/**
 * Plain answers for stub activities: what the real activities return, cut to
 * what the workflows read. Each builder takes the fields a test cares about.
 */

export const IMAGE = 'localhost/arch-test/counter:1';

export function spec(id: string, o: Partial<ContainerSpec> = {}): ContainerSpec {
  return {
    namespace: 'default',
    id,
    image: IMAGE,
    env: ['ARCH_ENABLE=1'],
    args: ['/counter'],
    labels: {},
    annotations: {},
    mounts: [],
    netHost: false,
    mode: 'local',
    priority: 0,
    ...o,
  };
}

export function described(s: ContainerSpec, status = 'RUNNING') {
  return { spec: s, status, ms: 1 };
}

export function offer(token: string): TransferOffer {
  return { url: `http://127.0.0.1:1/${token}`, token, expiresAt: '2100-01-01T00:00:00.000Z' };
}

export function checkpoint(
  s: ContainerSpec,
  node: string,
  o: Partial<CheckpointInfo> & { offer?: TransferOffer } = {},
): CheckpointInfo & { offer?: TransferOffer } {
  return {
    namespace: s.namespace,
    id: s.id,
    node,
    dir: `/var/lib/arch/${s.namespace}/${s.id}/ck-1`,
    containerDir: `/var/lib/arch/${s.namespace}/${s.id}`,
    mode: s.mode,
    manifestSha256: `sha-${s.id}`,
    createdAt: '2026-01-01T00:00:00.000Z',
    sizeBytes: 4096,
    timings: {},
    totalMs: 5,
    reused: false,
    ...o,
  };
}

export function received(kind: ReceiveResult['kind'] = 'copied'): ReceiveResult {
  return { kind, dir: '/var/lib/arch/x', bytes: 4096, files: 3, ms: 2 };
}

export function restored(s: ContainerSpec, node: string, pid = 4242): RestoreResult {
  return {
    namespace: s.namespace,
    id: s.id,
    node,
    pid,
    restoredFrom: `/var/lib/arch/${s.namespace}/${s.id}/ck-1`,
    alreadyRunning: false,
    timings: {},
    ms: 3,
  };
}

export function summary(id: string, o: Partial<ContainerSummary> = {}): ContainerSummary {
  return { namespace: 'default', id, status: 'RUNNING', pid: 100, priority: 0, ...o };
}

/**
 * The stubs of a move that goes well: `from` describes and checkpoints
 * (offering it, local storage), `to` has the image, receives and restores.
 * Tests override single activities to make one step fail.
 */
export function happyMove(s: ContainerSpec, from: string, to: string): Stubs {
  return {
    [from]: {
      describeContainer: () => described(s),
      checkpointContainer: () => checkpoint(s, from, { offer: offer('ck-token') }),
      offerCheckpoint: () => offer('ck-token-2'),
      offerImage: () => ({ ...offer('img-token'), ms: 1 }),
      withdrawOffer: () => true,
      cleanupSource: () => ({ removed: true }),
      restoreContainer: () => restored(s, from, 1111),
    },
    [to]: {
      checkTarget: () => ({ images: [IMAGE] }),
      ensureImage: () => ({ imported: true, ms: 1 }),
      receiveCheckpoint: () => received('copied'),
      restoreContainer: () => restored(s, to, 2222),
      removeContainer: () => ({ removed: false }),
    },
  };
}

/** Stubs with some activities replaced. */
export function withStubs(base: Stubs, over: Stubs): Stubs {
  const out: Stubs = {};
  for (const node of new Set([...Object.keys(base), ...Object.keys(over)]))
    out[node] = { ...base[node], ...over[node] };
  return out;
}

/** A drain plan as planDrain answers it: `fits` first, then `late` (not expected to finish in time). */
export function plan(
  fits: string[],
  late: { id: string; estimatedMs: number }[] = [],
  o: Partial<DrainPlanSummary> = {},
): DrainPlanSummary {
  const one = (id: string, expectedToFit: boolean, estimatedMs: number): PlannedContainer => ({
    namespace: 'default',
    id,
    priority: 0,
    bytes: 4096,
    estimatedMs,
    expectedFinishMs: estimatedMs,
    expectedToFit,
  });
  return {
    order: [...fits.map((id) => one(id, true, 100)), ...late.map((l) => one(l.id, false, l.estimatedMs))],
    parallelism: 1,
    expectedToFit: fits.length,
    notExpectedToFit: late.map((l) => `default/${l.id}`),
    budgetMs: 60_000,
    plannedAt: new Date().toISOString(),
    throughputBytesPerSec: 100e6,
    safetyMarginMs: 1_000,
    ...o,
  };
}
