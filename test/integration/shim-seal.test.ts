import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { SEALED_FORMAT_VERSION, type Manifest } from '../../core/manifest.js';
import { findUpperDir } from '../../core/rootfs-diff.js';
import { chunkAad, chunkNonce, listScratch, SCRATCH_ROOTS, sealedSize, storeKeyId } from '../../core/seal.js';
import { trustOf, type Trust } from '../../core/trust.js';
import { writeArchConfig } from '../support/arch-env.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import * as copies from '../support/checkpoint-copies.js';
import { COUNTER_FILES } from '../support/images.js';
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { PAGE_IMAGE_PATH } from '../../core/checkpoint-layout.js';

/**
 * Issue 10, encryption at rest (ARCH_STORE_KEY_FILE) on the real stack
 * (containerd → arch-runc → runc/CRIU): a sealed checkpoint holds none of the
 * job's memory or files in plaintext and restores where the key is; without
 * the key, with another key, or altered, the container starts fresh; no
 * plaintext is left in the tmpfs scratch either way.
 */

let node: ArchTestNode;
let work: string;
let ckRoot: string;
let trust: Trust;
let keyA: string;
let keyB: string;
let hexA: string;
/** The seed sealed checkpoint (ARCH_CHECKPOINT_ID=seed), which the cases copy. */
let seedDir: string;
const MEM_MB = 12; // page images of 3+ chunks of 4 MiB

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
const FILE = Buffer.from(COUNTER_FILES.createdContent);

/** Which markers are somewhere in the files below dir. */
function markersIn(dir: string): { memory: boolean; file: boolean } {
  const found = { memory: false, file: false };
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        const b = fs.readFileSync(p);
        found.memory ||= b.includes(MEM);
        found.file ||= b.includes(FILE);
      }
    }
  };
  walk(dir);
  return found;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** No scratch dir left, and no marker in any tmpfs scratch root. */
async function expectNoScratch(): Promise<void> {
  // A scratch dir of another live process (another test run on this machine) is that process's work in progress.
  const ours = (await listScratch()).filter((d) => {
    const pid = Number(/^arch-seal-(\d+)-/.exec(path.basename(d))?.[1]);
    return !(pid > 0 && pid !== process.pid && isAlive(pid));
  });
  expect(ours).toEqual([]);
  for (const root of SCRATCH_ROOTS.filter((r) => fs.existsSync(r))) {
    for (const n of fs.readdirSync(root)) {
      const p = path.join(root, n);
      const st = fs.lstatSync(p);
      if (st.isFile() && st.size < 256 << 20) expect(fs.readFileSync(p).includes(MEM)).toBe(false);
    }
  }
}

function useKey(file: string | undefined): void {
  writeArchConfig(path.dirname(node.archConfig), {
    ARCH_NODE_NAME: 'seal',
    ARCH_RUNC_ROOT: node.runcRootBase,
    ARCH_STORE_KEY_FILE: file,
  });
}

function writeKey(name: string, body: string): string {
  const f = path.join(work, name);
  fs.writeFileSync(f, body, { mode: 0o600 });
  return f;
}

beforeAll(async () => {
  await cleanupStaleNodes();
  work = fs.mkdtempSync('/tmp/arch-seal-');
  ckRoot = path.join(work, 'ck');
  hexA = randomBytes(32).toString('hex');
  keyA = writeKey('a.key', `${hexA}\n`);
  keyB = writeKey('b.key', `${randomBytes(32).toString('base64')}\n`);
  node = await startArchNode('seal', { ARCH_STORE_KEY_FILE: keyA });
  trust = trustOf(node.ctx.settings);
  await run('se-seed', ['ARCH_CHECKPOINT_ID=seed', 'COUNTER_START_FILES=1']);
  await node.waitCount('se-seed', 5);
  const res = await checkpointContainer(node.ctx, {
    namespace: 'default',
    id: 'se-seed',
    runcRoot: node.runcRoot('default'),
  });
  await node.containerd.waitStatus('se-seed', 'STOPPED', 15_000);
  await remove('se-seed');
  seedDir = path.join(work, 'seed');
  await execa('cp', ['-a', res.dir, seedDir]);
});

