/**
 * nodeProtect(node): periodic checkpoints of one node's containers. One
 * long-running workflow per node (workflow id arch-protect-<node>), started
 * by the node's worker at start-up (signal-with-start: idempotent, and the
 * signal hands over the node's current settings).
 *
 * Every few seconds it lists the node's ARCH containers (the listing
 * activity reads each one's ARCH_CHECKPOINT_INTERVAL, or the node's
 * default); each running one with an interval is checkpointed with
 * leaveRunning when it is due. Due times carry jitter so containers started
 * together do not freeze together; at most `maxConcurrent` checkpoints run
 * at once on the node (its disk is what they share); a container is never
 * checkpointed while its previous checkpoint still runs, and one that
 * overran its interval gets a full interval after it ended.
 *
 * `arch-cli protect` changes a container's interval with the `protect`
 * update; those choices, and each container's last checkpoint, travel
 * across continueAsNew, so a worker restart or a new run keeps the pace.
 * A choice travels with its container too: a move (migrate, drain) signals
 * `protectHandOver` to the source node's workflow before it removes the
 * container there, and that workflow hands the choice on to the target
 * node's (`protectCarry`), which keeps it until the container shows up in
 * its listing (or an hour passes: a move that never arrived).
 *
 * Why one per node rather than one per container: the concurrency limit is
 * the node's, and one workflow sees all of the node's checkpoints at once
 * to enforce it without a semaphore spread over many workflows; discovery
 * is one listing for the node instead of one per container.
 */
