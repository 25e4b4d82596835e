/**
 * What a node does on its own when it may have lost its jobs: a node cut
 * off from Temporal for ARCH_FENCE_AFTER stops the jobs the cluster would
 * restore elsewhere (after one last checkpoint, if it can finish before the
 * node could be declared dead), and a node that finds a job's lease given
 * to another node (or revoking this one) stops its stale copy. Either way
 * the job runs in one place only.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { checkpointContainer } from '../core/checkpoint.js';
import type { NodeContext } from '../core/context.js';
import { Runc } from '../core/runc.js';
import { errorMessage } from '../contract/errors.js';
import { Manager } from '../contract/managers.js';
import { reachableEverywhere } from '../contract/types.js';
import type { NodeReport, ProtectedContainer, StaleStop } from '../contract/liveness.js';
import type { ArchContainer } from '../core/node-containers.js';
import type { Lease } from '../core/lease.js';

/** A protected container as the liveness loop (worker/liveness.ts) lists it, with what fencing needs. */
export interface Listed {
  container: ArchContainer;
  report: ProtectedContainer;
  lease?: Lease;
}

/** Kept free before the node may be declared dead: the stop itself, clock skew. */
const FENCE_MARGIN_MS = 1500;
/** Below this, no checkpoint is tried: it would not finish in time. */
const MIN_CHECKPOINT_MS = 1000;

async function kill(ctx: NodeContext, l: Listed): Promise<void> {
  await new Runc(ctx.settings, l.container.runcRoot).kill(l.container.id, 'KILL', true);
}

export async function stopStale(ctx: NodeContext, stale: Listed[]): Promise<StaleStop[]> {
  const out: StaleStop[] = [];
  for (const l of stale) {
    const { namespace, id } = l.container;
    const log = ctx.log.child({ phase: 'stale', namespace, container: id });
    try {
      await kill(ctx, l);
      log.error(
        { owner: l.lease!.node, generation: l.lease!.generation, state: l.lease!.state },
        `stale copy stopped: the job of ${namespace}/${id} is on node ${l.lease!.node} now (generation ${l.lease!.generation}); this node never restores it`,
      );
      out.push({ namespace, id, at: new Date().toISOString(), owner: l.lease!.node, generation: l.lease!.generation });
    } catch (err) {
      log.error({ err: errorMessage(err) }, 'could not stop a stale copy of a job that runs elsewhere');
    }
  }
  return out;
}

/** The jobs a recovery would restore elsewhere: stop them here, with a last checkpoint when time allows. */
export async function fence(
  ctx: NodeContext,
  listed: Listed[],
  deadlineMs: number,
): Promise<NonNullable<NodeReport['fenced']>> {
  const log = ctx.log.child({ phase: 'fence' });
  const targets = listed.filter(
    (l) =>
      l.container.status === 'running' && reachableEverywhere(l.report.mode) && l.report.manager === Manager.containerd,
  );
  const at = new Date().toISOString();
  log.error(
    {
      containers: targets.map((l) => `${l.container.namespace}/${l.container.id}`),
      deadline: new Date(deadlineMs).toISOString(),
    },
    'Temporal unreachable for ARCH_FENCE_AFTER: fencing this node (its protected jobs stop here before another node may restore them)',
  );
  const stopped = await Promise.all(
    targets.map(async (l) => {
      const { namespace, id, runcRoot } = l.container;
      const ref = `${namespace}/${id}`;
      const budget = deadlineMs - FENCE_MARGIN_MS - Date.now();
      let how = 'killed';
      if (budget >= MIN_CHECKPOINT_MS) {
        const abort = new AbortController();
        const done = await Promise.race([
          checkpointContainer(ctx, { namespace, id, runcRoot, signal: abort.signal }).then(
            () => 'checkpointed',
            (err: unknown) => `checkpoint failed: ${errorMessage(err)}`,
          ),
          sleep(budget, 'checkpoint took too long'),
        ]);
        abort.abort();
        how = done === 'checkpointed' ? done : `killed (${done})`;
      }
      if (how !== 'checkpointed') await kill(ctx, l).catch(() => undefined);
      log.error({ namespace, container: id, how }, `fenced: ${ref} ${how}`);
      return ref;
    }),
  );
  return { at, stopped };
}