afterAll(async () => {
  await stopAllNodes();
  if (node) fs.rmSync(path.dirname(node.archConfig), { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

async function run(id: string, env: string[]): Promise<string> {
  const logFile = path.join(node.dir, `${id}-${Date.now()}.out`);
  await node.containerd.run({
    image: node.image,
    id,
    logFile,
    runcBinary: ARCH_RUNC_BIN,
    detach: true,
    env: [
      'ARCH_ENABLE=1',
      `ARCH_CHECKPOINT_HOST_PATH=${ckRoot}`,
      'COUNTER_INTERVAL_MS=50',
      `COUNTER_MEM_MB=${MEM_MB}`,
      ...env,
    ],
  });
  return logFile;
}

async function remove(id: string): Promise<void> {
  await node.containerd.removeContainer(id).catch(() => undefined);
}

const readManifest = copies.readManifest;
/** Every size and sha256 recomputed and signed by this node's own key: only the seal itself can catch the change. */
const redigest = (dir: string, seal?: Manifest['seal']): Promise<void> =>
  copies.redigest(dir, trust, seal ? { seal } : {});
/** The seed checkpoint as checkpoint `key` (a legitimate copy, signed by this node). */
const copyAs = (key: string): Promise<string> =>
  copies.publishCopy({
    ckRoot,
    seedDir,
    name: key,
    key: trust,
    dirName: path.basename(seedDir).replace(/^seed$/, 'ckpt-2026-01-01T00-00-00-000Z-0000000a'),
  });

function pagesRel(dir: string): string {
  const m = readManifest(dir);
  return m
    .seal!.files.map((f) => f.path)
    .find((p) => PAGE_IMAGE_PATH.test(p) && m.seal!.files.find((s) => s.path === p)!.plainSize > 2 * (4 << 20))!;
}

const errorsOf = (id: string): Record<string, unknown>[] => copies.errorsOf(node, id);

async function expectFreshWith(id: string, out: string, reason: string): Promise<Record<string, unknown>> {
  await node.containerd.waitStatus(id, 'RUNNING', 15_000);
  await node.waitCount(id, 2);
  // A page image chunk that fails authentication is refused at CRIU's gate
  // (core/seal-gate.ts), while runc restores: runc reports CRIU's abort on
  // the container's stderr (its stdio during a restore) before the fresh
  // start, as for any image CRIU itself fails on (shim-bad-input.test.ts).
  // No line of a restored process may come first.
  const runcSaid = /^(?:criu failed: .*\n|log file: .*\n)*/;
  expect(fs.readFileSync(out, 'utf8').replace(runcSaid, '')).toMatch(/^counter start pid=1 mem_mb=\d+\ncount 1\n/);
  expect(node.readContainerFile(id, COUNTER_FILES.starts)).toBe('start\n');
  await waitFor(`error logged for ${id}`, () => (errorsOf(id).length ? true : undefined), 15_000);
  const e = errorsOf(id)[0]!;
  expect(e).toMatchObject({ phase: 'create', reason });
  return e;
}

const expectRestored = (id: string, out: string): Promise<void> => copies.expectRestored(node, id, out);

describe('with a key', () => {
  afterEach(() => useKey(keyA));

  test('the store holds no plaintext of memory or files; delete and create again restores, the count goes on', async () => {
    const m = readManifest(seedDir);
    expect(m.formatVersion).toBe(SEALED_FORMAT_VERSION);
    expect(m.seal!.files.map((f) => f.path)).toEqual(
      expect.arrayContaining(['rootfs-diff.tar', expect.stringMatching(PAGE_IMAGE_PATH)]),
    );
    expect(new Set(m.seal!.files.map((f) => f.keyId))).toEqual(new Set([storeKeyId(Buffer.from(hexA, 'hex'))]));
    expect(markersIn(seedDir)).toEqual({ memory: false, file: false });
    await expectNoScratch();

    const id = 'se-restore';
    const dir = await copyAs('restore');
    try {
      const out = await run(id, ['ARCH_CHECKPOINT_ID=restore']);
      await expectRestored(id, out);
      expect(fs.readFileSync(out, 'utf8')).not.toContain('counter start');
      // The page images were decrypted behind CRIU's gate (while runc and CRIU started), which CRIU ran.
      const restored = node
        .logLines()
        .filter((l) => l.msg === 'restored from checkpoint' && l.container === id)
        .pop()!;
      expect((restored.timings as Record<string, number>).unsealPages).toBeGreaterThanOrEqual(0);
      const criuLog = fs.readFileSync(path.join(node.bundleDir(id), 'arch-restore', 'restore.log'), 'utf8');
      expect(criuLog).toMatch(/Running post-setup-namespaces scripts\n.*\n?.*\[.*bin\/arch-criu-gate\]/);
      expect(node.readContainerFile(id, COUNTER_FILES.modified)).toBe(COUNTER_FILES.modifiedContent);
      await expectNoScratch();
      expect(markersIn(dir)).toEqual({ memory: false, file: false });
    } finally {
      await remove(id);
    }
  });

  test('control: without a key the same checkpoint holds both markers (the check above can see them)', async () => {
    useKey(undefined);
    const id = 'se-plain';
    try {
      await run(id, ['ARCH_CHECKPOINT_ID=plain', 'COUNTER_START_FILES=1']);
      await node.waitCount(id, 3);
      const res = await checkpointContainer(node.ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') });
      await node.containerd.waitStatus(id, 'STOPPED', 15_000);
      expect(res.manifest.formatVersion).toBe(1);
      expect(res.manifest.seal).toBeUndefined();
      expect(markersIn(res.dir)).toEqual({ memory: true, file: true });
    } finally {
      await remove(id);
    }
  });

  test('rotation: a key file whose second line is the sealing key still restores', async () => {
    useKey(writeKey('rotated.key', `${randomBytes(32).toString('hex')}\n${hexA}\n`));
    const id = 'se-rotated';
    await copyAs('rotated');
    try {
      await expectRestored(id, await run(id, ['ARCH_CHECKPOINT_ID=rotated']));
    } finally {
      await remove(id);
    }
  });
});

describe('a node without the key, or with another: fresh start, reason sealed-key', () => {
  afterEach(() => useKey(keyA));
  test.each([
    ['no key', () => undefined],
    ['another key', () => keyB],
  ])('%s', async (name, key) => {
    useKey(key());
    const ck = `nokey-${name.replace(/ /g, '-')}`;
    const id = `se-${ck}`;
    await copyAs(ck);
    try {
      const e = await expectFreshWith(id, await run(id, [`ARCH_CHECKPOINT_ID=${ck}`]), 'sealed-key');
      expect(String(e.err)).toContain(storeKeyId(Buffer.from(hexA, 'hex')));
      expect(String(e.err)).toContain('ARCH_STORE_KEY_FILE');
      expect(String(e.err)).not.toContain(hexA);
      await expectNoScratch();
    } finally {
      await remove(id);
    }
  });
});

describe('an altered sealed checkpoint is refused (fresh start), nothing extracted, no plaintext left', () => {
  const CH = (4 << 20) + 16;
  /** Re-encrypt chunk i of a sealed file with the key (a key holder's forgery: valid GCM, other bytes than the signed digest). */
  function reseal(dir: string, rel: string, i: number): void {
    const m = readManifest(dir);
    const s = m.seal!.files.find((f) => f.path === rel)!;
    const key = Buffer.from(hexA, 'hex');
    const b = fs.readFileSync(path.join(dir, rel));
    const chunks = Math.ceil(s.plainSize / s.chunkBytes);
    const final = i === chunks - 1;
    const len = Math.min(s.chunkBytes, s.plainSize - i * s.chunkBytes);
    const at = i * CH;
    const d = createDecipheriv('aes-256-gcm', key, chunkNonce(Buffer.from(s.nonce, 'hex'), i));
    d.setAAD(chunkAad(m.seal!.id, rel, i, final));
    d.setAuthTag(b.subarray(at + len, at + len + 16));
    const plain = Buffer.concat([d.update(b.subarray(at, at + len)), d.final()]);
    plain[100] ^= 0xff;
    const c = createCipheriv('aes-256-gcm', key, chunkNonce(Buffer.from(s.nonce, 'hex'), i));
    c.setAAD(chunkAad(m.seal!.id, rel, i, final));
    Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]).copy(b, at);
    fs.writeFileSync(path.join(dir, rel), b);
  }

  const cases: { name: string; reason: string; says?: RegExp; alter: (dir: string) => Promise<void> }[] = [
    {
      name: 'a flipped byte in a page image chunk (digests re-signed)',
      reason: 'corrupt',
      alter: async (dir) => {
        const f = path.join(dir, pagesRel(dir));
        const b = fs.readFileSync(f);
        b[CH + 1000] ^= 1;
        fs.writeFileSync(f, b);
        await redigest(dir);
      },
    },
    {
      name: 'a flipped byte in the sealed layer archive (digests re-signed)',
      reason: 'corrupt',
      alter: async (dir) => {
        const f = path.join(dir, 'rootfs-diff.tar');
        const b = fs.readFileSync(f);
        b[5] ^= 1;
        fs.writeFileSync(f, b);
        await redigest(dir);
      },
    },
    {
      name: 'a page image cut at a chunk boundary, sizes re-signed to match',
      reason: 'corrupt',
      alter: async (dir) => {
        const rel = pagesRel(dir);
        const m = readManifest(dir);
        const f = path.join(dir, rel);
        fs.truncateSync(f, 2 * CH);
        const seal = {
          ...m.seal!,
          files: m.seal!.files.map((s) => (s.path === rel ? { ...s, plainSize: 2 * s.chunkBytes } : s)),
        };
        expect(sealedSize(2 * (4 << 20), 4 << 20)).toBe(2 * CH);
        await redigest(dir, seal);
      },
    },
    {
      name: 'a truncated page image (signed manifest untouched)',
      reason: 'truncated',
      alter: async (dir) => fs.truncateSync(path.join(dir, pagesRel(dir)), 2 * CH + 7),
    },
    {
      name: 'two chunks swapped (digests re-signed)',
      reason: 'corrupt',
      alter: async (dir) => {
        const f = path.join(dir, pagesRel(dir));
        const b = fs.readFileSync(f);
        const a = Buffer.from(b.subarray(0, CH));
        b.copy(b, 0, CH, 2 * CH);
        a.copy(b, CH);
        fs.writeFileSync(f, b);
        await redigest(dir);
      },
    },
    {
      // Decrypts, but is not what the signer wrote: the digest, checked as the chunks are decrypted, keeps CRIU at its gate.
      name: 'a chunk re-encrypted with the key (the signed digest catches it before CRIU reads a page)',
      reason: 'corrupt',
      says: /sha256 mismatch/,
      alter: async (dir) => reseal(dir, pagesRel(dir), 1),
    },
  ];

  test.each(cases)('$name → $reason', async ({ name, reason, says, alter }) => {
    const ck = `alt-${cases.findIndex((c) => c.name === name)}`;
    const id = `se-${ck}`;
    const dir = await copyAs(ck);
    await alter(dir);
    try {
      const out = await run(id, [`ARCH_CHECKPOINT_ID=${ck}`]);
      const e = await expectFreshWith(id, out, reason);
      if (says) expect(String(e.err)).toMatch(says);
      // Nothing of the checkpoint's layer: the fresh container made only its state dir.
      const upper = await findUpperDir(path.join(node.bundleDir(id), 'rootfs'));
      expect(fs.readdirSync(upper!).sort()).toEqual(['state']);
      await expectNoScratch();
    } finally {
      await remove(id);
    }
  });
});
