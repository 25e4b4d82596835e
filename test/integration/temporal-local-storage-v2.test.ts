import fs from 'node:fs';
import path from 'node:path';
import type { MigrateResult } from '../../contract/types.js';
import { CHUNKS_DIR } from '../../core/chunk-dir.js';
import { parseManifest } from '../../core/manifest.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { runCli, runningOn, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';

/**
 * Node-local storage with store format 2 (ARCH_STORE_FORMAT=2 on both
 * nodes), set up as temporal-local-storage.test.ts: node B has a checkpoint
 * disk of its own, so the chunks of A's checkpoint are not there until the
 * transfer brings them; the counter must go on from its checkpointed count on B.
 */
let cluster: TestCluster;
const A = 'l2-a';
const B = 'l2-b';

beforeAll(async () => {
  await cleanupStaleNodes();
  const v2 = { ARCH_STORE_FORMAT: '2' };
  cluster = await startCluster('local-storage-v2', [A, B], {
    ownCheckpointDisk: [B],
    imageOn: [A],
    nodeSettings: { [A]: v2, [B]: v2 },
  });
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
});

function countsIn(file: string): number[] {
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  return [...text.matchAll(/^count (\d+)$/gm)].map((m) => Number(m[1]));
}

test('migrate of a format-2 checkpoint with node-local storage: its chunks are copied to B, which restores from its own disk; the counter continues there', async () => {
  const id = 'local-v2';
  const bDisk = path.join(cluster.dir, `checkpoints-${B}`);
  await cluster.runCounter(A, id);
  const before = await cluster.waitCount(A, id, 4);

  const r = await runCli(cluster, ['--json', 'migrate', `default/${id}`, '--from', A, '--to', B, '--wait']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const res = r.json as MigrateResult;
  expect(res).toMatchObject({
    outcome: 'migrated',
    runningOn: B,
    checkpoint: { mode: 'local', transferred: 'copied' },
  });
  expect(await runningOn(cluster, id)).toEqual([B]);

  // A format-2 checkpoint on B's own disk, every chunk its manifest names in B's chunks dir.
  const containerDir = path.join(bDisk, 'default', id);
  const manifest = parseManifest(fs.readFileSync(path.join(containerDir, 'current', 'manifest.json'), 'utf8'));
  expect(manifest.chunked?.files.some((f) => f.path.startsWith('criu/pages-'))).toBe(true);
  for (const f of manifest.chunked!.files)
    for (const c of f.chunks)
      expect(fs.existsSync(path.join(containerDir, CHUNKS_DIR, c.id.slice(0, 2), c.id))).toBe(true);

  // A's copy, chunks included, went once B ran it.
  const aDir = path.join(cluster.dir, 'checkpoints', 'default', id);
  expect(fs.existsSync(path.join(aDir, 'current'))).toBe(false);
  expect(fs.existsSync(path.join(aDir, CHUNKS_DIR))).toBe(false);

  // Restored, not started fresh: the counter goes on above its count on A, never from 1.
  const out = path.join(cluster.dir, `logs-${B}`, 'default', `${id}.log`);
  const counts = await waitUntil(
    'counts on B above the checkpointed one',
    () => {
      const c = countsIn(out);
      return c.some((n) => n > before + 2) ? c : undefined;
    },
    30_000,
  );
  expect(counts[0]).toBeGreaterThan(1);
  expect(counts).not.toContain(1);
});