import {
  allHandlersFinished,
  ApplicationFailure,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  getExternalWorkflowHandle,
  setCurrentDetails,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import { MIN_CHECKPOINT_INTERVAL_MS } from '../contract/intervals.js';
import { FailureType } from '../contract/failures.js';
import { isValidNodeName, workflowIds } from '../contract/names.js';
import type {
  ContainerSummary,
  PeriodicCheckpoint,
  ProtectCarry,
  ProtectHandOver,
  ProtectedContainer,
  ProtectNodeSettings,
  ProtectRequest,
  ProtectWatchInput,
  ProtectWatchState,
} from '../contract/types.js';
import { checkNode, checkRef, failureTypeOf, inputFailure, onNode, refString, rootMessage, track } from './common.js';

export const protectUpdate = defineUpdate<ProtectedContainer, [ProtectRequest]>('protect');
export const protectSettingsSignal = defineSignal<[ProtectNodeSettings]>('protectSettings');
export const protectStateQuery = defineQuery<ProtectWatchState>('protectState');
export const protectHandOverSignal = defineSignal<[ProtectHandOver]>('protectHandOver');
export const protectCarrySignal = defineSignal<[ProtectCarry]>('protectCarry');
/** How long a choice handed over for a container waits for it to show up on this node. */
const INCOMING_MS = 60 * 60_000;

const DEFAULTS = { discoverEveryMs: 10_000, jitter: 0.1, maxRoundsPerRun: 2000, maxConcurrent: 1 } as const;
/** Jitter never moves a checkpoint by more than this, whatever the interval. */
const MAX_JITTER_MS = 60_000;
/** Jitter never brings two checkpoints of a container closer than the least interval. */
const MIN_GAP_MS = MIN_CHECKPOINT_INTERVAL_MS;

interface Entry extends ProtectedContainer {
  /** From the container's environment or the node's default, as the listing said. */
  envIntervalMs?: number;
  dueMs?: number;
}

export async function nodeProtect(input: ProtectWatchInput): Promise<void> {
  const node = checkNode(input.node, 'node');
  const discoverEveryMs = input.discoverEveryMs ?? DEFAULTS.discoverEveryMs;
  const jitter = input.jitter ?? DEFAULTS.jitter;
  const maxRounds = input.maxRoundsPerRun ?? DEFAULTS.maxRoundsPerRun;
  if (!(discoverEveryMs >= 100))
    throw inputFailure(`discoverEveryMs: ${discoverEveryMs} is too small. Fix: pass at least 100 (ms), e.g. 10000`);
  if (!(jitter >= 0 && jitter <= 0.5)) throw inputFailure(`jitter: ${jitter} is not in [0, 0.5]. Fix: pass e.g. 0.1`);
  let settings: ProtectNodeSettings = input.settings ?? { maxConcurrent: DEFAULTS.maxConcurrent };
  const overrides: Record<string, number> = { ...(input.overrides ?? {}) };
  const carried = { ...(input.carried ?? {}) };
  const incoming = { ...(input.incoming ?? {}) };
  const entries = new Map<string, Entry>();
  let running = 0;
  let wake = false;
  let discoverNow = true;
  let lastDiscovery: ProtectWatchState['lastDiscovery'];
  let runs = 0;

  const jittered = (ms: number) => {
    const delta = Math.min(ms * jitter, MAX_JITTER_MS) * (2 * Math.random() - 1);
    return Math.max(MIN_GAP_MS, ms + delta);
  };
  /** Interval in force and its source: `arch-cli protect` wins over the container's own. */
  const applyInterval = (e: Entry) => {
    const o = overrides[refString(e)];
    if (o === 0) {
      e.source = 'off';
      e.intervalMs = undefined;
    } else if (o !== undefined) {
      e.source = 'protect';
      e.intervalMs = o;
    } else {
      e.source = 'container';
      e.intervalMs = e.envIntervalMs;
    }
  };
  /** Due an interval (jittered) after `fromMs`; overdue ones are spread over a short window, not fired at once. */
  const plan = (e: Entry, fromMs: number) => {
    applyInterval(e);
    if (!e.intervalMs) {
      e.dueMs = undefined;
    } else {
      const now = Date.now();
      e.dueMs = fromMs + jittered(e.intervalMs);
      if (e.dueMs < now) e.dueMs = now + Math.random() * Math.min(e.intervalMs * jitter, MAX_JITTER_MS);
    }
    e.nextAt = e.dueMs !== undefined ? new Date(e.dueMs).toISOString() : undefined;
  };
  const lastStartMs = (e: Entry, c?: ContainerSummary): number => {
    const times = [
      e.last ? Date.parse(e.last.startedAt) : NaN,
      c?.checkpoint ? Date.parse(c.checkpoint.createdAt) : NaN,
    ];
    const known = times.filter((t) => !Number.isNaN(t));
    return known.length ? Math.max(...known) : Date.now();
  };
  const snapshot = (e: Entry): ProtectedContainer => {
    const { envIntervalMs: _env, dueMs: _due, ...shown } = e;
    return shown;
  };
  const state = (): ProtectWatchState => ({
    node,
    maxConcurrent: settings.maxConcurrent,
    running,
    containers: [...entries.values()].map(snapshot),
    lastDiscovery,
    runs,
  });
  const details = () =>
    setCurrentDetails(
      `**protect** — node ${node}, at most ${settings.maxConcurrent} at once\n\n` +
        ([...entries.values()]
          .filter((e) => e.intervalMs)
          .map(
            (e) =>
              `${refString(e)} every ${Math.round(e.intervalMs! / 1000)} s: ${e.taken} taken, ${e.failed} failed${e.last ? `, last ${e.last.startedAt}${e.last.ok ? ` frozen ${e.last.freezeMs ?? '?'} ms` : ` failed: ${e.last.error}`}` : ''}`,
          )
          .join('\n') || 'no protected containers'),
    );

  const entryFor = (c: ContainerSummary): Entry => {
    const k = refString(c);
    let e = entries.get(k);
    if (!e) {
      const was = carried[k];
      e = {
        namespace: c.namespace,
        id: c.id,
        source: 'container',
        running: false,
        taken: was?.taken ?? 0,
        failed: was?.failed ?? 0,
        ...(was?.last ? { last: was.last } : {}),
        envIntervalMs: c.checkpointIntervalMs,
      };
      entries.set(k, e);
      plan(e, lastStartMs(e, c));
      // Planned by the previous run: a new run must not push it back (runs can be shorter than an interval).
      if (was?.nextAt && e.dueMs !== undefined) {
        e.dueMs = Date.parse(was.nextAt);
        e.nextAt = was.nextAt;
      }
    } else if (e.envIntervalMs !== c.checkpointIntervalMs) {
      // Created again with another ARCH_CHECKPOINT_INTERVAL.
      e.envIntervalMs = c.checkpointIntervalMs;
      if (!e.running) plan(e, lastStartMs(e, c));
    }
    return e;
  };

  const list = (namespace?: string) =>
    onNode(node, 'quick', { nodeStartTimeoutMs: 10_000 }).listContainers({
      withSizes: false,
      ...(namespace ? { namespaces: [namespace] } : {}),
    });

  const discover = async () => {
    const at = new Date(Date.now()).toISOString();
    let found: ContainerSummary[];
    try {
      found = await list();
    } catch (err) {
      // The node's worker is away (restarting): keep what is known and try again next time.
      lastDiscovery = { at, ok: false, error: rootMessage(err) };
      return;
    }
    lastDiscovery = { at, ok: true };
    const listed = new Set(found.map(refString));
    // A choice handed over with a container: in force once it is here, dropped if it never comes.
    for (const [k, inc] of Object.entries(incoming))
      if (listed.has(k) || Date.parse(inc.until) <= Date.now()) delete incoming[k];
    for (const c of found) {
      if (c.status.toLowerCase() === 'running') entryFor(c);
      else {
        const e = entries.get(refString(c));
        if (e && !e.running) entries.delete(refString(c)); // stopped (paused, exited): nothing to protect now
      }
    }
    for (const [k, e] of entries) if (!listed.has(k) && !e.running) entries.delete(k);
    // A container gone from the node takes its `protect` choice with it; a paused one keeps it.
    for (const k of Object.keys(overrides)) if (!listed.has(k) && !incoming[k]) delete overrides[k];
    for (const k of Object.keys(carried)) if (!listed.has(k)) delete carried[k];
    details();
  };

  const checkpoint = async (e: Entry) => {
    e.running = true;
    running++;
    const startMs = Date.now();
    let last: PeriodicCheckpoint;
    try {
      const r = await onNode(node, 'periodic').checkpointContainer({
        ref: { namespace: e.namespace, id: e.id },
        leaveRunning: true,
      });
      last = {
        startedAt: new Date(startMs).toISOString(),
        ms: Date.now() - startMs,
        ok: true,
        sizeBytes: r.sizeBytes,
        ...(r.freezeMs !== undefined ? { freezeMs: r.freezeMs } : {}),
      };
      e.taken++;
    } catch (err) {
      last = {
        startedAt: new Date(startMs).toISOString(),
        ms: Date.now() - startMs,
        ok: false,
        error: rootMessage(err),
      };
      e.failed++;
      const type = failureTypeOf(err);
      if (type === FailureType.containerNotFound || type === FailureType.containerNotRunning) discoverNow = true;
    }
    e.last = last;
    carried[refString(e)] = { last, taken: e.taken, failed: e.failed };
    e.running = false;
    running--;
    const endMs = Date.now();
    plan(e, startMs);
    if (e.dueMs !== undefined && e.intervalMs) {
      // Overran its interval: a full one after it ended, so the job is not frozen back to back.
      if (e.dueMs < endMs) {
        e.dueMs = endMs + jittered(e.intervalMs);
        e.nextAt = new Date(e.dueMs).toISOString();
      }
    }
    wake = true;
    details();
  };

  setHandler(protectStateQuery, state);
  setHandler(protectHandOverSignal, async (h) => {
    const k = refString(h);
    const o = overrides[k];
    if (o === undefined || !isValidNodeName(h.to) || h.to === node) return; // nothing chosen: the target's own rules apply
    try {
      await getExternalWorkflowHandle(workflowIds.protect(h.to)).signal(protectCarrySignal, {
        namespace: h.namespace,
        id: h.id,
        from: node,
        intervalMs: o,
      });
    } catch {
      // The target node has no protect workflow (its worker never started): nothing there to keep the choice.
    }
  });
  setHandler(protectCarrySignal, (c) => {
    if (!(c?.intervalMs === 0 || (Number.isInteger(c?.intervalMs) && c.intervalMs >= MIN_CHECKPOINT_INTERVAL_MS)))
      return;
    const k = refString(c);
    overrides[k] = c.intervalMs;
    incoming[k] = { intervalMs: c.intervalMs, from: c.from, until: new Date(Date.now() + INCOMING_MS).toISOString() };
    const e = entries.get(k);
    if (e && !e.running) plan(e, lastStartMs(e));
    discoverNow = true;
  });
  setHandler(protectSettingsSignal, (s) => {
    if (Number.isInteger(s?.maxConcurrent) && s.maxConcurrent >= 1) settings = { maxConcurrent: s.maxConcurrent };
    wake = true;
  });
  setHandler(
    protectUpdate,
    async (req) => {
      const ref = checkRef(req);
      const k = refString(ref);
      // Asked now rather than from the last listing: a container created a moment ago is found, a typo is refused.
      const c = (await list(ref.namespace)).find((x) => x.id === ref.id);
      if (!c)
        throw ApplicationFailure.create({
          type: FailureType.containerNotFound,
          message: `${k} is not an ARCH container on node ${node}. Fix: check the name and node with \`arch-cli ls --node ${node}\``,
          nonRetryable: true,
        });
      if (req.intervalMs === null) delete overrides[k];
      else overrides[k] = req.intervalMs;
      if (c.status.toLowerCase() !== 'running') {
        return {
          namespace: ref.namespace,
          id: ref.id,
          source: req.intervalMs === 0 ? 'off' : 'protect',
          running: false,
          taken: 0,
          failed: 0,
          ...(req.intervalMs ? { intervalMs: req.intervalMs } : {}),
        };
      }
      const e = entryFor(c);
      if (!e.running) plan(e, lastStartMs(e, c));
      else applyInterval(e); // planned when the running one ends
      wake = true;
      details();
      return snapshot(e);
    },
    {
      validator: (req) => {
        checkRef(req);
        const v = req.intervalMs;
        if (v !== null && v !== 0 && !(Number.isInteger(v) && v >= MIN_CHECKPOINT_INTERVAL_MS))
          throw inputFailure(
            `intervalMs: ${String(v)} is not an interval. Fix: pass at least ${MIN_CHECKPOINT_INTERVAL_MS} (ms), 0 for off, or null for the container's own`,
          );
      },
    },
  );

  track({ sourceNode: node, targetNode: node, operation: 'protect', phase: 'watching' });
  let nextDiscoverMs = 0;
  for (;;) {
    if (discoverNow || Date.now() >= nextDiscoverMs) {
      discoverNow = false;
      await discover();
      nextDiscoverMs = Date.now() + discoverEveryMs;
    }
    const now = Date.now();
    const due = [...entries.values()]
      .filter((e) => !e.running && e.dueMs !== undefined && e.dueMs <= now)
      .sort((a, b) => a.dueMs! - b.dueMs!);
    for (const e of due) {
      if (running >= settings.maxConcurrent) break;
      void checkpoint(e);
    }
    if (runs >= maxRounds || workflowInfo().continueAsNewSuggested) break;
    let nextMs = nextDiscoverMs;
    if (running < settings.maxConcurrent)
      for (const e of entries.values()) if (!e.running && e.dueMs !== undefined) nextMs = Math.min(nextMs, e.dueMs);
    wake = false;
    await condition(() => wake || discoverNow, Math.max(1, nextMs - Date.now()));
    runs++;
  }
  // Checkpoints in flight and updates being handled finish in this run: their results travel in `carried`.
  await condition(() => running === 0 && allHandlersFinished());
  for (const e of entries.values())
    carried[refString(e)] = { ...(e.last ? { last: e.last } : {}), taken: e.taken, failed: e.failed, nextAt: e.nextAt };
  await continueAsNew<typeof nodeProtect>({ ...input, settings, overrides, carried, incoming });
}
