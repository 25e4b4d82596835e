import { execa } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { ChunkDir, CHUNKS_DIR } from '../../core/chunk-dir.js';
import { collect } from '../../core/chunk-gc.js';
import { CHUNKED_FORMAT_VERSION, FORMAT_VERSION } from '../../core/manifest.js';
import { createNodeContext } from '../../core/context.js';
import { trustOf, type Trust } from '../../core/trust.js';
import { writeArchConfig } from '../support/arch-env.js';
import { startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import * as copies from '../support/checkpoint-copies.js';
import { COUNTER_FILES, REPO_ROOT } from '../support/images.js';
import { archRuncCreateOf, processesOfContainer, runsBelow } from '../support/proc-scan.js';
import { PAGE_IMAGE_PATH, ROOTFS_TAR } from '../../core/checkpoint-layout.js';
import { listScratch } from '../../core/seal.js';
import { readLease, runningLease, writeLease } from '../../core/lease.js';
import { CheckpointStore } from '../../core/store.js';

/**
 * Issue 12, store format 2 (ARCH_STORE_FORMAT=2) on the real stack
 * (containerd → arch-runc → runc/CRIU): the page images and the layer
 * archive are stored as compressed, deduplicated chunks; a checkpoint of a
 * job whose memory did not change writes almost nothing new; delete and
 * create again restores from the chunks; a bad or missing chunk means a
 * fresh start with a reason; a v1 checkpoint still restores; with a store
 * key no chunk holds the job's memory in plaintext.
 */

let node: ArchTestNode;
let work: string;
let ckRoot: string;
let trust: Trust;
let keyFile: string;
const MEM_MB = 64;

/** The first 64 bytes the counter writes into its memory (counter.c's xorshift64* from RNG_SEED). */
function memoryMarker(): Buffer {
  const mask = (1n << 64n) - 1n;
  let s = 0x9e3779b97f4a7c15n;
  const out = Buffer.alloc(64);
  for (let i = 0; i < 8; i++) {
    s ^= s >> 12n;
    s = (s ^ (s << 25n)) & mask;
    s ^= s >> 27n;
    out.writeBigUInt64LE((s * 2685821657736338717n) & mask, i * 8);
  }
  return out;
}
const MEM = memoryMarker();

function filesBelow(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(p);
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  return out;
}

const bytesBelow = (dir: string): number => filesBelow(dir).reduce((a, f) => a + fs.statSync(f).size, 0);
const chunksOf = (name: string): string => path.join(ckRoot, 'default', name, CHUNKS_DIR);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const isZstdFrame = (f: string): boolean => fs.readFileSync(f).subarray(0, 4).equals(ZSTD_MAGIC);
const memoryIn = (dir: string): boolean => filesBelow(dir).some((f) => fs.readFileSync(f).includes(MEM));

function settings(extra: Record<string, string | undefined> = {}): void {
  writeArchConfig(path.dirname(node.archConfig), {
    ARCH_NODE_NAME: 'sv2',
    ARCH_RUNC_ROOT: node.runcRootBase,
    ARCH_STORE_FORMAT: '2',
    ...extra,
  });
}

beforeAll(async () => {
  await cleanupStaleNodes();
  work = fs.mkdtempSync('/tmp/arch-sv2-');
  ckRoot = path.join(work, 'ck');
  keyFile = path.join(work, 'store.key');
  fs.writeFileSync(keyFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  node = await startArchNode('sv2', { ARCH_STORE_FORMAT: '2' });
  trust = trustOf(node.ctx.settings);
});

afterAll(async () => {
  await stopAllNodes();
  if (node) fs.rmSync(path.dirname(node.archConfig), { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

afterEach(() => settings());

async function run(id: string, ckpt: string, env: string[] = []): Promise<string> {
  return node.runCounter(id, [
    'ARCH_ENABLE=1',
    `ARCH_CHECKPOINT_HOST_PATH=${ckRoot}`,
    `ARCH_CHECKPOINT_ID=${ckpt}`,
    'COUNTER_INTERVAL_MS=50',
    `COUNTER_MEM_MB=${MEM_MB}`,
    'COUNTER_VERIFY_EVERY=3',
    ...env,
  ]);
}

async function remove(id: string): Promise<void> {
  await node.containerd.removeContainer(id).catch(() => undefined);
}

/** Checkpoint with the node's settings as the file now says (format, key). */
function checkpoint(id: string, leaveRunning = false) {
  const ctx = createNodeContext('test', { ...process.env, ARCH_CONFIG: node.archConfig });
  return checkpointContainer(ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default'), leaveRunning });
}

/** Run the counter as checkpoint `ckpt`, let it count, then checkpoint (and so stop) it; the checkpoint and the count it had. */
async function runThenCheckpoint(id: string, ckpt: string, env: string[] = []) {
  await run(id, ckpt, env);
  await node.waitCount(id, 3);
  const res = await checkpoint(id);
  await node.containerd.waitStatus(id, 'STOPPED', 15_000);
  return { res, count: node.count(id) };
}

const expectRestored = async (id: string, out: string): Promise<void> => {
  await copies.expectRestored(node, id, out);
  await waitFor('memcheck', () => (/memcheck ok/.test(fs.readFileSync(out, 'utf8')) ? true : undefined), 15_000);
  expect(fs.readFileSync(out, 'utf8')).not.toContain('memcheck FAIL');
};

async function expectFreshWith(id: string, out: string, reason: string): Promise<Record<string, unknown>> {
  await node.containerd.waitStatus(id, 'RUNNING', 15_000);
  await node.waitCount(id, 2);
  // A bad or missing page-image chunk is found while runc restores (the page
  // images are assembled behind CRIU's gate, core/seal-gate.ts), so runc
  // reports CRIU's abort on the container's stderr before the fresh start (as
  // shim-seal.test.ts allows). No line of a restored process may come first.
  const runcSaid = /^(?:criu failed: .*\n|log file: .*\n)*/;
  expect(fs.readFileSync(out, 'utf8').replace(runcSaid, '')).toMatch(/^counter start pid=1 mem_mb=\d+\ncount 1\n/);
  await waitFor(`error logged for ${id}`, () => (copies.errorsOf(node, id).length ? true : undefined), 15_000);
  const e = copies.errorsOf(node, id)[0]!;
  expect(e).toMatchObject({ phase: 'create', reason });
  return e;
}

/** A checkpoint seeded once (the cases below copy its container directory). */
let seeded: Promise<void> | undefined;
function seed(): Promise<void> {
  return (seeded ??= (async () => {
    const id = 'sv2-seed';
    await runThenCheckpoint(id, 'seed', ['COUNTER_START_FILES=1']);
    await remove(id);
  })());
}

/** The seed's container directory copied as checkpoint `name`, its manifest renamed and signed by this node. */
async function copySeed(name: string): Promise<string> {
  await seed();
  const to = path.join(ckRoot, 'default', name);
  await execa('cp', ['-a', path.join(ckRoot, 'default', 'seed'), to]);
  const dir = path.join(to, fs.readlinkSync(path.join(to, 'current')));
  copies.writeManifest(dir, { ...copies.readManifest(dir), checkpointId: name }, trust);
  return dir;
}

function pageChunkFile(dir: string): string {
  const m = copies.readManifest(dir);
  const f = m.chunked!.files.find((x) => PAGE_IMAGE_PATH.test(x.path) && x.chunks.length > 4)!;
  const id = f.chunks[2]!.id;
  return path.join(path.dirname(dir), CHUNKS_DIR, id.slice(0, 2), id);
}

test('chunked and compressed; the second checkpoint of an unchanged job writes a small fraction; delete and create again restores', async () => {
  const id = 'sv2-inc';
  try {
    const out = await run(id, 'inc', ['COUNTER_START_FILES=1']);
    await node.waitCount(id, 3);
    const first = await checkpoint(id, true);
    const afterFirst = bytesBelow(chunksOf('inc'));
    expect(first.manifest.formatVersion).toBe(CHUNKED_FORMAT_VERSION);
    const chunked = first.manifest.chunked!.files.map((f) => f.path);
    expect(chunked).toEqual(expect.arrayContaining([ROOTFS_TAR, expect.stringMatching(PAGE_IMAGE_PATH)]));
    // The large files are chunks only: the checkpoint directory holds none of them.
    for (const p of chunked) expect(fs.existsSync(path.join(first.dir, p))).toBe(false);
    const pageBytes = first.manifest.chunked!.files.reduce((a, f) => a + f.size, 0);
    expect(pageBytes).toBeGreaterThan(MEM_MB << 20);
    expect(afterFirst).toBeLessThan(pageBytes); // compressed
    // Plain zstd frames named by the sha256 of what they hold (the control for the key case below).
    // (chunks/ also holds the collector's empty marker, .collected: core/chunk-gc.ts.)
    const chunkFiles = filesBelow(chunksOf('inc')).filter((f) => /^[0-9a-f]{64}$/.test(path.basename(f)));
    expect(chunkFiles.every(isZstdFrame)).toBe(true);
    const one = chunkFiles.find((f) => fs.statSync(f).size > 4096)!;
    const { stdout } = await execa('zstd', ['-d', '-c', one], { encoding: 'buffer' });
    expect(createHash('sha256').update(stdout).digest('hex')).toBe(path.basename(one));

    await node.waitCount(id, (await node.waitCount(id, 1)) + 3);
    const second = await checkpoint(id);
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    const written = bytesBelow(chunksOf('inc')) - afterFirst;
    expect(written).toBeGreaterThanOrEqual(0);
    expect(written).toBeLessThan(afterFirst * 0.15);
    expect(second.manifest.chunked!.files.length).toBe(first.manifest.chunked!.files.length);

    await remove(id);
    const again = await run(id, 'inc');
    await expectRestored(id, again);
    expect(fs.readFileSync(again, 'utf8')).not.toContain('counter start');
    expect(node.readContainerFile(id, COUNTER_FILES.modified)).toBe(COUNTER_FILES.modifiedContent);
    void out;
  } finally {
    await remove(id);
  }
});

test('a job the lease gives to another node: its checkpoint is refused at the commit, after its chunks are written; the previous one stays current and the job goes on', async () => {
  const id = 'sv2-lease';
  try {
    await run(id, 'lease');
    await node.waitCount(id, 3);
    const first = await checkpoint(id, true);
    const store = new CheckpointStore(path.join(ckRoot, 'default', 'lease'), {
      root: ckRoot,
      field: 'ARCH_CHECKPOINT_HOST_PATH',
    });
    const current = () => fs.readlinkSync(path.join(store.containerDir, 'current'));
    const before = current();
    expect(path.join(store.containerDir, before)).toBe(first.dir);
    // Another node took the job over (a recovery while this node was cut off).
    const held = (await readLease(store, trust)).lease;
    await writeLease(store, runningLease(held, 'node-z', id, 'recovered'), trust, {
      namespace: 'default',
      key: 'lease',
    });
    const chunksBefore = bytesBelow(chunksOf('lease'));
    await node.waitCount(id, (await node.waitCount(id, 1)) + 2);

    await expect(checkpoint(id)).rejects.toThrow(/checkpoint not published: .*running on node node-z/);
    // The lease is read at the commit, so the chunks were made first (and are left to the collector).
    expect(bytesBelow(chunksOf('lease'))).toBeGreaterThanOrEqual(chunksBefore);
    expect(current()).toBe(before);
    expect(fs.readdirSync(store.containerDir).filter((n) => n.startsWith('.staging-'))).toEqual([]);
    // Not stopped, not left frozen: it counts on.
    await node.containerd.waitStatus(id, 'RUNNING', 5_000);
    await node.waitCount(id, (await node.waitCount(id, 1)) + 2);

    // `arch-cli ls` says the job is not protected, and why, until a checkpoint succeeds again.
    const ls = async (json: boolean) => {
      const r = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['ls', '--local', ...(json ? ['--json'] : [])], {
        env: { ARCH_CONFIG: node.archConfig },
        reject: false,
      });
      expect(r.exitCode).toBe(0);
      return String(r.stdout);
    };
    type Listed = { id: string; checkpoint?: { createdAt: string }; lastCheckpointFailure?: { message: string } };
    const listed = async () =>
      (JSON.parse(await ls(true)) as { containers: Listed[] }).containers.find((c) => c.id === id)!;
    const failed = await listed();
    expect(failed.lastCheckpointFailure?.message).toMatch(/checkpoint not published: .*running on node node-z/);
    const text = await ls(false);
    expect(text).toMatch(new RegExp(`default/${id} .* FAILED [\\d.]+ (ms|s|min) ago`));
    expect(text).toContain(`default/${id}: checkpoint failed at `);
    expect(text).toContain(`the one of ${failed.checkpoint!.createdAt} stays current: checkpoint not published`);
    // The job given back to this node: the next checkpoint succeeds and the failure goes.
    await writeLease(store, held!, trust, { namespace: 'default', key: 'lease' });
    await checkpoint(id, true);
    expect((await listed()).lastCheckpointFailure).toBeUndefined();
    expect(await ls(false)).not.toContain('FAILED');
  } finally {
    await remove(id);
  }
});

test('a corrupted chunk: fresh start, reason corrupt, naming the file and chunk', async () => {
  const id = 'sv2-corrupt';
  const dir = await copySeed('corrupt');
  const f = pageChunkFile(dir);
  const b = fs.readFileSync(f);
  b[b.length >> 1] ^= 0xff;
  fs.writeFileSync(f, b);
  try {
    const e = await expectFreshWith(id, await run(id, 'corrupt'), 'corrupt');
    expect(String(e.err)).toMatch(/pages-\d+\.img: chunk 3 of \d+/);
  } finally {
    await remove(id);
  }
});

test('a missing chunk: fresh start, reason truncated', async () => {
  const id = 'sv2-missing';
  const dir = await copySeed('missing');
  fs.rmSync(pageChunkFile(dir));
  try {
    const e = await expectFreshWith(id, await run(id, 'missing'), 'truncated');
    expect(String(e.err)).toContain('missing from the store');
  } finally {
    await remove(id);
  }
});

test('a v1 checkpoint (whole files) still restores on a node set to format 2', async () => {
  const id = 'sv2-v1';
  try {
    settings({ ARCH_STORE_FORMAT: '1' });
    await run(id, 'v1', ['COUNTER_START_FILES=1']);
    await node.waitCount(id, 3);
    const res = await checkpoint(id);
    expect(res.manifest.formatVersion).toBe(FORMAT_VERSION);
    expect(fs.existsSync(chunksOf('v1'))).toBe(false);
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    await remove(id);
    settings();
    await expectRestored(id, await run(id, 'v1'));
  } finally {
    await remove(id);
  }
});

test('with a store key: no chunk holds the memory in plaintext, ids are not sha256 of it, and it restores', async () => {
  const id = 'sv2-key';
  try {
    settings({ ARCH_STORE_KEY_FILE: keyFile });
    const { res } = await runThenCheckpoint(id, 'key', ['COUNTER_START_FILES=1']);
    expect(res.manifest.chunked!.keyId).toMatch(/^[0-9a-f]{16}$/);
    expect(filesBelow(chunksOf('key')).some(isZstdFrame)).toBe(false);
    expect(memoryIn(chunksOf('key'))).toBe(false);
    expect(memoryIn(res.dir)).toBe(false);
    await remove(id);
    await expectRestored(id, await run(id, 'key'));
  } finally {
    await remove(id);
  }
});

test('arch-runc killed while CRIU restores encrypted chunks (page images assembled behind its gate): nothing is left, the next create restores', async () => {
  const id = 'sv2-killed';
  try {
    settings({ ARCH_STORE_KEY_FILE: keyFile });
    const { count: atCheckpoint } = await runThenCheckpoint(id, 'killed', ['COUNTER_START_FILES=1']);
    await remove(id);
    const store = new CheckpointStore(path.join(ckRoot, 'default', 'killed'));
    const current = await store.current();

    const create = run(id, 'killed').then(
      () => 'created',
      () => 'failed',
    );
    const archRunc = await waitFor('arch-runc create', () => archRuncCreateOf(id), 15_000);
    await waitFor('CRIU restoring', () => (runsBelow(archRunc, 'criu') ? true : undefined), 15_000);
    process.kill(archRunc, 'SIGKILL');
    // The create fails (a CRIU still at the gate finds no writer left and aborts); nothing is left.
    expect(await create).toBe('failed');
    await waitFor('no process left in the container', () =>
      processesOfContainer('default', id).length === 0 ? true : undefined,
    );
    expect(await store.current()).toBe(current);

    await remove(id);
    const out = await run(id, 'killed');
    await expectRestored(id, out);
    expect(node.count(id)).toBeGreaterThanOrEqual(atCheckpoint);
    // The killed restore's plaintext scratch (named after its process) went with the next restore.
    expect((await listScratch()).filter((d) => d.includes(`-${archRunc}-`))).toEqual([]);
  } finally {
    await remove(id);
  }
});

test('with a store key, a node without it starts fresh with reason sealed-key', async () => {
  const id = 'sv2-nokey';
  try {
    settings({ ARCH_STORE_KEY_FILE: keyFile });
    await runThenCheckpoint(id, 'nokey');
    await remove(id);
    settings();
    const e = await expectFreshWith(id, await run(id, 'nokey'), 'sealed-key');
    expect(String(e.err)).toContain('ARCH_STORE_KEY_FILE');
  } finally {
    await remove(id);
  }
});

test('retention: the last ARCH_KEEP checkpoints stay, chunks only old ones used go, shared ones stay; a checkpoint published while the collector runs is intact', async () => {
  const id = 'sv2-gc';
  const cdir = path.join(ckRoot, 'default', 'gc');
  const ckpts = () => fs.readdirSync(cdir).filter((n) => n.startsWith('ckpt-'));
  const store = new ChunkDir(cdir);
  const idsOf = (dir: string) =>
    new Set(copies.readManifest(dir).chunked!.files.flatMap((f) => f.chunks.map((c) => c.id)));
  try {
    settings({ ARCH_KEEP: '2' });
    await run(id, 'gc', ['COUNTER_START_FILES=1']);
    await node.waitCount(id, 3);
    const first = await checkpoint(id, true);
    await checkpoint(id, true);
    const third = await checkpoint(id, true);
    expect(ckpts()).toHaveLength(2);
    expect(ckpts()).not.toContain(path.basename(first.dir));
    // Every chunk set aside at once (no grace), then deleted by a run a grace period later: only unreferenced ones.
    const kept = new Set([...idsOf(third.dir), ...idsOf(path.join(cdir, ckpts()[0]!))]);
    await collect(cdir, store, { keep: 2, current: third.dir, graceMs: 0 });
    await collect(cdir, store, { keep: 2, current: third.dir, graceMs: 0, now: Date.now() + 1000 });
    const left = new Set((await store.list()).map((c) => c.id));
    expect(left).toEqual(kept);

    // The collector running over and over while the last checkpoint is written and published: every chunk
    // old enough to be a candidate at once (the ones the new checkpoint reuses too), a short grace period.
    const hourAgo = new Date(Date.now() - 3600_000);
    for (const c of await store.list()) fs.utimesSync(store.pathOf(c.id), hourAgo, hourAgo);
    let stop = false;
    const collector = (async () => {
      let runs = 0;
      while (!stop) {
        await collect(cdir, store, { keep: 2, current: null, graceMs: 5000 });
        runs++;
      }
      return runs;
    })();
    const last = await checkpoint(id).finally(() => (stop = true));
    expect(await collector).toBeGreaterThan(0);
    await node.containerd.waitStatus(id, 'STOPPED', 15_000);
    for (const c of idsOf(last.dir)) expect(fs.existsSync(store.pathOf(c))).toBe(true);
    await remove(id);
    await expectRestored(id, await run(id, 'gc'));
  } finally {
    await remove(id);
  }
});
