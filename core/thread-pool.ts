/**
 * The size of libuv's thread pool that ARCH's launchers give its Node
 * processes (bin/arch-cli, bin/arch-worker, shim/arch-runc.c; the benchmark
 * runner too), unless UV_THREADPOOL_SIZE is set already. libuv reads it
 * once, when the pool first starts, so it is set before Node starts.
 *
 * Why: a format-2 checkpoint makes each new chunk file durable on its own
 * (an fdatasync per file, started while the next chunks are made: see
 * core/chunk-dir.ts), and every fdatasync holds a pool thread until the disk
 * answers. With libuv's default of 4 threads only 2 could wait on the disk
 * at once, and the reads, writes, renames and stats of the next chunks
 * queued behind them. Measured on 256 MiB (2-core VM, 5 repetitions each):
 * what is left of the chunking once CRIU is done went from 98-226 ms to
 * 58-85 ms, the publish from 201-341 ms to 120-212 ms.
 * The threads are made when the pool first starts (a command that does no
 * asynchronous file work, `--help`, starts none).
 */
export const THREAD_POOL_SIZE = 16;

/** The pool libuv has in this process: UV_THREADPOOL_SIZE as it read it (4 unless set; at most 1024). */
export function threadPoolSize(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number(env.UV_THREADPOOL_SIZE);
  return Number.isInteger(n) && n > 0 ? Math.min(n, 1024) : 4;
}

/** fdatasyncs that may wait on the disk at once: the pool but 4 threads for all other file work, at least 2. */
export function syncsInFlight(env: NodeJS.ProcessEnv = process.env): number {
  return Math.max(2, threadPoolSize(env) - 4);
}

/** The environment a launcher gives an ARCH process: THREAD_POOL_SIZE unless the pool's size is set already. */
export function withThreadPool(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  if (env.UV_THREADPOOL_SIZE !== undefined) return env;
  return { ...env, UV_THREADPOOL_SIZE: String(THREAD_POOL_SIZE) };
}
