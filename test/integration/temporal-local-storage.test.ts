import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { MigrateResult } from '../../contract/types.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { runCli, runningOn, startCluster, stopAllTemporal, waitUntil, type TestCluster } from '../support/temporal.js';
import { makeTestPki } from '../support/tls.js';

/**
 * Node-local storage for real, over TLS: node B has a disk of its own mounted at the
 * checkpoint root (in its own mount namespace, shared by its containerd,
 * shims, arch-runc and worker), so a checkpoint taken on A is not there
 * until the transfer copies it: streamed from A's transfer server, verified,
 * published on B's disk, restored from there; A's copy is removed after.
 * B's containers' files are not visible from the host: their output is.
 */
let cluster: TestCluster;
const A = 'ls-a';
const B = 'ls-b';

let pkiDir: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  // Both nodes serve and fetch over TLS (one CA), as across real hosts.
  pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-pki-'));
  const pki = await makeTestPki(pkiDir);
  const tls = { ARCH_TRANSFER_TLS_CERT: pki.cert, ARCH_TRANSFER_TLS_KEY: pki.key, ARCH_TRANSFER_TLS_CA: pki.ca };
  cluster = await startCluster('local-storage', [A, B], {
    ownCheckpointDisk: [B],
    imageOn: [A],
    nodeSettings: { [A]: tls, [B]: tls },
  });
});

afterAll(async () => {
  await cluster?.stop();
  await stopAllTemporal();
  if (pkiDir) fs.rmSync(pkiDir, { recursive: true, force: true });
});

/** The counts a counter printed to an output file. */
function countsIn(file: string): number[] {
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  return [...text.matchAll(/^count (\d+)$/gm)].map((m) => Number(m[1]));
}

test('migrate with node-local storage, over TLS: the image and the checkpoint are copied to the target, which restores from its own disk; the counter continues there', async () => {
  const id = 'local1';
  const checkpointRoot = path.join(cluster.dir, 'checkpoints');
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
  expect(res.phases.some((p) => p.phase === 'transfer')).toBe(true);
  // The workers served over https; B had no image, so it came the same way.
  expect(res.phases.some((p) => p.phase === 'image-import')).toBe(true);
  for (const n of [A, B]) expect(cluster.workers[n]!.transferUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  expect(await runningOn(cluster, id)).toEqual([B]);

  // Published on B's own disk, verified there; A's copy went once B ran it.
  expect(fs.existsSync(path.join(bDisk, 'default', id, 'current'))).toBe(true);
  expect(fs.existsSync(path.join(checkpointRoot, 'default', id, 'current'))).toBe(false);

  // The restored counter writes to B's log: it goes on above its count on A, never from 1.
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
