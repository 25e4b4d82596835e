/**
 * What `worker_threads` and `node:worker_threads` resolve to inside the
 * shim's bundle (package.json's bundle:shim: --alias). Never imported by
 * name.
 *
 * Why: Node's worker module keeps state that does not survive a V8 start-up
 * snapshot (a SharedArrayBuffer-backed cwd counter): loaded while the
 * snapshot is built, every Worker started from the blob dies at once on
 * Node 20 ("undefined is not an integer typed array"). pino loads it at
 * require time (its `isMainThread`, and thread-stream for transports the
 * shim never uses), and so did ARCH's own modules. Here the real module is
 * loaded on first use, after the snapshot is deserialized.
 *
 * Only what the bundled code uses is here: an ES import of any other name
 * fails the bundle, so a new use is noticed.
 */
import { createRequire } from 'node:module';
import type * as WorkerThreads from 'node:worker_threads';

let loaded: typeof WorkerThreads | undefined;
// createRequire, not require: esbuild would resolve a plain require through the alias to this file again.
const real = (): typeof WorkerThreads =>
  (loaded ??= createRequire(import.meta.url)('node:worker_threads') as typeof WorkerThreads);

/** The bundle runs only as the shim's main thread (the workers load dist/core/*-worker.js, never the bundle). */
export const isMainThread = true;

/** `new Worker(...)` builds the real one (a constructor that returns an object yields that object). */
export const Worker = function Worker(...args: ConstructorParameters<typeof WorkerThreads.Worker>) {
  return new (real().Worker)(...args);
} as unknown as typeof WorkerThreads.Worker;
