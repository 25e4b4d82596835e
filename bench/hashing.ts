import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { execa } from 'execa';
import { digestFiles, digestFilesHere } from '../core/digest.js';
import type { Benchmark, BenchEnv, BenchOutcome, Row } from './support/registry.js';
import { median, msSince, round } from './support/stats.js';

/**
 * The digest step on its own: ARCH hashes every checkpoint file with sha256
 * when publishing and again when restoring (core/digest.ts digestFiles: a
 * worker thread per large file, or this thread too in the shim), on a
 * checkpoint that is mostly one big pages-*.img. Compared with
 * `openssl dgst -sha256` on the same file (page cache warm; coreutils' sha256sum
 * is slower here, ~350 MB/s, it does not use the SHA extensions), with SHA-256 on a
 * buffer already in memory (the single-core ceiling), and with the file split
 * in two halves hashed by two worker threads (for scale: manifests record the
 * whole-file sha256, which one thread computes, so ARCH cannot split a file).
 */
const SIZE_MB = 256;

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const { file, start, end } = workerData;
const h = createHash('sha256');
const fd = fs.openSync(file, 'r');
const buf = Buffer.allocUnsafe(4 << 20);
let pos = start;
while (pos < end) {
  const n = fs.readSync(fd, buf, 0, Math.min(buf.length, end - pos), pos);
  if (n <= 0) break;
  h.update(n === buf.length ? buf : buf.subarray(0, n));
  pos += n;
}
fs.closeSync(fd);
parentPort.postMessage(h.digest('hex'));
`;

function hashRange(file: string, start: number, end: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const w = new Worker(WORKER, { eval: true, workerData: { file, start, end } });
    w.once('message', (d: string) => {
      resolve(d);
      void w.terminate();
    });
    w.once('error', reject);
  });
}

export const benchmark: Benchmark = {
  name: 'hashing',
  title: `sha256 of a ${SIZE_MB} MiB checkpoint file: ARCH's digest vs openssl dgst -sha256`,
  order: 25,
  async run(env: BenchEnv): Promise<BenchOutcome> {
    const reps = env.reps || (env.quick ? 2 : 5);
    const file = path.join(env.workDir, 'pages.img');
    // Like the counter's memory: first half random, second half a pattern.
    const half = (SIZE_MB << 20) / 2;
    const data = Buffer.concat([randomBytes(half), Buffer.alloc(half, 0x5a)]);
    fs.writeFileSync(file, data);
    env.cleanup.defer('hash test file', () => fs.rmSync(file, { force: true }));
    const want = createHash('sha256').update(data).digest('hex');

    const arch: number[] = [];
    const inline: number[] = [];
    const raw: number[] = [];
    const mem: number[] = [];
    const two: number[] = [];
    for (let i = -1; i < reps; i++) {
      // i = -1: warm-up (page cache, JIT), not recorded.
      let t = process.hrtime.bigint();
      const [a] = (await digestFiles([file])).map((d) => d.sha256);
      const ta = msSince(t);
      t = process.hrtime.bigint();
      const [b] = (await digestFilesHere([file])).map((d) => d.sha256);
      const tb = msSince(t);
      t = process.hrtime.bigint();
      const r = await execa('openssl', ['dgst', '-sha256', '-r', file]);
      const tr = msSince(t);
      t = process.hrtime.bigint();
      createHash('sha256').update(data).digest('hex');
      const tm = msSince(t);
      t = process.hrtime.bigint();
      await Promise.all([hashRange(file, 0, half), hashRange(file, half, 2 * half)]);
      const t2 = msSince(t);
      if (a !== want || b !== want || !r.stdout.startsWith(want))
        throw new Error(`hashes disagree: ${a} ${b} ${r.stdout} ${want}`);
      if (i < 0) continue;
      arch.push(ta);
      inline.push(tb);
      raw.push(tr);
      mem.push(tm);
      two.push(t2);
    }
    const mbps = (ms: number) => round((SIZE_MB * 1.048576) / (ms / 1000));
    const rawMs = median(raw);
    const row = (metric: string, xs: number[], note?: string): Row => ({
      metric,
      unit: 'ms',
      arch: round(median(xs)),
      raw: round(rawMs),
      added: round(median(xs) - rawMs),
      ratio: round(median(xs) / rawMs),
      n: xs.length,
      note,
    });
    return {
      rows: [
        row(
          `sha256 of ${SIZE_MB} MiB (page cache): digestFiles on a worker thread vs openssl dgst -sha256`,
          arch,
          'checkpoint publishing, transfers',
        ),
        row(
          `sha256 of ${SIZE_MB} MiB (page cache): digestFilesHere (this thread) vs openssl dgst -sha256`,
          inline,
          "the shim's restore",
        ),
        row(
          `sha256 of ${SIZE_MB} MiB: in-memory buffer vs openssl dgst -sha256`,
          mem,
          'single-core ceiling, for scale',
        ),
        row(
          `sha256 of ${SIZE_MB} MiB: 2 halves on 2 worker threads vs openssl dgst -sha256`,
          two,
          'for scale: a whole-file sha256 cannot be split',
        ),
      ],
      notes: [
        `digestFiles: ${mbps(median(arch))} MB/s on a worker (its start-up included), ${mbps(median(inline))} MB/s on this thread (the shim); openssl dgst -sha256: ${mbps(rawMs)} MB/s; SHA-256 of a buffer in memory: ${mbps(median(mem))} MB/s; two halves on two threads: ${mbps(median(two))} MB/s (this machine has 2 cores).`,
      ],
      details: {
        sizeMb: SIZE_MB,
        reps,
        archMs: arch,
        inlineMs: inline,
        opensslMs: raw,
        inMemoryMs: mem,
        twoWorkersMs: two,
      },
    };
  },
};
