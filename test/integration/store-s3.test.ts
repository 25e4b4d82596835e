import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { CHUNKS_DIR } from '../../core/chunk-dir.js';
import { RECORD_SUFFIX } from '../../core/host-dirs.js';
import { CHUNKED_FORMAT_VERSION } from '../../core/manifest.js';
import { createNodeContext } from '../../core/context.js';
import { PAGE_IMAGE_PATH } from '../../core/checkpoint-layout.js';
import { closeS3Clients, collectS3, S3CheckpointStore } from '../../core/s3-store.js';
import { writeArchConfig } from '../support/arch-env.js';
import { startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import * as copies from '../support/checkpoint-copies.js';
import { COUNTER_FILES } from '../support/images.js';
import { objectsIn, startS3Server, type S3TestServer } from '../support/s3-server.js';

/**
 * Issue 12, object storage: a container names ARCH_CHECKPOINT_URL=s3://…,
 * the node allows the bucket and holds the credentials, and its checkpoints
 * go to a real S3 server (versitygw on loopback, serving a directory that
 * the test reads to count and damage objects). Restore reads the bucket,
 * not the node's disk (the node's cache is emptied first); a chunk already
 * in the bucket is not uploaded again; a store that fails, refuses the
 * credentials or lacks the bucket leaves the container running and its
 * previous checkpoint current, or (on restore) starts it fresh with a reason.
 */

let node: ArchTestNode;
let s3: S3TestServer;
let work: string;
let cache: string;
const BUCKET = 'arch-ckpts';
const PREFIX = 'team-a';
const MEM_MB = 64;

/** The container's objects, as versitygw's POSIX backend keeps them. */
const objectsDir = (key: string) => path.join(s3.root, BUCKET, PREFIX, 'default', key);
const chunkBytes = (key: string) => objectsIn(path.join(objectsDir(key), CHUNKS_DIR)).reduce((a, o) => a + o.bytes, 0);
const currentName = (key: string) => fs.readFileSync(path.join(objectsDir(key), 'current'), 'utf8').trim();

function settings(extra: Record<string, string | undefined> = {}): void {
  writeArchConfig(path.dirname(node.archConfig), {
    ARCH_NODE_NAME: 's3n',
    ARCH_RUNC_ROOT: node.runcRootBase,
    ARCH_S3_CACHE_PATH: cache,
    ARCH_ALLOWED_BUCKETS: `${BUCKET}/${PREFIX},nobucket-here`,
    ...s3.settings(),
    ...extra,
  });
}

beforeAll(async () => {
  await cleanupStaleNodes();
  work = fs.mkdtempSync('/tmp/arch-s3t-');
  cache = path.join(work, 'cache');
  s3 = await startS3Server();
  await s3.createBucket(BUCKET);
  node = await startArchNode('s3n', {
    ARCH_S3_CACHE_PATH: cache,
    ARCH_ALLOWED_BUCKETS: `${BUCKET}/${PREFIX},nobucket-here`,
    ...s3.settings(),
  });
});

afterAll(async () => {
  await stopAllNodes();
  closeS3Clients();
  await s3?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

// Each test starts with the server up and the node's settings as beforeAll wrote them.
beforeEach(async () => {
  await s3.start();
  settings();
});

const startS3IfStopped = () => s3.start();

async function run(id: string, key: string, env: string[] = [], url = `s3://${BUCKET}/${PREFIX}`): Promise<string> {
  return node.runCounter(id, [
    'ARCH_ENABLE=1',
    `ARCH_CHECKPOINT_URL=${url}`,
    `ARCH_CHECKPOINT_ID=${key}`,
    'COUNTER_INTERVAL_MS=50',
    `COUNTER_MEM_MB=${MEM_MB}`,
    'COUNTER_VERIFY_EVERY=3',
    ...env,
  ]);
}

async function remove(id: string): Promise<void> {
  await node.containerd.removeContainer(id).catch(() => undefined);
}

function checkpoint(id: string, leaveRunning = false) {
  const ctx = createNodeContext('test', { ...process.env, ARCH_CONFIG: node.archConfig });
  return checkpointContainer(ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default'), leaveRunning });
}

const expectRestored = async (id: string, out: string): Promise<void> => {
  await copies.expectRestored(node, id, out);
  await waitFor('memcheck', () => (/memcheck ok/.test(fs.readFileSync(out, 'utf8')) ? true : undefined), 15_000);
  expect(fs.readFileSync(out, 'utf8')).not.toContain('memcheck FAIL');
};

async function expectFreshWith(id: string, out: string, reason: string): Promise<Record<string, unknown>> {
  await node.containerd.waitStatus(id, 'RUNNING', 15_000);
  await node.waitCount(id, 2);
  // A bad page-image chunk is found while runc restores (the page images are
  // assembled behind CRIU's gate, core/seal-gate.ts), so runc reports CRIU's
  // abort on the container's stderr before the fresh start (as
  // shim-seal.test.ts allows). No line of a restored process may come first.
  const runcSaid = /^(?:criu failed: .*\n|log file: .*\n)*/;
  expect(fs.readFileSync(out, 'utf8').replace(runcSaid, '')).toMatch(/^counter start pid=1 mem_mb=\d+\ncount 1\n/);
  await waitFor(`error logged for ${id}`, () => (copies.errorsOf(node, id).length ? true : undefined), 15_000);
  const e = copies.errorsOf(node, id)[0]!;
  expect(e).toMatchObject({ phase: 'create', reason });
  return e;
}

/** Still running and counting on (a failed checkpoint left it as it was). */
async function expectStillRunning(id: string): Promise<void> {
  expect((await node.containerd.task(id))?.status).toBe('RUNNING');
  const n = await node.waitCount(id, 1);
  await node.waitCount(id, n + 2);
}

/** A job checkpointed once (stopped) into the bucket, its container removed and the node's cache emptied. */
async function checkpointedJob(id: string, key: string): Promise<void> {
  await run(id, key, ['COUNTER_START_FILES=1']);
  await node.waitCount(id, 3);
  await checkpoint(id);
  await node.containerd.waitStatus(id, 'STOPPED', 15_000);
  await remove(id);
  fs.rmSync(cache, { recursive: true, force: true });
}

test('finalize → delete → create again restores from the bucket (not from the node), counting on', async () => {
  const id = 's3-basic';
  try {
    const out = await run(id, 'basic', ['COUNTER_START_FILES=1']);
    await node.waitCount(id, 3);
    const res = await checkpoint(id);
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    expect(res.manifest.formatVersion).toBe(CHUNKED_FORMAT_VERSION);
    expect(res.manifest.mode).toBe('s3');
    // Published in the bucket: `current` names it, its manifest, signature and chunks are objects.
    const name = currentName('basic');
    expect(path.basename(res.dir)).toBe(name);
    const objs = objectsIn(objectsDir('basic')).map((o) => o.rel);
    expect(objs).toEqual(expect.arrayContaining([`${name}/manifest.json`, 'lease.json', 'current']));
    expect(objs.filter((r) => r.startsWith(`${CHUNKS_DIR}/`)).length).toBeGreaterThan(MEM_MB / 2);
    // The page images are chunks only.
    expect(objs.some((r) => PAGE_IMAGE_PATH.test(r.slice(name.length + 1)))).toBe(false);
    await remove(id);
    // Nothing left on this node: the restore must read the bucket.
    fs.rmSync(cache, { recursive: true, force: true });
    const again = await run(id, 'basic');
    await expectRestored(id, again);
    expect(node.readContainerFile(id, COUNTER_FILES.modified)).toBe(COUNTER_FILES.modifiedContent);
    void out;
  } finally {
    await remove(id);
  }
});

test('incremental: the second checkpoint of a job that changed little uploads a small fraction of the first', async () => {
  const id = 's3-inc';
  try {
    await run(id, 'inc');
    await node.waitCount(id, 3);
    await checkpoint(id, true);
    const first = chunkBytes('inc');
    const firstObjects = objectsIn(path.join(objectsDir('inc'), CHUNKS_DIR)).length;
    expect(first).toBeGreaterThan((MEM_MB << 20) / 2);
    await node.waitCount(id, (await node.waitCount(id, 1)) + 3);
    const second = await checkpoint(id, true);
    const added = chunkBytes('inc') - first;
    expect(added).toBeGreaterThanOrEqual(0);
    expect(added).toBeLessThan(first * 0.15);
    expect(objectsIn(path.join(objectsDir('inc'), CHUNKS_DIR)).length - firstObjects).toBeLessThan(firstObjects * 0.15);
    expect(currentName('inc')).toBe(path.basename(second.dir));
    await expectStillRunning(id);
  } finally {
    await remove(id);
  }
});

test('server stopped in the middle of a checkpoint: it fails naming the setting, the container keeps running, the previous checkpoint stays current', async () => {
  const id = 's3-mid';
  const keyFile = path.join(work, 'store.key');
  fs.writeFileSync(keyFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  try {
    await run(id, 'mid');
    await node.waitCount(id, 3);
    await checkpoint(id, true);
    const before = currentName('mid');
    const chunksBefore = new Set(objectsIn(path.join(objectsDir('mid'), CHUNKS_DIR)).map((o) => o.rel));
    // With a store key every chunk id changes: the next checkpoint uploads all of its chunks, and the server stops after the first.
    settings({ ARCH_STORE_KEY_FILE: keyFile });
    const ck = checkpoint(id);
    ck.catch(() => undefined);
    // Polled tightly (the upload of 64 MiB over loopback takes about a second).
    const deadline = Date.now() + 60_000;
    while (!objectsIn(path.join(objectsDir('mid'), CHUNKS_DIR)).some((o) => !chunksBefore.has(o.rel))) {
      if (Date.now() > deadline) throw new Error('no new chunk in the bucket within 60 s');
      await sleep(2);
    }
    await s3.stop();
    await expect(ck).rejects.toThrow(/AWS_ENDPOINT_URL_S3/);
    // Stopped before the chunks were all up (else this test would prove nothing).
    const added = objectsIn(path.join(objectsDir('mid'), CHUNKS_DIR)).filter((o) => !chunksBefore.has(o.rel));
    expect(added.length).toBeLessThan(chunksBefore.size * 0.9);
    await expectStillRunning(id);
    await s3.start();
    expect(currentName('mid')).toBe(before);
  } finally {
    await startS3IfStopped();
    await remove(id);
  }
});

test('server stopped before the restore: fresh start, reason store, naming the setting', async () => {
  const id = 's3-down';
  try {
    await checkpointedJob(id, 'down');
    await s3.stop();
    const e = await expectFreshWith(id, await run(id, 'down'), 'store');
    expect(String(e.err)).toContain('AWS_ENDPOINT_URL_S3');
  } finally {
    await startS3IfStopped();
    await remove(id);
  }
});

test('a corrupted chunk in the bucket: fresh start, reason corrupt', async () => {
  const id = 's3-corrupt';
  try {
    await checkpointedJob(id, 'corrupt');
    const dir = objectsDir('corrupt');
    const m = JSON.parse(fs.readFileSync(path.join(dir, currentName('corrupt'), 'manifest.json'), 'utf8')) as {
      chunked: { files: { path: string; chunks: { id: string }[] }[] };
    };
    const f = m.chunked.files.find((x) => PAGE_IMAGE_PATH.test(x.path) && x.chunks.length > 4)!;
    const chunk = path.join(dir, CHUNKS_DIR, f.chunks[2]!.id.slice(0, 2), f.chunks[2]!.id);
    const b = fs.readFileSync(chunk);
    b[b.length >> 1] ^= 0xff;
    fs.writeFileSync(chunk, b);
    const e = await expectFreshWith(id, await run(id, 'corrupt'), 'corrupt');
    // Caught by the SDK's checksum of the object (the server's, from the upload) before the chunk's own id check.
    expect(String(e.err)).toContain(f.chunks[2]!.id);
  } finally {
    await remove(id);
  }
});

test('wrong credentials: the checkpoint fails naming AWS_ACCESS_KEY_ID and the fix; the container keeps running', async () => {
  const id = 's3-creds';
  try {
    await run(id, 'creds');
    await node.waitCount(id, 3);
    settings({ AWS_SECRET_ACCESS_KEY: 'not-the-secret' });
    const err = await checkpoint(id).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(
      /AWS_ACCESS_KEY_ID: .*refused the credentials.*Fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/,
    );
    await expectStillRunning(id);
    expect(fs.existsSync(path.join(objectsDir('creds'), 'current'))).toBe(false);
  } finally {
    await remove(id);
  }
});

test('a bucket that does not exist: the checkpoint fails naming ARCH_CHECKPOINT_URL; the container keeps running', async () => {
  const id = 's3-nobucket';
  try {
    await run(id, 'nob', [], 's3://nobucket-here/x');
    await node.waitCount(id, 3);
    const err = await checkpoint(id).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/ARCH_CHECKPOINT_URL: bucket "nobucket-here" does not exist/);
    await expectStillRunning(id);
  } finally {
    await remove(id);
  }
});

test('a bucket the node does not allow: the container starts without ARCH, the log names the variable, the setting and the fix', async () => {
  const id = 's3-notallowed';
  try {
    const out = await run(id, 'na', [], `s3://${BUCKET}/other-team`);
    await node.containerd.waitStatus(id, 'RUNNING', 15_000);
    await node.waitCount(id, 2);
    expect(fs.readFileSync(out, 'utf8')).toContain('count 1\n');
    const line = await waitFor('refusal logged', () =>
      node.logLines().find((l) => l.container === id && /starting the container without ARCH/.test(String(l.msg))),
    );
    expect(line).toMatchObject({ field: 'ARCH_CHECKPOINT_URL' });
    expect(String(line.err)).toContain('ARCH_ALLOWED_BUCKETS');
    expect(fs.existsSync(objectsDir('na'))).toBe(false);
  } finally {
    await remove(id);
  }
});

test("a clean exit removes only the prefix ARCH wrote for that container: another's objects stay", async () => {
  // Objects ARCH did not write, at the prefix a container names with ARCH_CHECKPOINT_ID.
  const planted = new S3CheckpointStore(
    {
      loc: { bucket: BUCKET, prefix: PREFIX },
      client: {
        region: 'us-east-1',
        endpoint: s3.endpoint,
        accessKeyId: s3.accessKey,
        secretAccessKey: s3.secretKey,
        forcePathStyle: true,
      },
      cacheRoot: cache,
    },
    'default',
    'precious',
    path.join(work, 'unused'),
  );
  await planted.at.put('keep.txt', Buffer.from("not ARCH's\n"));
  const id = 's3-exit-other';
  const own = 's3-exit-own';
  try {
    await run(id, 'precious', ['COUNTER_EXIT_AFTER=5']);
    await node.containerd.waitStatus(id, 'STOPPED', 30_000);
    await remove(id);
    expect(fs.readFileSync(path.join(objectsDir('precious'), 'keep.txt'), 'utf8')).toBe("not ARCH's\n");
    await waitFor('kept logged', () =>
      node
        .logLines()
        .find((l) => l.container === id && /checkpoint kept: it has no ownership record/.test(String(l.msg))),
    );

    // Its own prefix (the lease written at start, with the record beside it) goes with its clean exit.
    await run(own, 'exit-own', ['COUNTER_EXIT_AFTER=5']);
    await node.containerd.waitStatus(own, 'STOPPED', 30_000);
    expect(fs.existsSync(`${objectsDir('exit-own')}${RECORD_SUFFIX}`)).toBe(true);
    await remove(own);
    await waitFor('own prefix removed', () =>
      fs.existsSync(`${objectsDir('exit-own')}${RECORD_SUFFIX}`) ? undefined : true,
    );
    expect(objectsIn(objectsDir('exit-own'))).toEqual([]);
  } finally {
    await remove(id);
    await remove(own);
  }
});

test('retention in the bucket: old checkpoints go, chunks shared with the kept ones stay, unreferenced ones go', async () => {
  const id = 's3-gc';
  try {
    settings({ ARCH_KEEP: '1' });
    await run(id, 'gc', ['COUNTER_START_FILES=1']);
    await node.waitCount(id, 3);
    const a = await checkpoint(id, true);
    await node.waitCount(id, (await node.waitCount(id, 1)) + 2);
    const b = await checkpoint(id);
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    // ARCH_KEEP=1: only the current checkpoint's objects are left.
    const tops = new Set(objectsIn(objectsDir('gc')).map((o) => o.rel.split('/')[0]));
    expect(tops.has(path.basename(a.dir))).toBe(false);
    expect(tops.has(path.basename(b.dir))).toBe(true);
    // Chunks: none collected inside the grace period; with none, only those the kept manifest does not use.
    const store = new S3CheckpointStore(
      { loc: { bucket: BUCKET, prefix: PREFIX }, client: node.ctx.settings.s3, cacheRoot: cache },
      'default',
      'gc',
      path.join(cache, 'gc'),
    );
    const stale = `${CHUNKS_DIR}/00/${'0'.repeat(64)}`;
    await store.at.put(stale, Buffer.from('unreferenced'));
    const kept = new Set(b.manifest.chunked!.files.flatMap((f) => f.chunks.map((c) => c.id)));
    expect((await collectS3(store.at, { keep: 1, current: path.basename(b.dir) })).deleted).toBe(0);
    const r = await collectS3(store.at, { keep: 1, current: path.basename(b.dir), graceMs: 0, now: Date.now() + 1000 });
    expect(r.deleted).toBeGreaterThanOrEqual(1);
    const left = objectsIn(path.join(objectsDir('gc'), CHUNKS_DIR)).map((o) => path.basename(o.rel));
    expect(left).not.toContain('0'.repeat(64));
    for (const c of kept) expect(left).toContain(c);
    // And the job still restores from what is left.
    await remove(id);
    fs.rmSync(cache, { recursive: true, force: true });
    await expectRestored(id, await run(id, 'gc'));
  } finally {
    await remove(id);
  }
});

test('another node that allows the bucket restores the job from it: nothing is copied between the nodes', async () => {
  const id = 's3-move';
  const cacheB = path.join(work, 'cache-b');
  const b = await startArchNode('s3m', {
    ARCH_S3_CACHE_PATH: cacheB,
    ARCH_ALLOWED_BUCKETS: BUCKET,
    ...s3.settings(),
  });
  try {
    await checkpointedJob(id, 'move');
    const env = [
      'ARCH_ENABLE=1',
      `ARCH_CHECKPOINT_URL=s3://${BUCKET}/${PREFIX}`,
      'ARCH_CHECKPOINT_ID=move',
      'COUNTER_INTERVAL_MS=50',
      `COUNTER_MEM_MB=${MEM_MB}`,
      'COUNTER_VERIFY_EVERY=3',
    ];
    expect(fs.existsSync(cacheB)).toBe(false);
    const out = await b.runCounter(id, env);
    await copies.expectRestored(b, id, out);
    // B fetched only the small files into its own cache; the chunks came from the bucket.
    const cached = objectsIn(path.join(cacheB, BUCKET, PREFIX, 'default', 'move'));
    expect(cached.some((o) => PAGE_IMAGE_PATH.test(o.rel))).toBe(false);
    expect(cached.some((o) => o.rel.endsWith('manifest.json'))).toBe(true);
  } finally {
    await b.containerd.removeContainer(id).catch(() => undefined);
    await b.stop();
  }
});

test('GC safety: a checkpoint published while the collector runs on the same bucket is intact (every chunk there, it restores)', async () => {
  const id = 's3-gcsafe';
  const store = new S3CheckpointStore(
    { loc: { bucket: BUCKET, prefix: PREFIX }, client: node.ctx.settings.s3, cacheRoot: cache },
    'default',
    'gcsafe',
    path.join(cache, 'gcsafe'),
  );
  let collecting = true;
  let passes = 0;
  let collector: Promise<void> | undefined;
  try {
    await run(id, 'gcsafe', ['COUNTER_START_FILES=1']);
    await node.waitCount(id, 3);
    await checkpoint(id, true);
    // Old garbage for the collector to find (an unreferenced chunk, a failed upload), aged past the grace period:
    // a collector that removes it while the next checkpoint is published was really at work then.
    const garbage = [
      `${CHUNKS_DIR}/ab/ab${randomBytes(31).toString('hex')}`,
      'ckpt-2020-01-01T00-00-00-000Z-deadbeef/x',
    ];
    for (const g of garbage) {
      await store.at.put(g, Buffer.from('left over'));
      const old = new Date(Date.now() - 2 * 3600_000);
      fs.utimesSync(path.join(objectsDir('gcsafe'), g), old, old);
    }
    const listed = await store.at.list('');
    for (const g of garbage) expect(listed.find((o) => o.rel === g)?.modified).toBeLessThan(Date.now() - 3600_000);
    // Another node's retention, as its pruneAfter runs it, over and over on the same prefix (keep 1: the most eager).
    collector = (async () => {
      while (collecting) {
        const current = (await store.at.get('current'))?.toString('utf8').trim() ?? '';
        await collectS3(store.at, { keep: 1, current });
        passes++;
      }
    })();
    await waitFor('the collector at work', () => (passes > 0 ? true : undefined), 15_000);
    await node.waitCount(id, (await node.waitCount(id, 1)) + 2);
    const during = passes;
    const second = await checkpoint(id);
    const after = passes;
    collecting = false;
    await collector;
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    // It ran through the publish, and it did collect.
    expect(after - during).toBeGreaterThanOrEqual(2);
    const left = new Set(objectsIn(objectsDir('gcsafe')).map((o) => o.rel));
    for (const g of garbage) expect(left.has(g)).toBe(false);
    // Published, and whole: every chunk its manifest lists is in the bucket.
    expect(currentName('gcsafe')).toBe(path.basename(second.dir));
    const ids = second.manifest.chunked!.files.flatMap((f) => f.chunks.map((c) => c.id));
    expect(ids.length).toBeGreaterThan(MEM_MB / 2);
    expect(ids.filter((c) => !left.has(`${CHUNKS_DIR}/${c.slice(0, 2)}/${c}`))).toEqual([]);
    // And it restores from the bucket alone.
    await remove(id);
    fs.rmSync(cache, { recursive: true, force: true });
    await expectRestored(id, await run(id, 'gcsafe'));
  } finally {
    collecting = false;
    await collector?.catch(() => undefined);
    await remove(id);
  }
});
