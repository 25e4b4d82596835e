import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { CheckpointStore } from '../../core/store.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { COUNTER_FILES } from '../support/images.js';

/**
 * The node runtime end to end on real runc, CRIU and containerd: a counter
 * container runs through arch-runc, is checkpointed, deleted and created
 * again, and must continue where it was — memory and files.
 */
let a: ArchTestNode;
let b: ArchTestNode;
let storage: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-storage-');
  a = await startArchNode('shim-a');
  b = await startArchNode('shim-b');
});

afterAll(async () => {
  await stopAllNodes();
  fs.rmSync(storage, { recursive: true, force: true });
});

async function checkpointAndRemove(node: ArchTestNode, id: string): Promise<number> {
  const res = await checkpointContainer(node.ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') });
  expect(fs.existsSync(path.join(res.dir, 'manifest.json'))).toBe(true);
  await node.containerd.waitStatus(id, 'STOPPED', 15_000);
  // The counter is dead now: its last written count is what memory held at the dump (±1 tick).
  const atCheckpoint = node.count(id);
  await node.containerd.removeContainer(id);
  return atCheckpoint;
}

function startsOf(node: ArchTestNode, id: string): number {
  return node.readContainerFile(id, COUNTER_FILES.starts).trim().split('\n').length;
}

test('local mode: checkpoint, delete, create again → counter continues, files kept, deletions kept', async () => {
  const id = 'local-1';
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/local`, 'COUNTER_START_FILES=1'];
  const out1 = await a.runCounter(id, env);
  await a.waitCount(id, 15);
  expect(a.readContainerFile(id, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  const atCheckpoint = await checkpointAndRemove(a, id);
  expect(new CheckpointStore(path.join(storage, 'local/default', id)).current()).resolves.toBeTruthy();

  // COUNTER_START_FILES is not set this time: a fresh start would not create the files.
  const out2 = await a.runCounter(id, env.filter((e) => !e.startsWith('COUNTER_START_FILES')));
  await a.containerd.waitStatus(id, 'RUNNING', 15_000);
  const after = await a.waitCount(id, atCheckpoint + 5);
  expect(after).toBeGreaterThan(atCheckpoint);
  // Restored, not started fresh: the counter logs one line per fresh start.
  expect(startsOf(a, id)).toBe(1);
  expect(a.readContainerFile(id, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  expect(a.readContainerFile(id, COUNTER_FILES.nested)).toBe(COUNTER_FILES.nestedContent);
  expect(a.readContainerFile(id, COUNTER_FILES.modified)).toBe(COUNTER_FILES.modifiedContent);
  expect(() => a.readContainerFile(id, COUNTER_FILES.deleted)).toThrow();
  // Output of the restored process still reaches containerd's log.
  await waitFor('restored output', () => (fs.readFileSync(out2, 'utf8').includes(`count ${atCheckpoint + 3}`) ? true : undefined));
  // The restored process never counted from 1 again.
  const firstAfter = Number(/count (\d+)/.exec(fs.readFileSync(out2, 'utf8'))?.[1]);
  expect(firstAfter).toBeGreaterThanOrEqual(atCheckpoint);
  expect(fs.readFileSync(out1, 'utf8')).toContain('count 1\n');
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
  await a.containerd.removeContainer(id);
});
