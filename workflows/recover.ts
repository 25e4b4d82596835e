/**
 * Recovery of a dead node's jobs. recoverNode (one per declared death)
 * sorts its containers: a container Docker or Kubernetes manages is left to
 * its orchestrator (ARCH never creates it behind its back); one whose
 * checkpoints lived on the dead node's own disk (local mode) cannot be
 * reached and is reported so, by name; every other one gets its own
 * recoverContainer workflow, which restores it from its last checkpoint on
 * the live node that sees the storage and has the most free memory, and
 * tries the next node when one fails.
 */
import { ParentClosePolicy, executeChild, workflowInfo } from '@temporalio/workflow';
import { reachableEverywhere } from '../contract/types.js';
import { isManaged, managerDisplay } from '../contract/managers.js';
import { NOT_RECOVERABLE_LOCAL } from '../contract/liveness.js';
import type {
  ContainerRecoveryInput,
  NodeRecoveryInput,
  NodeRecoveryResult,
  RecoveredContainer,
} from '../contract/liveness.js';
import { workflowIds } from '../contract/names.js';
import { checkNode, checkRef, onNode, refString, rootMessage, track } from './common.js';

/** Candidates that may be dead too must not hold a recovery up for long. */
const PROBE_START_TIMEOUT_MS = 5_000;

export async function recoverNode(input: NodeRecoveryInput): Promise<NodeRecoveryResult> {
  const deadNode = checkNode(input.deadNode, 'deadNode');
  const t0 = Date.now();
  const at = Date.parse(input.declaredDeadAt) || t0;
  const show = (phase: string, details: string) =>
    track({ sourceNode: deadNode, operation: 'recover-node', phase }, `**${phase}** — node ${deadNode}\n\n${details}`);
  show('recovering', `${input.containers.length} ARCH container(s) on the dead node`);
  const results = await Promise.all(
    input.containers.map(async (c): Promise<RecoveredContainer> => {
      const ref = checkRef(c);
      if (isManaged(c.manager))
        return {
          ...ref,
          outcome: 'left-to-manager',
          reason: `${managerDisplay(c.manager)} creates it again (ARCH does not create it behind ${managerDisplay(c.manager)}'s back); arch-runc restores its checkpoint then`,
        };
      if (!reachableEverywhere(c.mode)) return { ...ref, outcome: 'not-recoverable', reason: NOT_RECOVERABLE_LOCAL };
      if (!c.spec)
        return {
          ...ref,
          outcome: 'not-recoverable',
          reason: 'not recoverable: containerd could not describe it, so nothing knows how to create it again',
        };
      const workflowId = workflowIds.recoverContainer(ref.namespace, ref.id, deadNode, at);
      try {
        return await executeChild(recoverContainer, {
          workflowId,
          taskQueue: workflowInfo().taskQueue,
          args: [
            {
              deadNode,
              spec: c.spec,
              candidates: input.candidates,
              nodeStartTimeoutMs: input.nodeStartTimeoutMs,
            } satisfies ContainerRecoveryInput,
          ],
          parentClosePolicy: ParentClosePolicy.ABANDON,
        });
      } catch (err) {
        return { ...ref, outcome: 'failed', workflowId, reason: rootMessage(err) };
      }
    }),
  );
  const count = (o: string) => results.filter((r) => r.outcome === o).length;
  show(
    'done',
    `${count('recovered')} recovered, ${count('not-recoverable')} not recoverable, ${count('left-to-manager')} left to their manager, ${count('failed')} failed`,
  );
  return { deadNode, containers: results, totalMs: Date.now() - t0 };
}

export async function recoverContainer(input: ContainerRecoveryInput): Promise<RecoveredContainer> {
  const deadNode = checkNode(input.deadNode, 'deadNode');
  const ref = checkRef(input.spec);
  const spec = { ...input.spec, ...ref };
  const workflowId = workflowInfo().workflowId;
  let target = '';
  const phase = (p: string, details: string) =>
    track(
      {
        container: refString(ref),
        namespace: ref.namespace,
        sourceNode: deadNode,
        targetNode: target,
        operation: 'recover',
        phase: p,
      },
      `**${p}** — ${refString(ref)} from dead node ${deadNode}${target ? ` → ${target}` : ''}\n\n${details}`,
    );
  phase('choose', `asking ${input.candidates.map((c) => c.node).join(', ') || 'no live node'}`);
  const t = { nodeStartTimeoutMs: input.nodeStartTimeoutMs };
  const probes = await Promise.all(
    input.candidates
      .filter((c) => c.node !== deadNode)
      .map((c) =>
        onNode(c.node, 'quick', {
          nodeStartTimeoutMs: Math.min(t.nodeStartTimeoutMs ?? PROBE_START_TIMEOUT_MS, PROBE_START_TIMEOUT_MS),
        })
          .probeRecoveryTarget({ spec })
          .catch((err: unknown) => ({ node: c.node, error: rootMessage(err) })),
      ),
  );
  const attempts: { node: string; error: string }[] = [];
  const usable = [];
  for (const p of probes) {
    if ('error' in p) attempts.push({ node: p.node, error: `not asked: ${p.error}` });
    else if (p.runningHere) return { ...ref, outcome: 'already-elsewhere', runningOn: p.node, workflowId };
    else if (p.why) attempts.push({ node: p.node, error: p.why });
    else usable.push(p);
  }
  // Most free memory first: the restore needs the job's whole memory at once.
  usable.sort((a, b) => b.freeMemBytes - a.freeMemBytes || a.node.localeCompare(b.node));
  for (const p of usable) {
    target = p.node;
    phase('claim', `taking the job from ${deadNode} on ${target}`);
    try {
      const claim = await onNode(target, 'quick', t).claimForRecovery({ spec, deadNode });
      if (!claim.claimed) {
        phase('done', `already runs on ${claim.owner} (generation ${claim.generation}): nothing to do`);
        return { ...ref, outcome: 'already-elsewhere', runningOn: claim.owner, workflowId, attempts };
      }
    } catch (err) {
      attempts.push({ node: target, error: `claim: ${rootMessage(err)}` });
      continue;
    }
    phase('restore', `restoring from the last checkpoint on ${target}`);
    try {
      const r = await onNode(target, 'restore', { ...t, restoreAttempts: 1 }).restoreContainer({ spec });
      phase('done', `runs on ${target} (pid ${r.pid}), restored from ${r.restoredFrom}`);
      return { ...ref, outcome: 'recovered', runningOn: target, workflowId, attempts };
    } catch (err) {
      attempts.push({ node: target, error: rootMessage(err) });
    }
  }
  phase('failed', attempts.map((a) => `${a.node}: ${a.error}`).join('\n'));
  return {
    ...ref,
    outcome: 'failed',
    workflowId,
    attempts,
    reason: usable.length
      ? `the restore failed on every node that could take it (${attempts.map((a) => `${a.node}: ${a.error}`).join('; ')})`
      : `no live node can take it (${attempts.map((a) => `${a.node}: ${a.error}`).join('; ') || 'none alive'}). Fix: ${
          attempts.length > 0 && attempts.every((a) => a.error.includes('(cpu-features)'))
            ? "add a node whose CPU has the checkpoint's instructions and create the container there (arch-runc restores its checkpoint); created on a node without them, the job starts fresh"
            : 'mount the shared storage and import the image on a live node, then create the container there: arch-runc restores its checkpoint'
        }`,
  };
}
