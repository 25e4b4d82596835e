import { setTimeout as sleep } from 'node:timers/promises';
import type { WorkflowHandle } from '@temporalio/client';
import { workflowIds } from '../../contract/names.js';
import type { MigrateInput, MigrateResult, ProtectWatchState } from '../../contract/types.js';
import { FailureType } from '../../contract/failures.js';
import { fail, StubCluster, type Stubs } from '../support/workflow-env.js';
import { happyMove, spec, summary, withStubs } from '../support/workflow-fixtures.js';

/**
 * An `arch-cli protect` choice goes with its container when it moves: the
 * migrate workflow tells the source node's protect workflow, which hands the
 * choice to the target node's, which applies it once the container shows up
 * there. Stub activities; both nodes' protect workflows and the migration
 * run on the dev server.
 */
let wf: StubCluster;
const FROM = 'from';
const TO = 'to';

beforeAll(async () => {
  wf = await StubCluster.start([FROM, TO]);
});

afterAll(async () => {
  await wf?.stop();
});

async function until<T>(what: string, f: () => T | undefined | Promise<T | undefined>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// temporal.api.enums.v1.EventType
const SIGNAL_EXTERNAL_INITIATED = 37;
const ACTIVITY_FAILED = 13;

const state = (h: WorkflowHandle) => h.query<ProtectWatchState>('protectState');

/**
 * Both nodes' protect workflows on the stub cluster (the source's as its
 * worker starts it, with `stubs` for every workflow), `during` run against
 * them; both are terminated afterwards, whatever happens.
 */
async function withProtects(stubs: Stubs, during: (src: WorkflowHandle, dst: WorkflowHandle) => Promise<void>) {
  const protects: WorkflowHandle[] = [];
  try {
    const r = await wf.run('nodeProtect', { node: FROM, discoverEveryMs: 300, jitter: 0 }, stubs, {
      workflowId: workflowIds.protect(FROM),
      during: async (src) => {
        protects.push(src);
        const dst = await wf.client.workflow.start('nodeProtect', {
          taskQueue: wf.taskQueue,
          workflowId: workflowIds.protect(TO),
          args: [{ node: TO, discoverEveryMs: 300, jitter: 0 }],
        });
        protects.push(dst);
        await during(src, dst);
        await src.terminate('test over');
      },
    });
    expect(r.ok).toBe(false); // terminated
  } finally {
    for (const h of protects) await h.terminate('test over').catch(() => undefined);
  }
}

test('migrate: a protect choice on the source node is in force on the target node once the container runs there', async () => {
  const s = spec('job');
  const where = { node: FROM };
  // Each node lists the container while it runs there; the move's clean-up takes it off the source.
  const listing = (node: string) => () => (where.node === node ? [summary('job')] : []);
  const move = happyMove(s, FROM, TO);
  const stubs: Stubs = withStubs(move, {
    [FROM]: {
      listContainers: listing(FROM),
      cleanupSource: () => {
        where.node = TO;
        return { removed: true };
      },
    },
    [TO]: { listContainers: listing(TO) },
  });
  const input: MigrateInput = {
    namespace: 'default',
    id: 'job',
    from: FROM,
    to: TO,
    nodeStartTimeoutMs: 2_000,
    restoreAttempts: 1,
  };
  await withProtects(stubs, async (src, dst) => {
    await until('job listed on the source', async () => (await state(src)).containers.some((c) => c.id === 'job'));
    await src.executeUpdate('protect', { args: [{ namespace: 'default', id: 'job', intervalMs: 600_000 }] });
    expect((await state(dst)).containers).toEqual([]);

    const migrated = await wf.client.workflow.execute('migrateContainer', {
      taskQueue: wf.taskQueue,
      workflowId: `migrate-carry-${Date.now()}`,
      args: [input],
    });
    expect((migrated as MigrateResult).outcome).toBe('migrated');
    const onTarget = await until('job protected on the target', async () =>
      (await state(dst)).containers.find((c) => c.id === 'job' && c.source === 'protect'),
    );
    expect(onTarget).toMatchObject({ intervalMs: 600_000, source: 'protect' });
    // Gone from the source, with its choice.
    await until('job gone from the source', async () =>
      (await state(src)).containers.some((c) => c.id === 'job') ? undefined : true,
    );
  });
}, 60_000);

test('migrate whose restore fails: the choice handed over as the restore started stays in force on the source, and the target never applies it', async () => {
  const s = spec('stay');
  // The container never leaves the source: the target's restore fails, the compensation restores it there.
  const listing = (node: string) => () => (node === FROM ? [summary('stay')] : []);
  const stubs: Stubs = withStubs(happyMove(s, FROM, TO), {
    [FROM]: { listContainers: listing(FROM) },
    [TO]: { listContainers: listing(TO), restoreContainer: () => fail(FailureType.restoreFellBack, 'started fresh') },
  });
  await withProtects(stubs, async (src, dst) => {
    await until('stay listed on the source', async () => (await state(src)).containers.some((c) => c.id === 'stay'));
    await src.executeUpdate('protect', { args: [{ namespace: 'default', id: 'stay', intervalMs: 600_000 }] });
    const migrate = await wf.client.workflow.start('migrateContainer', {
      taskQueue: wf.taskQueue,
      workflowId: `migrate-carry-fails-${Date.now()}`,
      args: [{ namespace: 'default', id: 'stay', from: FROM, to: TO, nodeStartTimeoutMs: 2_000, restoreAttempts: 1 }],
    });
    await expect(migrate.result()).rejects.toThrow();
    // The hand-over went out with the restore (before it failed), as it does in every new run.
    const events = (await migrate.fetchHistory()).events ?? [];
    const signalled = events.findIndex((e) => e.eventType === SIGNAL_EXTERNAL_INITIATED);
    const restoreFailed = events.findIndex((e) => e.eventType === ACTIVITY_FAILED);
    expect(signalled).toBeGreaterThan(0);
    expect(signalled).toBeLessThan(restoreFailed);
    // Several discovery rounds on both nodes after the failed move.
    await sleep(1_500);
    expect((await state(src)).containers.find((c) => c.id === 'stay')).toMatchObject({
      intervalMs: 600_000,
      source: 'protect',
    });
    expect((await state(dst)).containers).toEqual([]);
  });
}, 60_000);

test('a container that moves without a protect choice keeps its own interval on the target; a choice for a container not there is not applied to others', async () => {
  const where = { node: FROM };
  const listing = (node: string) => () =>
    where.node === node ? [summary('plain', { checkpointIntervalMs: 3_600_000 })] : [];
  const stubs: Stubs = { [FROM]: { listContainers: listing(FROM) }, [TO]: { listContainers: listing(TO) } };
  await withProtects(stubs, async (src, dst) => {
    await until('plain listed on the source', async () => (await state(src)).containers.some((c) => c.id === 'plain'));
    await src.signal('protectHandOver', { namespace: 'default', id: 'plain', to: TO });
    where.node = TO;
    const onTarget = await until('plain on the target', async () =>
      (await state(dst)).containers.find((c) => c.id === 'plain'),
    );
    expect(onTarget).toMatchObject({ intervalMs: 3_600_000, source: 'container' });
    // A choice handed over for a container that is not here (yet) is kept, not applied to others, and not shown.
    await dst.signal('protectCarry', { namespace: 'default', id: 'elsewhere', from: FROM, intervalMs: 0 });
    await sleep(1_000);
    expect((await state(dst)).containers.map((c) => c.id)).toEqual(['plain']);
  });
}, 60_000);
