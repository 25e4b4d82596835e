import { ArchInputError } from '../../core/errors.js';

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
