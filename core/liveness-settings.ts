/**
 * How long a node may stay silent: ARCH_NODE_DEAD_AFTER (default 60 s)
 * before the cluster declares it dead and restores its jobs elsewhere, and
 * ARCH_FENCE_AFTER (default half of it) before a node that cannot reach
 * Temporal stops its own protected jobs. Fencing must come first, with time
 * for one last checkpoint, or two copies of a job could run.
 */
import { InvalidArgumentError } from 'commander';
import { ArchInputError } from '../contract/errors.js';
import { parseDurationMs } from './option-parsers.js';
import { settingsVars } from './settings.js';

export interface LivenessSettings {
  deadAfterMs: number;
  fenceAfterMs: number;
  /** How often the worker reports (several beats fit in the fence time). */
  beatMs: number;
}

export const DEFAULT_DEAD_AFTER_MS = 60_000;
const MIN_DEAD_AFTER_MS = 3_000;

function duration(v: string, field: string, fix: string): number {
  try {
    const ms = parseDurationMs(v, field);
    if (ms > 0) return ms;
  } catch (err) {
    if (!(err instanceof InvalidArgumentError)) throw err;
  }
  throw new ArchInputError(field, `"${v}" is not a positive duration`, fix);
}

export function livenessSettings(env: NodeJS.ProcessEnv = process.env): LivenessSettings {
  const { vars } = settingsVars(env);
  const deadAfterMs = vars.ARCH_NODE_DEAD_AFTER
    ? duration(vars.ARCH_NODE_DEAD_AFTER, 'ARCH_NODE_DEAD_AFTER', 'write e.g. 60s or 2m (at least 3s)')
    : DEFAULT_DEAD_AFTER_MS;
  if (deadAfterMs < MIN_DEAD_AFTER_MS)
    throw new ArchInputError(
      'ARCH_NODE_DEAD_AFTER',
      `${deadAfterMs} ms is too short: a busy node would be declared dead while it works`,
      'use at least 3s (default 60s)',
    );
  const fenceAfterMs = vars.ARCH_FENCE_AFTER
    ? duration(vars.ARCH_FENCE_AFTER, 'ARCH_FENCE_AFTER', 'write e.g. 30s, less than ARCH_NODE_DEAD_AFTER')
    : Math.floor(deadAfterMs / 2);
  if (fenceAfterMs >= deadAfterMs)
    throw new ArchInputError(
      'ARCH_FENCE_AFTER',
      `${fenceAfterMs} ms is not less than ARCH_NODE_DEAD_AFTER (${deadAfterMs} ms): the node would still run its jobs when another node restores them`,
      'leave it unset (half of ARCH_NODE_DEAD_AFTER) or set it well below ARCH_NODE_DEAD_AFTER',
    );
  // Several beats per fence period: one lost report must not fence a healthy node.
  const beatMs = Math.max(500, Math.min(10_000, Math.floor(fenceAfterMs / 4)));
  return { deadAfterMs, fenceAfterMs, beatMs };
}
