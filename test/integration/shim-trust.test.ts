import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { findUpperDir } from '../../core/rootfs-diff.js';
import { trustOf, type Trust } from '../../core/trust.js';
import { craftTar } from '../support/crafted-tar.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import * as copies from '../support/checkpoint-copies.js';
import { COUNTER_FILES } from '../support/images.js';
import { CRIU_DIR, PAGE_IMAGE_NAME, SIGNATURE_FILE } from '../../core/checkpoint-layout.js';

/**
 * Issue 10, findings 3, 4 and 8 on the real stack (containerd → arch-runc →
 * runc/CRIU): a checkpoint someone changed in the store and re-digested, a
 * container that names another job's checkpoint, and an archive that claims
 * far more than it holds. Each time the container starts fresh, the shim
 * logs the reason, and nothing of the checkpoint reaches the disk.
 */

let node: ArchTestNode;
let work: string;
let ckRoot: string;
let trust: Trust;
/** The seed checkpoint (ARCH_CHECKPOINT_ID=seed), which the cases copy. */
let seedDir: string;
const OTHER_IMAGE = 'localhost/arch-test/other:1';
const POD_NS = 'io.kubernetes.cri.sandbox-namespace';

beforeAll(async () => {
  await cleanupStaleNodes();
  node = await startArchNode('trust');
  work = fs.mkdtempSync('/tmp/arch-trust-');
  ckRoot = path.join(work, 'ck');
  trust = trustOf(node.ctx.settings);
  // Same content, another name: for containerd (and so for ARCH) another image.
  await node.containerd.ctr(['images', 'tag', node.image, OTHER_IMAGE]);
  await run('tr-seed', ['ARCH_CHECKPOINT_ID=seed', 'COUNTER_START_FILES=1']);
  await node.waitCount('tr-seed', 5);
  const res = await checkpointContainer(node.ctx, {
    namespace: 'default',
    id: 'tr-seed',
    runcRoot: node.runcRoot('default'),
  });
  await node.containerd.waitStatus('tr-seed', 'STOPPED', 15_000);
  await remove('tr-seed');
  seedDir = res.dir;
  // The owner as containerd knows it, found from the test process through the container's shim.
  expect(res.manifest.owner).toEqual({
    podNamespace: null,
    image: expect.stringMatching(/^localhost\/arch-test\/counter:1@sha256:[0-9a-f]{64}$/),
  });
  expect(fs.existsSync(path.join(seedDir, SIGNATURE_FILE))).toBe(true);
});

