import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  DEFAULT_THROUGHPUT_BYTES_PER_SEC,
  planDrain,
  simulate,
  ThroughputEstimator,
  type DrainContainer,
  type DrainInput,
} from '../../core/drain-plan.js';
import { ArchInputError } from '../../contract/errors.js';
import { captureLogger } from '../support/fake-metadata.js';

const NOW = new Date('2026-11-28T16:58:00Z');
const GB = 1e9;
/** 100 MB/s = 100 000 bytes per ms: 1 GB takes 10 s. */
const T = 100e6;

function c(id: string, priority: number, gb: number, ns = 'default'): DrainContainer {
  // Split between memory and rootfs diff: the planner must count both.
  return { namespace: ns, id, priority, rssBytes: (gb * GB) / 2, upperDirBytes: (gb * GB) / 2 };
}

function input(over: Partial<DrainInput>): DrainInput {
  return {
    now: NOW,
    deadline: new Date(NOW.getTime() + 3_600_000),
    containers: [],
    throughputBytesPerSec: T,
    perContainerOverheadMs: 0,
    maxParallel: 1,
    safetyMarginMs: 0,
    ...over,
  };
}

describe('planDrain', () => {
  test('orders by priority (higher first), then size (smaller first)', () => {
    const plan = planDrain(
      input({
        containers: [
          c('big-low', 1, 3),
          c('small-low', 1, 1),
          c('big-high', 9, 4),
          c('small-high', 9, 2),
          c('mid', 5, 1),
        ],
      }),
    );
    expect(plan.order.map((p) => p.id)).toEqual(['small-high', 'big-high', 'mid', 'small-low', 'big-low']);
    expect(plan.notExpectedToFit).toEqual([]);
    // Serial at 100 MB/s: 2 GB -> 20 s, +4 GB -> 60 s, +1 -> 70 s, +1 -> 80 s, +3 -> 110 s.
    expect(plan.order.map((p) => p.expectedFinishMs)).toEqual([20_000, 60_000, 70_000, 80_000, 110_000]);
    expect(plan.order.map((p) => p.estimatedMs)).toEqual([20_000, 40_000, 10_000, 10_000, 30_000]);
  });

  test('splits fit / not fit against deadline minus safety margin; a too-big container does not block smaller ones', () => {
    const plan = planDrain(
      input({
        deadline: new Date(NOW.getTime() + 45_000),
        safetyMarginMs: 5_000,
        containers: [c('huge', 10, 5), c('b', 5, 1), c('c', 5, 2), c('d', 1, 0.5)],
      }),
    );
    expect(plan.budgetMs).toBe(40_000);
    expect(plan.expectedToFit.map((p) => [p.id, p.expectedFinishMs])).toEqual([
      ['b', 10_000],
      ['c', 30_000],
      ['d', 35_000],
    ]);
    // 'huge' (50 s alone) cannot make it; it goes last, best effort, after the others.
    expect(plan.notExpectedToFit.map((p) => [p.id, p.expectedStartMs, p.expectedFinishMs])).toEqual([
      ['huge', 35_000, 85_000],
    ]);
    expect(plan.order.map((p) => p.id)).toEqual(['b', 'c', 'd', 'huge']);
  });

  test('parallel lanes share the disk: parallelism hides overhead but never adds bandwidth', () => {
    const four = [c('a', 1, 1), c('b', 1, 1), c('c', 1, 1), c('d', 1, 1)];
    // Overhead 5 s each: serial = 4 x (5 + 10) = 60 s; 4 lanes overlap the
    // overheads, then share 100 MB/s for 4 GB = 40 s: all finish at 45 s.
    const withOverhead = planDrain(input({ containers: four, perContainerOverheadMs: 5_000, maxParallel: 4 }));
    expect(withOverhead.parallelism).toBe(4);
    expect(withOverhead.order.map((p) => p.expectedFinishMs)).toEqual([45_000, 45_000, 45_000, 45_000]);

    // No overhead: lanes cannot beat total bytes / throughput, so one lane
    // (which finishes the first container soonest) is chosen.
    const noOverhead = planDrain(input({ containers: four, perContainerOverheadMs: 0, maxParallel: 4 }));
    expect(noOverhead.parallelism).toBe(1);
    expect(Math.max(...noOverhead.order.map((p) => p.expectedFinishMs))).toBe(40_000);
  });

  test('picks the parallelism that saves the most high-priority containers', () => {
    // Budget 30 s, 3 x 1 GB with 10 s overhead each. 1 lane: a at 20 s, b at
    // 40 s: only 1 fits. 2 lanes: overheads overlap, then a and b share the
    // disk and both finish at 30 s: 2 fit. Running all 3 at once would end at
    // 40 s, so with 3 lanes c is still left out: same result, more lanes, so 2.
    const plan = planDrain(
      input({
        deadline: new Date(NOW.getTime() + 30_000),
        containers: [c('a', 1, 1), c('b', 1, 1), c('c', 1, 1)],
        perContainerOverheadMs: 10_000,
        maxParallel: 3,
      }),
    );
    expect(plan.parallelism).toBe(2);
    expect(plan.expectedToFit.map((p) => p.id)).toEqual(['a', 'b']);
    expect(plan.notExpectedToFit.map((p) => p.id)).toEqual(['c']);
  });

  test('a deadline already passed: nothing is expected to fit, order is still given', () => {
    const plan = planDrain(
      input({ deadline: new Date(NOW.getTime() - 1000), containers: [c('a', 1, 1), c('b', 2, 1)] }),
    );
    expect(plan.budgetMs).toBe(-1000);
    expect(plan.expectedToFit).toEqual([]);
    expect(plan.order.map((p) => p.id)).toEqual(['b', 'a']);
  });

  test('never promises less than total bytes / throughput', () => {
    const containers = Array.from({ length: 12 }, (_, i) => c(`c${i}`, i % 3, 0.1 + ((i * 37) % 11) / 10));
    const totalMs = (containers.reduce((s, x) => s + x.rssBytes + x.upperDirBytes, 0) / T) * 1000;
    for (const maxParallel of [1, 2, 4, 8]) {
      const plan = planDrain(input({ containers, perContainerOverheadMs: 700, maxParallel }));
      expect(Math.max(...plan.order.map((p) => p.expectedFinishMs))).toBeGreaterThanOrEqual(Math.floor(totalMs));
    }
  });

  test('empty node', () => {
    const plan = planDrain(input({ containers: [] }));
    expect(plan.order).toEqual([]);
    expect(plan.parallelism).toBe(1);
  });

  test('rejects impossible inputs with the field named', () => {
    const field = (over: Partial<DrainInput>): string => {
      try {
        planDrain(input(over));
      } catch (err) {
        expect(err).toBeInstanceOf(ArchInputError);
        return (err as ArchInputError).field;
      }
      throw new Error('expected an error');
    };
    expect(field({ maxParallel: 0 })).toBe('maxParallel');
    expect(field({ throughputBytesPerSec: 0 })).toBe('throughputBytesPerSec');
    expect(field({ deadline: new Date('nope') })).toBe('deadline');
    expect(field({ containers: [{ namespace: 'n', id: 'x', priority: 1, rssBytes: -1, upperDirBytes: 0 }] })).toBe(
      'containers[n/x].rssBytes',
    );
  });
});

