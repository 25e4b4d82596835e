import { syncsInFlight, threadPoolSize, THREAD_POOL_SIZE, withThreadPool } from '../../core/thread-pool.js';
import { launcherRuns, NODE_LAUNCHERS } from '../support/fake-front-targets.js';

/**
 * ARCH's launchers give its Node processes a larger libuv thread pool
 * (core/thread-pool.ts). The launchers run for real here, with Node and runc
 * replaced by scripts that print what they were given.
 */
const run = launcherRuns('arch-pool-', (name) => `echo "${name} \${UV_THREADPOOL_SIZE-unset}"`);

test.each(NODE_LAUNCHERS)('%s gives Node the thread pool', async (file, args) => {
  expect(await run(file, args)).toBe(`node ${THREAD_POOL_SIZE}`);
});

test.each(NODE_LAUNCHERS)('%s leaves a pool size set already alone', async (file, args) => {
  expect(await run(file, args, { UV_THREADPOOL_SIZE: '6' })).toBe('node 6');
});

test("a call arch-runc passes to runc gets containerd's environment untouched", async () => {
  expect(await run('bin/arch-runc', ['--root', '/run/x', 'state', 'c1'])).toBe('runc unset');
});

test('fdatasyncs in flight: the pool but 4 threads, at least 2; the pool as libuv reads it', () => {
  expect(syncsInFlight({})).toBe(2); // libuv's default of 4
  expect(syncsInFlight({ UV_THREADPOOL_SIZE: String(THREAD_POOL_SIZE) })).toBe(THREAD_POOL_SIZE - 4);
  expect(syncsInFlight({ UV_THREADPOOL_SIZE: '5' })).toBe(2);
  expect(threadPoolSize({ UV_THREADPOOL_SIZE: 'many' })).toBe(4);
  expect(threadPoolSize({ UV_THREADPOOL_SIZE: '0' })).toBe(4);
  expect(threadPoolSize({ UV_THREADPOOL_SIZE: '5000' })).toBe(1024);
  expect(withThreadPool({}).UV_THREADPOOL_SIZE).toBe(String(THREAD_POOL_SIZE));
  expect(withThreadPool({ UV_THREADPOOL_SIZE: '3' }).UV_THREADPOOL_SIZE).toBe('3');
});
