/**
 * The restore crash count as the job's lease records it (core/lease.ts):
 * plain data and its check, apart from the counting itself
 * (core/restore-crashes.ts, which reads the lease), so that the lease
 * depends on the shape alone.
 */
import { CHECKPOINT_NAME_RE } from './checkpoint-layout.js';

export interface RestoreCrashes {
  /** The checkpoint's name (its directory in the store) whose restores crashed. */
  checkpoint: string;
  /** Restores of it in a row that crashed within the window. */
  count: number;
  /** The last of them, for the log and the reason: "exited with code 132 2 s after its restore on node-a". */
  last: string;
  at: string;
}

/** A lease's restoreCrashes as read from storage: the right shape, else nothing. */
export function validRestoreCrashes(v: unknown): RestoreCrashes | undefined {
  const c = v as Partial<RestoreCrashes> | undefined;
  if (
    !c ||
    typeof c.checkpoint !== 'string' ||
    !CHECKPOINT_NAME_RE.test(c.checkpoint) ||
    !Number.isInteger(c.count) ||
    c.count! < 1 ||
    typeof c.last !== 'string' ||
    c.last.length > 512 ||
    typeof c.at !== 'string' ||
    c.at.length > 64
  )
    return undefined;
  return { checkpoint: c.checkpoint, count: c.count!, last: c.last, at: c.at };
}
