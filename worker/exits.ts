/**
 * Exit codes for arch-runc's delete. runc never learns how a container's
 * init process ended (containerd's shim reaps it), so delete could not tell
 * a finished job from a crash. containerd publishes every exit as an event;
 * the worker follows them and records each ARCH container's exit in its runc
 * state dir (core/shim-state.ts recordExit), where delete reads it: a
 * non-zero exit keeps the checkpoint, so the job continues from it when the
 * container is created again. The worker announces itself (its pid beside
 * the runc roots) so that a delete arriving before the event waits for it.
 */
import path from 'node:path';
import type { Containerd } from '../core/containerd.js';
import { errorMessage } from '../contract/errors.js';
import { validateContainerId, validateNamespace } from '../contract/ids.js';
import type { Logger } from '../core/log.js';
import { findRuncRoots } from '../core/runc-roots.js';
import type { Settings } from '../core/settings.js';
import { announceExitRecorder, recordExit } from '../core/shim-state.js';

export async function startExitRecorder(o: {
  containerd: Containerd;
  /** The node's settings: the exit lands in whichever of its runc roots holds the container (core/runc-roots.ts). */
  settings: Settings;
  log: Logger;
}): Promise<{ stop: () => Promise<void> }> {
  const bases = async () => [...new Set([o.settings.runcRootBase, ...(await findRuncRoots(o.settings)).bases])];
  const follower = o.containerd.followTaskExits(
    (e) => {
      const log = o.log.child({ namespace: e.namespace, container: e.containerId, phase: 'exit' });
      try {
        // Names from containerd become a path below the runc root: checked like any other.
        validateNamespace(e.namespace);
        validateContainerId(e.containerId);
      } catch (err) {
        log.warn({ err: errorMessage(err) }, 'exit event of a container whose name ARCH does not accept: not recorded');
        return;
      }
      // One containerd serves several clients (ctr, CRI, Docker's "moby"), each with its own runc root.
      bases()
        .then((all) =>
          Promise.all(
            all.map((base) =>
              recordExit(path.join(base, e.namespace), e.containerId, {
                exitStatus: e.exitStatus,
                exitedAt: e.exitedAt,
              }),
            ),
          ),
        )
        .then(
          (recorded) => {
            if (recorded.some(Boolean)) log.info({ exitStatus: e.exitStatus }, 'container exited');
          },
          (err: unknown) => log.warn({ err: errorMessage(err) }, 'could not record the exit code'),
        );
    },
    (err) => o.log.warn({ phase: 'exit', err: errorMessage(err) }, 'containerd events ended; following them again'),
  );
  // Delete waits for an exit record only while someone is there to write it.
  const undo: (() => Promise<void>)[] = [];
  for (const base of await bases()) {
    undo.push(
      await announceExitRecorder(base).catch((err: unknown) => {
        o.log.warn(
          { phase: 'exit', runcRootBase: base, err: errorMessage(err) },
          'could not announce the exit recorder: a delete right after an exit may not see its code',
        );
        return async () => undefined;
      }),
    );
  }
  const unannounce = async () => {
    for (const u of undo) await u();
  };
  return {
    stop: async () => {
      await unannounce().catch(() => undefined);
      await follower.stop();
    },
  };
}
