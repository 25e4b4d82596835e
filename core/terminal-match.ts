import path from 'node:path';
import { CheckpointUnusableError } from '../contract/errors.js';
import { SPEC_FILE } from './checkpoint-layout.js';
import { readSmallFile } from './manifest.js';
import type { OciSpec } from './oci-spec.js';

/**
 * A job restores only into a container with the terminal setting it was
 * checkpointed with (`process.terminal`: `docker run -t`, a pod's `tty:
 * true`). CRIU gives the restored processes back the very stdio they had: a
 * terminal's session cannot be rebuilt on pipes (CRIU: "Don't have tty to
 * inherit session from"), and a job that had pipes never sends the terminal
 * that the caller waits for on its console socket. That second case was the
 * worse one: the console socket was spent by the failed restore, so the
 * fresh start could not have its terminal either and the container did not
 * start at all (Docker: "failed to retrieve console master"). Checked from
 * the checkpoint's own copy of its spec (verified with the rest) before runc
 * is started, so that the fresh start still has the caller's console socket.
 */
export async function assertSameTerminal(checkpointDir: string, spec: OciSpec): Promise<void> {
  const text = await readSmallFile(path.join(checkpointDir, SPEC_FILE), 16 << 20).catch(() => undefined);
  if (!text) return; // a checkpoint without a copy of its spec: runc and CRIU decide, as before
  let had: boolean;
  try {
    had = !!(JSON.parse(text.toString('utf8')) as OciSpec).process?.terminal;
  } catch {
    return;
  }
  const has = !!spec.process?.terminal;
  if (had === has) return;
  throw new CheckpointUnusableError(
    'terminal',
    had
      ? 'the job was checkpointed with a terminal (docker run -t, a pod with tty: true) and this container has none. Fix: create it with a terminal, as before'
      : 'the job was checkpointed without a terminal and this container has one (docker run -t, a pod with tty: true). Fix: create it without a terminal, as before',
  );
}