describe('simulate', () => {
  test('fair share: two writers each get half the throughput', () => {
    // 1000 and 3000 bytes at 1 byte/ms, 2 lanes: both write at 0.5 until the
    // first is done at 2000 ms; the second then has 2000 left at full speed.
    expect(simulate([{ bytes: 1000 }, { bytes: 3000 }], 2, 1, 0, 0)).toEqual([
      { start: 0, finish: 2000 },
      { start: 0, finish: 4000 },
    ]);
  });

  test('zero-byte containers cost only their overhead', () => {
    expect(simulate([{ bytes: 0 }, { bytes: 0 }], 1, 1, 50, 0)).toEqual([
      { start: 0, finish: 50 },
      { start: 50, finish: 100 },
    ]);
  });
});

describe('ThroughputEstimator', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-throughput-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('uses the default without history, then an EWMA of observations, persisted across instances', () => {
    const file = path.join(dir, 'sub', 'throughput.json');
    const est = new ThroughputEstimator(file, { alpha: 0.5 });
    expect(est.bytesPerSec).toBe(DEFAULT_THROUGHPUT_BYTES_PER_SEC);
    expect(est.sampleCount).toBe(0);

    expect(est.observe(1e9, 10_000)).toBe(100e6); // first sample is taken as is
    expect(est.observe(1e9, 5_000)).toBe(150e6); // 0.5 * 200 MB/s + 0.5 * 100 MB/s
    expect(est.sampleCount).toBe(2);

    const again = new ThroughputEstimator(file);
    expect(again.bytesPerSec).toBe(150e6);
    expect(again.sampleCount).toBe(2);
    const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    expect(doc).toMatchObject({ version: 1, bytesPerSec: 150e6, samples: 2 });
    expect(fs.readdirSync(path.dirname(file))).toEqual(['throughput.json']); // no temp files left
  });

  test('ignores tiny and nonsensical samples', () => {
    const file = path.join(dir, 't.json');
    const est = new ThroughputEstimator(file, { defaultBytesPerSec: 42e6 });
    est.observe(1024, 1); // overhead-dominated
    est.observe(1e9, 0);
    est.observe(NaN, 100);
    expect(est.bytesPerSec).toBe(42e6);
    expect(est.sampleCount).toBe(0);
    expect(fs.existsSync(file)).toBe(false);
  });

  test('a corrupt history file falls back to the default with a warning', () => {
    const file = path.join(dir, 't.json');
    fs.writeFileSync(file, '{"version":1,"bytesPer');
    const { logger, events } = captureLogger();
    const est = new ThroughputEstimator(file, { logger });
    expect(est.bytesPerSec).toBe(DEFAULT_THROUGHPUT_BYTES_PER_SEC);
    expect(events('throughput.load_failed')).toHaveLength(1);
    // and it recovers on the next observation
    est.observe(1e9, 10_000);
    expect(new ThroughputEstimator(file).bytesPerSec).toBe(100e6);
  });

  test('an unwritable path does not throw; the estimate lives on in memory', () => {
    const blocker = path.join(dir, 'file');
    fs.writeFileSync(blocker, 'x');
    const { logger, events } = captureLogger();
    const est = new ThroughputEstimator(path.join(blocker, 'throughput.json'), { logger });
    expect(est.observe(1e9, 10_000)).toBe(100e6);
    expect(est.bytesPerSec).toBe(100e6);
    expect(events('throughput.save_failed')).toHaveLength(1);
  });
});
