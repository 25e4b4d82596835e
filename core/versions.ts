import path from 'node:path';
import { cachedBinaryFact } from './binary-facts.js';
import { CRIU_RUN_DIR } from './criu-network-lock.js';
import { criuVersion, Runc } from './runc.js';
import type { Settings } from './settings.js';

let cached: Promise<{ runc: string; criu: string }> | undefined;

/** Where the versions are kept, per binary identity and boot (core/binary-facts.ts). */
const VERSIONS_FILE = path.join(CRIU_RUN_DIR, 'versions.json');

/**
 * runc and CRIU versions for manifests: asked of the binaries once per boot
 * and binary (two processes less on every checkpoint), and once per process.
 */
export function runtimeVersions(settings: Settings): Promise<{ runc: string; criu: string }> {
  const known = (v: string) => v !== 'unknown';
  const ask = async (question: () => Promise<string>) => {
    const v = await question();
    if (!known(v)) throw new Error('no version in the output'); // not kept: asked again next time
    return v;
  };
  // One after the other: both answers go to one file, and two writers at once would each drop the other's.
  cached ??= (async () => {
    const runc = await cachedBinaryFact(
      settings.runc,
      VERSIONS_FILE,
      () => ask(() => new Runc(settings, '/run/runc').version()),
      known,
    );
    return {
      runc,
      criu: await cachedBinaryFact(settings.criu, VERSIONS_FILE, () => ask(() => criuVersion(settings.criu)), known),
    };
  })().catch(() => ({ runc: 'unknown', criu: 'unknown' }));
  return cached;
}
