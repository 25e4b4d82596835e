import { ArchInputError } from '../contract/errors.js';
import { MIN_CHECKPOINT_INTERVAL_MS } from '../contract/intervals.js';
import { durationMs } from './duration.js';

export { MIN_CHECKPOINT_INTERVAL_MS };

/**
 * A periodic checkpoint interval (the container's variable, the node's
 * default, `arch-cli protect --every`): a unit is required and 5 s is the least.
 */
export function parseCheckpointIntervalMs(v: string, field: string): number {
  const ms = durationMs(v, { requireUnit: true });
  const fix = `set ${field} to a duration of at least ${MIN_CHECKPOINT_INTERVAL_MS / 1000}s with its unit, e.g. 30s, 10m or 1h`;
  if (ms === undefined) throw new ArchInputError(field, `"${v}" is not a duration`, fix);
  if (ms < MIN_CHECKPOINT_INTERVAL_MS)
    throw new ArchInputError(field, `"${v}" is shorter than ${MIN_CHECKPOINT_INTERVAL_MS / 1000} s`, fix);
  return ms;
}
