/**
 * Failure messages and stack traces go into an encoded payload (so the
 * payload codec encrypts them) instead of plain fields of the history. They
 * can hold anything a tool printed: a failed `ctr run`, for one, names every
 * `--env` it was given. Loaded by path (DataConverter.failureConverterPath)
 * in the worker and bundled into the workflow code (scripts/bundle-workflows):
 * it must stay importable inside the workflow sandbox.
 */
import { DefaultFailureConverter } from '@temporalio/common';

export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
