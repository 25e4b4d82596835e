/**
 * The glibc malloc settings ARCH's launchers give its own Node processes
 * (bin/arch-runc's C front, bin/arch-worker, bin/arch-cli; the benchmark
 * runner sets them the same way), unless GLIBC_TUNABLES is set already.
 *
 * Why: the crypto, zstd and digest code of a checkpoint or a restore streams
 * hundreds of MiB through short-lived 64 KiB..4 MiB buffers (each
 * cipher.update returns a new one). With glibc's defaults, a free that
 * leaves more than 128 KiB at the top of the heap gives it back to the
 * kernel, and the next buffer faults fresh pages in again: measured in a
 * sealed restore's shim, 1034 brk calls and 67,000 page faults for 256 MiB
 * of page images, the decryption 4-5x slower than in a process whose heap
 * was not trimmed (a page fault costs ~10 µs on these VMs). Keeping up to
 * 64 MiB of free heap, and serving buffers below 32 MiB from the heap
 * rather than from a fresh mmap each, brings it to 127-165 brk calls; the
 * process's peak memory stays where it was (the garbage collector frees the
 * buffers as it goes: ~93 MB peak either way for 256 MiB through AES-GCM).
 * And glibc.malloc.hugetlb=1 has glibc ask for transparent huge pages for
 * its heap (madvise; the kernel's default mode here): one fault per 2 MiB
 * instead of per 4 KiB. Measured: a 256 MiB sealed file decrypted in
 * ~350 ms instead of ~525 (12,300 -> 3,300 faults); the shim's Node start
 * from its snapshot (whose 7 MB blob is read into malloc'd memory) 94 ms
 * instead of 145 (node -e 0: 62 ms). Where the kernel's THP mode is
 * "never" it changes nothing.
 *
 * Only ARCH's process gets them: it removes them from its environment at
 * start (forgetMallocTunables), so runc, CRIU and everything else it starts
 * see the environment they would have seen without ARCH. glibc reads
 * GLIBC_TUNABLES once, when the process starts, so removing it later does
 * not undo it here.
 *
 * The same string is in shim/arch-runc.c, bin/arch-worker and bin/arch-cli
 * (a unit test keeps them equal).
 */
export const MALLOC_TUNABLES =
  'glibc.malloc.trim_threshold=67108864:glibc.malloc.mmap_threshold=33554432:glibc.malloc.hugetlb=1';

/** Set beside GLIBC_TUNABLES by whichever launcher added it (and only then). */
export const MALLOC_TUNED_MARK = 'ARCH_MALLOC_TUNED';

/** The environment a launcher gives an ARCH process: MALLOC_TUNABLES, unless GLIBC_TUNABLES is set already. */
export function withMallocTunables(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  if (env.GLIBC_TUNABLES !== undefined) return env;
  return { ...env, GLIBC_TUNABLES: MALLOC_TUNABLES, [MALLOC_TUNED_MARK]: '1' };
}

/** Drop what a launcher added, so that programs this process starts do not inherit it. */
export function forgetMallocTunables(env: NodeJS.ProcessEnv = process.env): void {
  if (env[MALLOC_TUNED_MARK] !== '1') return;
  delete env[MALLOC_TUNED_MARK];
  if (env.GLIBC_TUNABLES === MALLOC_TUNABLES) delete env.GLIBC_TUNABLES;
}