afterAll(async () => {
  await stopAllNodes();
  if (node) fs.rmSync(path.dirname(node.archConfig), { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

async function run(
  id: string,
  env: string[],
  opts: { image?: string; annotations?: Record<string, string> } = {},
): Promise<string> {
  const logFile = path.join(node.dir, `${id}-${Date.now()}.out`);
  await node.containerd.run({
    image: opts.image ?? node.image,
    id,
    logFile,
    runcBinary: ARCH_RUNC_BIN,
    detach: true,
    annotations: opts.annotations,
    env: ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${ckRoot}`, 'COUNTER_INTERVAL_MS=50', ...env],
  });
  return logFile;
}

async function remove(id: string): Promise<void> {
  await node.containerd.removeContainer(id).catch(() => undefined);
}

/** Recompute every size and sha256 in manifest.json, as a forger who can write the store would. */
const redigest = (dir: string, key: Trust | null): Promise<void> => copies.redigest(dir, key);
/** The seed checkpoint published again under checkpoint name `key` (signed by this node: a legitimate copy). */
const copyAs = (key: string): Promise<string> => copies.publishCopy({ ckRoot, seedDir, name: key, key: trust });

function pagesFile(dir: string): string {
  return path.join(
    dir,
    CRIU_DIR,
    fs.readdirSync(path.join(dir, CRIU_DIR)).find((n) => PAGE_IMAGE_NAME.test(n))!,
  );
}

const errorsOf = (id: string): Record<string, unknown>[] => copies.errorsOf(node, id);

async function theError(id: string): Promise<Record<string, unknown>> {
  await waitFor(`error logged for ${id}`, () => (errorsOf(id).length ? true : undefined), 15_000);
  expect(errorsOf(id)).toHaveLength(1);
  return errorsOf(id)[0]!;
}

/** Started fresh (count 1, one start), and nothing of the checkpoint's layer in its own. */
async function expectFresh(id: string, out: string): Promise<void> {
  await node.containerd.waitStatus(id, 'RUNNING', 15_000);
  await node.waitCount(id, 2);
  await waitFor(`${id} output`, () => (fs.readFileSync(out, 'utf8').includes('count 2\n') ? true : undefined));
  expect(fs.readFileSync(out, 'utf8')).toMatch(/^counter start pid=1 mem_mb=0\ncount 1\n/);
  expect(node.readContainerFile(id, COUNTER_FILES.starts)).toBe('start\n');
  const upper = await findUpperDir(path.join(node.bundleDir(id), 'rootfs'));
  expect(fs.readdirSync(upper!).sort()).toEqual(['state']);
}

const expectRestored = (id: string, out: string): Promise<void> => copies.expectRestored(node, id, out);

test('control: a copy signed by this node restores', async () => {
  const id = 'tr-control';
  await copyAs('control');
  try {
    await expectRestored(id, await run(id, ['ARCH_CHECKPOINT_ID=control']));
  } finally {
    await remove(id);
  }
});

describe('finding 4: a forged checkpoint (every size and sha256 recomputed) is not restored', () => {
  const cases: { name: string; key: string; forge: (dir: string) => Promise<void>; reason: string }[] = [
    {
      name: 'a file added to the writable-layer archive',
      key: 'forged-tar',
      forge: async (dir) => {
        const tarFile = path.join(dir, 'rootfs-diff.tar');
        fs.writeFileSync(
          tarFile,
          craftTar(
            [{ name: 'planted.sh', type: '0', data: '#!/bin/sh\necho pwned\n', mode: 0o755 }],
            fs.readFileSync(tarFile),
          ),
        );
        await redigest(dir, null);
      },
      reason: 'bad-signature',
    },
    {
      name: 'a changed page image',
      key: 'forged-pages',
      forge: async (dir) => {
        const b = fs.readFileSync(pagesFile(dir));
        b[Math.floor(b.length / 2)] ^= 0x40;
        fs.writeFileSync(pagesFile(dir), b);
        await redigest(dir, null);
      },
      reason: 'bad-signature',
    },
    {
      name: 'forged and signed by a key this node does not trust',
      key: 'forged-resigned',
      forge: async (dir) => {
        const b = fs.readFileSync(pagesFile(dir));
        b[10] ^= 1;
        fs.writeFileSync(pagesFile(dir), b);
        const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519');
        const keyId = crypto
          .createHash('sha256')
          .update(publicKey.export({ type: 'spki', format: 'der' }))
          .digest('hex')
          .slice(0, 32);
        await redigest(dir, {
          signer: { keyId, key: privateKey, file: 'forger' },
          trusted: new Map(),
          acceptUnsigned: false,
        });
      },
      reason: 'untrusted-signer',
    },
    {
      name: 'forged with the signature file removed',
      key: 'forged-unsigned',
      forge: async (dir) => {
        fs.writeFileSync(
          path.join(dir, 'rootfs-diff.tar'),
          craftTar([{ name: 'planted.sh', type: '0', data: 'x' }], fs.readFileSync(path.join(dir, 'rootfs-diff.tar'))),
        );
        await redigest(dir, null);
        fs.rmSync(path.join(dir, SIGNATURE_FILE));
      },
      reason: 'unsigned',
    },
  ];

  test.each(cases)('$name → fresh start, reason $reason', async ({ key, forge, reason }) => {
    const id = `tr-${key}`;
    const dir = await copyAs(key);
    await forge(dir);
    try {
      await expectFresh(id, await run(id, [`ARCH_CHECKPOINT_ID=${key}`]));
      const e = await theError(id);
      expect(e).toMatchObject({ phase: 'create', reason });
      expect(String(e.err)).toContain(`checkpoint unusable (${reason})`);
    } finally {
      await remove(id);
    }
  });
});

describe("finding 3: a container naming another job's checkpoint", () => {
  test('same checkpoint name, another image → fresh start, reason identity', async () => {
    const id = 'tr-thief-image';
    await copyAs('victim-image');
    try {
      await expectFresh(id, await run(id, ['ARCH_CHECKPOINT_ID=victim-image'], { image: OTHER_IMAGE }));
      const e = await theError(id);
      expect(e).toMatchObject({ phase: 'create', reason: 'identity' });
      expect(String(e.err)).toMatch(
        /taken from image "localhost\/arch-test\/counter:1@sha256:[0-9a-f]+", this container runs "localhost\/arch-test\/other:1@sha256:/,
      );
    } finally {
      await remove(id);
    }
  });

  test('same checkpoint name and image, another pod namespace → fresh start; the same pod namespace gets it back', async () => {
    const job = 'tr-job';
    await run(job, ['ARCH_CHECKPOINT_ID=pod-job', 'COUNTER_START_FILES=1'], { annotations: { [POD_NS]: 'team-a' } });
    await node.waitCount(job, 5);
    const res = await checkpointContainer(node.ctx, {
      namespace: 'default',
      id: job,
      runcRoot: node.runcRoot('default'),
    });
    await node.containerd.waitStatus(job, 'STOPPED', 15_000);
    await remove(job);
    expect(res.manifest.owner?.podNamespace).toBe('team-a');
    const thief = 'tr-thief-pod';
    try {
      await expectFresh(
        thief,
        await run(thief, ['ARCH_CHECKPOINT_ID=pod-job'], { annotations: { [POD_NS]: 'team-b' } }),
      );
      const e = await theError(thief);
      expect(e).toMatchObject({ phase: 'create', reason: 'identity' });
      expect(String(e.err)).toContain('belongs to pod namespace "team-a", this container is in "team-b"');
    } finally {
      await remove(thief);
    }
    // Nor does a container without any pod namespace take it.
    const bare = 'tr-thief-bare';
    try {
      await expectFresh(bare, await run(bare, ['ARCH_CHECKPOINT_ID=pod-job']));
      expect(await theError(bare)).toMatchObject({ reason: 'identity' });
    } finally {
      await remove(bare);
    }
    // The job itself, created again under a new container id (what Kubernetes does), continues.
    const again = 'tr-job-2';
    try {
      await expectRestored(
        again,
        await run(again, ['ARCH_CHECKPOINT_ID=pod-job'], { annotations: { [POD_NS]: 'team-a' } }),
      );
    } finally {
      await remove(again);
    }
  });
});

describe('finding 8: an archive entry claiming far more than the archive holds is never extracted', () => {
  const CLAIM = 512 * 1024 * 1024;

  /** rootfs-diff.tar replaced by one file entry declaring CLAIM bytes, the archive itself sparse (holes read as zeros). */
  function sparseArchive(dir: string): void {
    const tarFile = path.join(dir, 'rootfs-diff.tar');
    const h = craftTar([{ name: 'big', type: '0' }]).subarray(0, 512);
    h.write(`${CLAIM.toString(8).padStart(11, '0')}\0`, 124, 12, 'ascii');
    h.fill(' ', 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
    fs.writeFileSync(tarFile, h);
    fs.truncateSync(tarFile, 512 + CLAIM + 1024);
  }

  /** Run `id` while watching the node's filesystem: the most its free space dropped, in bytes. */
  async function maxWritten(id: string, env: string[]): Promise<{ out: string; dropped: number }> {
    const free = () => {
      const s = fs.statfsSync(node.dir);
      return s.bavail * s.bsize;
    };
    const before = free();
    let lowest = before;
    const timer = setInterval(() => (lowest = Math.min(lowest, free())), 5);
    try {
      const out = await run(id, env);
      await node.containerd.waitStatus(id, 'RUNNING', 30_000);
      await node.waitCount(id, 2);
      return { out, dropped: before - lowest };
    } finally {
      clearInterval(timer);
    }
  }

  test.each([
    // The store's copy changed, the signed manifest not: the size check fails, and fails first.
    { name: 'manifest untouched (its size check fails)', key: 'sparse-plain', resign: false, reason: 'truncated' },
    // Even signed by a trusted node, the entries may not declare more than the manifest's rootfs.bytes.
    {
      name: 'manifest re-digested and signed by a trusted node',
      key: 'sparse-signed',
      resign: true,
      reason: 'archive-size',
    },
  ])('$name → reason $reason, nothing large written', async ({ key, resign, reason }) => {
    const id = `tr-${key}`;
    const dir = await copyAs(key);
    sparseArchive(dir);
    if (resign) await redigest(dir, trust);
    try {
      const { out, dropped } = await maxWritten(id, [`ARCH_CHECKPOINT_ID=${key}`]);
      await expectFresh(id, out);
      expect(await theError(id)).toMatchObject({ phase: 'create', reason });
      expect(dropped).toBeLessThan(64 * 1024 * 1024);
    } finally {
      await remove(id);
    }
  });
});
