import { ArchInputError, CheckpointUnusableError } from '../../contract/errors.js';

/** The ArchInputError `fn` throws (fails the test if it throws nothing or something else). */
export function inputError(fn: () => unknown): ArchInputError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ArchInputError);
    return err as ArchInputError;
  }
  throw new Error('expected an ArchInputError, nothing was thrown');
}

/** The CheckpointUnusableError `p` rejects with (or `p()` throws); fails the test otherwise. */
export async function checkpointUnusable(p: Promise<unknown> | (() => unknown)): Promise<CheckpointUnusableError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    expect(err).toBeInstanceOf(CheckpointUnusableError);
    return err as CheckpointUnusableError;
  }
  throw new Error('expected a CheckpointUnusableError, nothing was thrown');
}
