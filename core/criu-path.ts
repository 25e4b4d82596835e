import { fileURLToPath } from 'node:url';

/** What CRIU searches when the caller's environment has no PATH (runc's own default). */
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * The PATH runc hands to CRIU (runc passes its environment on): ARCH's
 * helpers for CRIU first, then the caller's. The only helper is a `gzip`
 * (shim/criu-gzip.c) for the tar that CRIU runs on a container's tmpfs
 * mounts: the same format, without gzip's 30 MB/s compression inside a
 * frozen checkpoint. Where it is missing (a build without the front), tar
 * finds the system's gzip further on: slower, never wrong.
 */
export function criuSearchPath(callerPath: string | undefined = process.env.PATH): string {
  // '../shim/': dist/shim from dist/core and from the shim's and the CLI's bundles alike (computed when called:
  // the shim's start-up snapshot must not keep the build's location).
  const helpers = fileURLToPath(new URL('../shim/criu-path', import.meta.url));
  return `${helpers}:${callerPath || DEFAULT_PATH}`;
}
