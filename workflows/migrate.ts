/**
 * migrateContainer(ns/id, from, to):
 *   describe on `from` → check `to` (alive, no copy running, image) →
 *   checkpoint on `from` (processes stop) → transfer to `to` →
 *   restore on `to` (verified running, restored) → clean up `from`.
 *
 * Invariants: never two running copies (a restore that fails removes its
 * copy; compensation first removes any copy on `to`), and never none after
 * success. Until the checkpoint nothing has changed, so bad input and dead
 * nodes fail before it. After the checkpoint every failure compensates:
 * the container is restored on `from` from the same checkpoint.
 */
import { ApplicationFailure, defineQuery, isCancellation, setHandler } from '@temporalio/workflow';
import { FailureType } from '../contract/failures.js';
import type { ActivityTimeouts, MigrateInput, MigrateProgress, MigrateResult } from '../contract/types.js';
import { checkNode, checkRef, inputFailure, onNode, refString, rootMessage, track } from './common.js';
import {
  checkpointOn,
  compensate,
  expectedOf,
  handOverProtection,
  handsOverEarly,
  moveCheckpointed,
  prepareMove,
  Timeline,
  withdrawOffer,
  withdrawsOffers,
} from './move-steps.js';

export const migrateProgressQuery = defineQuery<MigrateProgress>('progress');

export async function migrateContainer(input: MigrateInput): Promise<MigrateResult> {
  const ref = checkRef(input);
  const from = checkNode(input.from, 'from');
  const to = checkNode(input.to, 'to');
  if (from === to) throw inputFailure(`from and to are both "${from}". Fix: pass two different nodes`);
  const t: ActivityTimeouts = input;
  const tidy = withdrawsOffers();
  const early = handsOverEarly();
  const t0 = Date.now();
  const tl = new Timeline();
  const progress: MigrateProgress = { phase: 'preflight', from, to, phases: tl.phases };
  setHandler(migrateProgressQuery, () => progress);
  const phase = (p: string, details?: string) => {
    progress.phase = p;
    track(
      {
        container: refString(ref),
        namespace: ref.namespace,
        sourceNode: from,
        targetNode: to,
        operation: 'migrate',
        phase: p,
      },
      `**${p}** — ${refString(ref)}: ${from} → ${to}${details ? `\n\n${details}` : ''}`,
    );
  };
  phase('preflight');

  const { spec } = await prepareMove(ref, from, to, t, tl, tidy);
  phase('checkpoint');
  const ck = await checkpointOn(ref, from, spec, t, tl);

  let moved: Awaited<ReturnType<typeof moveCheckpointed>>;
  try {
    moved = await moveCheckpointed(
      spec,
      ck,
      to,
      t,
      tl,
      (p) => phase(p, `checkpoint ${Math.round(ck.sizeBytes / 1024)} KiB (${ck.mode} storage)`),
      tidy,
      early ? () => handOverProtection(ref, from, to) : undefined,
    );
  } catch (err) {
    progress.error = rootMessage(err);
    phase('compensate', `move failed: ${progress.error}`);
    // Whatever failed (or was cancelled), the checkpoint must not stay downloadable.
    if (tidy) await withdrawOffer(from, ck.offer, t);
    const back = await compensate(spec, ck, from, to, err, t, tl);
    phase('compensated', `runs again on ${from} (pid ${back.pid})`);
    if (isCancellation(err)) throw err;
    const result: MigrateResult = {
      ...ref,
      from,
      to,
      outcome: 'compensated',
      runningOn: from,
      checkpoint: { sizeBytes: ck.sizeBytes, mode: ck.mode, transferred: 'present' },
      phases: tl.phases,
      totalMs: Date.now() - t0,
      activityMs: tl.activityMs(),
    };
    throw ApplicationFailure.create({
      type: FailureType.compensated,
      message: `${refString(ref)} could not move to ${to} (${progress.error}); it runs again on ${from}`,
      nonRetryable: true,
      details: [result],
    });
  }

  phase('cleanup');
  if (!early) await handOverProtection(ref, from, to);
  let cleanupError: string | undefined;
  try {
    await tl.step('cleanup', from, () =>
      onNode(from, 'cleanup', t).cleanupSource({
        spec,
        removeCheckpoint: moved.received.kind === 'copied',
        expected: expectedOf(ck),
        offerToken: moved.offer?.token,
      }),
    );
  } catch (err) {
    // The container runs on `to`; a stale record on `from` is only untidy.
    cleanupError = rootMessage(err);
  }
  phase(
    'done',
    `runs on ${to} (pid ${moved.restored.pid})${cleanupError ? `; cleanup on ${from} failed: ${cleanupError}` : ''}`,
  );
  return {
    ...ref,
    from,
    to,
    outcome: 'migrated',
    runningOn: to,
    checkpoint: { sizeBytes: ck.sizeBytes, mode: ck.mode, transferred: moved.received.kind },
    phases: tl.phases,
    totalMs: Date.now() - t0,
    activityMs: tl.activityMs(),
    ...(cleanupError ? { cleanupError } : {}),
  };
}
