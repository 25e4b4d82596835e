import { criuVersion, Runc } from './runc.js';
import type { Settings } from './settings.js';

let cached: Promise<{ runc: string; criu: string }> | undefined;

/** runc and CRIU versions for manifests, asked once per process. */
export function runtimeVersions(settings: Settings): Promise<{ runc: string; criu: string }> {
  cached ??= Promise.all([new Runc(settings, '/run/runc').version(), criuVersion(settings.criu)])
    .then(([runc, criu]) => ({ runc, criu }))
    .catch(() => ({ runc: 'unknown', criu: 'unknown' }));
  return cached;
}
