import { formatLs } from '../../cli/commands/ls.js';
import { nodesText } from '../../cli/commands/nodes.js';
import type { ContainerSummary } from '../../contract/types.js';
import type { ClusterView } from '../../contract/liveness.js';

/**
 * A job whose last checkpoint failed is not protected: `arch-cli ls` and
 * `arch-cli nodes` say so, next to the age of the checkpoint that stays
 * current, until a checkpoint succeeds again (core/checkpoint.ts records it).
 */
const now = Date.parse('2026-12-07T12:00:00Z');
const base: ContainerSummary = {
  namespace: 'default',
  id: 'job',
  status: 'running',
  pid: 42,
  mode: 'local',
  manager: 'containerd',
  priority: 0,
  rssBytes: 1 << 20,
  checkpoint: {
    dir: '/var/lib/arch/checkpoints/default/job/c1',
    createdAt: '2026-12-07T11:50:00Z',
    sizeBytes: 1 << 20,
  },
};

test('ls: FAILED in the checkpoint column, and the cause below the table with the checkpoint that stays current', () => {
  const text = formatLs(
    'vm',
    [{ ...base, lastCheckpointFailure: { message: 'criu failed: X', at: '2026-12-07T11:59:30Z', field: 'ARCH_X' } }],
    now,
  );
  expect(text).toMatch(/default\/job +running .* FAILED 30 s ago /);
  expect(text).not.toContain('10 min ago');
  expect(text).toContain(
    'default/job: checkpoint failed at 2026-12-07T11:59:30Z, the one of 2026-12-07T11:50:00Z stays current: criu failed: X',
  );
});

test('ls: a job that never had a checkpoint says so; one without a failure shows its checkpoint age only', () => {
  const never = formatLs(
    'vm',
    [{ ...base, checkpoint: undefined, lastCheckpointFailure: { message: 'no room', at: '2026-12-07T11:59:00Z' } }],
    now,
  );
  expect(never).toContain('default/job: checkpoint failed at 2026-12-07T11:59:00Z, it has no checkpoint: no room');
  const fine = formatLs('vm', [base], now);
  expect(fine).toMatch(/default\/job +running .* 10 min ago /);
  expect(fine).not.toContain('FAILED');
  expect(fine.split('\n')).toHaveLength(2); // header and row: nothing below
});

test('nodes: the failed attempt beside the age of the last checkpoint, and where to read why', () => {
  const view: ClusterView = {
    at: '2026-12-07T12:00:00Z',
    nodes: [
      {
        node: 'node-a',
        firstSeen: '2026-12-07T10:00:00Z',
        lastSeen: '2026-12-07T11:59:58Z',
        status: 'alive',
        events: [],
        report: {
          node: 'node-a',
          at: '2026-12-07T11:59:58Z',
          deadAfterMs: 30_000,
          fenceAfterMs: 20_000,
          freeMemBytes: 1 << 30,
          containers: [
            {
              namespace: 'default',
              id: 'job',
              status: 'running',
              mode: 'local',
              manager: 'containerd',
              checkpointDir: '/var/lib/arch/checkpoints/default/job',
              lastCheckpointAt: '2026-12-07T11:50:00Z',
              lastCheckpointFailedAt: '2026-12-07T11:59:00Z',
            },
          ],
        },
      },
    ],
  };
  expect(nodesText(view, now)).toContain(
    'default/job  running  local  last checkpoint 10 min ago, the last attempt FAILED 60 s ago (arch-cli ls --node node-a says why)',
  );
});

test('ls: a cause that quotes what a container set reaches the terminal without its control characters', () => {
  const text = formatLs(
    'vm',
    [{ ...base, lastCheckpointFailure: { message: 'ARCH_X: "\u001b[2Jx" is not valid', at: '2026-12-07T11:59:30Z' } }],
    now,
  );
  expect(text).not.toContain('\u001b');
  expect(text).toContain('ARCH_X: "\\x1b[2Jx" is not valid');
});
