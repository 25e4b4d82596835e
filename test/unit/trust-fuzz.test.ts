import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CheckpointUnusableError } from '../../contract/errors.js';
import {
  describeFiles,
  FORMAT_VERSION,
  listFiles,
  verifyCheckpointDirStaged,
  type Manifest,
} from '../../core/manifest.js';
import { applyDiff, captureDiff } from '../../core/rootfs-diff.js';
import { keyIdOf, signManifest, type Trust } from '../../core/trust.js';
import { craftTar, type TarEntry } from '../support/crafted-tar.js';
import { PAGE_IMAGE_PATH, SIGNATURE_FILE } from '../../core/checkpoint-layout.js';

/**
 * A bounded fuzz of what a restore reads from the store before anything
 * runs: the manifest, its signature, the writable-layer archive and the
 * deletions list, mutated a few thousand times from one valid checkpoint
 * (fixed seed: a failure replays). Half the mutations are re-digested and
 * re-signed with the trusted key, so they get past the signature to the
 * readers behind it. Every input must either verify and apply inside the
 * target directory, or be refused with CheckpointUnusableError; nothing may
 * be written anywhere else.
 */
const CASES = 2000;
const SEED = 0x10a5c0de;

let tmp: string;
let base: string;
let outside: string;
let trust: Trust;
const originals = new Map<string, Buffer>();

/** mulberry32: small, fast, deterministic. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-fuzz-'));
  base = path.join(tmp, 'ckpt');
  outside = path.join(tmp, 'outside');
  fs.mkdirSync(outside);
  const { privateKey } = crypto.generateKeyPairSync('ed25519');
  const pub = crypto.createPublicKey(privateKey);
  trust = {
    signer: { keyId: keyIdOf(pub), key: privateKey, file: 'fuzz' },
    trusted: new Map([[keyIdOf(pub), { key: pub, source: 'fuzz' }]]),
    acceptUnsigned: false,
  };
  // A small but varied writable layer: files, a directory, a symlink, a hard link.
  const layer = path.join(tmp, 'layer');
  fs.mkdirSync(path.join(layer, 'etc/app'), { recursive: true });
  fs.writeFileSync(path.join(layer, 'etc/app/conf'), 'a=1\n');
  fs.writeFileSync(path.join(layer, 'data.bin'), crypto.randomBytes(3000));
  fs.symlinkSync('/etc/app/conf', path.join(layer, 'etc/link'));
  fs.linkSync(path.join(layer, 'data.bin'), path.join(layer, 'hard.bin'));
  fs.mkdirSync(path.join(base, 'criu'), { recursive: true });
  const diff = await captureDiff(layer, base);
  // No deletions in the base (each applied one costs a shell); the deleted.files mutations add them.
  fs.writeFileSync(path.join(base, 'deleted.files'), JSON.stringify({ whiteouts: [], opaque: [] }));
  fs.writeFileSync(path.join(base, 'criu/pages-1.img'), crypto.randomBytes(8192));
  fs.writeFileSync(path.join(base, 'criu/core-1.img'), crypto.randomBytes(300));
  const m: Manifest = {
    formatVersion: FORMAT_VERSION,
    namespace: 'default',
    containerId: 'fuzz',
    owner: { podNamespace: null, image: 'img@sha256:00' },
    node: 'n',
    createdAt: '2026-12-03T00:00:00.000Z',
    mode: 'local',
    leaveRunning: false,
    runtime: { runc: 'r', criu: 'c' },
    timingsMs: {},
    rootfs: { files: diff.files, bytes: diff.bytes, deletions: 0 },
    files: await describeFiles(base, await listFiles(base)),
  };
  writeSigned(base, m);
  for (const f of [...(await listFiles(base)), 'manifest.json', SIGNATURE_FILE])
    originals.set(f, fs.readFileSync(path.join(base, f)));
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function writeSigned(dir: string, m: Manifest | string): void {
  const bytes = Buffer.from(typeof m === 'string' ? m : JSON.stringify(m, null, 1));
  fs.writeFileSync(path.join(dir, 'manifest.json'), bytes);
  fs.writeFileSync(path.join(dir, SIGNATURE_FILE), signManifest(bytes, trust)!);
}

/** Recompute every size and digest and sign again (a trusted node that wrote this input). */
async function resign(dir: string): Promise<void> {
  let m: Manifest;
  try {
    m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
  } catch {
    return;
  }
  if (!m || !Array.isArray(m.files)) return;
  const present = await listFiles(dir).catch(() => [] as string[]);
  writeSigned(dir, { ...m, files: await describeFiles(dir, present) });
}

function mutateBytes(b: Buffer, r: () => number, within = b.length): Buffer {
  const out = Buffer.from(b);
  const n = 1 + Math.floor(r() * 4);
  for (let i = 0; i < n; i++) {
    const at = Math.floor(r() * Math.min(within, out.length));
    switch (Math.floor(r() * 3)) {
      case 0:
        out[at] = Math.floor(r() * 256);
        break;
      case 1:
        out[at] = out[at]! ^ (1 << Math.floor(r() * 8));
        break;
      default:
        out[at] = '0123456789/.{}":,-'.charCodeAt(Math.floor(r() * 18));
    }
  }
  return r() < 0.1 ? out.subarray(0, Math.floor(r() * out.length)) : out;
}

const HOSTILE: TarEntry[][] = [
  [{ name: '../escape', type: '0', data: 'x' }],
  [{ name: '/tmp/abs-escape', type: '0', data: 'x' }],
  [
    { name: 'l', type: '2', link: '..' },
    { name: 'l/escape', type: '0', data: 'x' },
  ],
  [{ name: 'h', type: '1', link: '/etc/passwd' }],
  [{ name: 'dev', type: '3', dev: [1, 1] }],
  [{ name: 'fifo', type: '6' }],
  [{ name: 'etc', type: '2', link: '/' }],
  [{ name: 'data.bin', type: '0', data: 'again' }],
];

/** One mutated copy of the checkpoint in `dir`; returns what was done (for a failure message). */
async function mutate(dir: string, r: () => number): Promise<string> {
  for (const [f, b] of originals) fs.writeFileSync(path.join(dir, f), b);
  const resigned = r() < 0.5;
  let what: string;
  switch (Math.floor(r() * 6)) {
    case 0: {
      fs.writeFileSync(path.join(dir, 'manifest.json'), mutateBytes(originals.get('manifest.json')!, r));
      what = 'manifest bytes';
      break;
    }
    case 1: {
      const m = JSON.parse(originals.get('manifest.json')!.toString()) as Record<string, unknown>;
      const keys = [...Object.keys(m), 'files.0.path', 'rootfs.bytes', 'owner.image', 'formatVersion'];
      const k = keys[Math.floor(r() * keys.length)]!;
      const values: unknown[] = [
        null,
        -1,
        2 ** 53,
        'x',
        '../../etc',
        '/abs',
        [],
        {},
        true,
        1e308,
        'manifest.json',
        SIGNATURE_FILE,
      ];
      const v = values[Math.floor(r() * values.length)];
      const parts = k.split('.');
      let o = m as Record<string, unknown>;
      for (const p of parts.slice(0, -1)) o = (o[p] ?? {}) as Record<string, unknown>;
      o[parts[parts.length - 1]!] = v;
      fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(m));
      what = `manifest field ${k}=${JSON.stringify(v)}`;
      break;
    }
    case 2: {
      const choices = [
        mutateBytes(originals.get(SIGNATURE_FILE)!, r),
        Buffer.from('{}'),
        Buffer.alloc(0),
        Buffer.from('{"format":1,"alg":"ed25519","keyId":"00","signature":"AAAA"}'),
      ];
      fs.writeFileSync(path.join(dir, SIGNATURE_FILE), choices[Math.floor(r() * choices.length)]!);
      what = 'signature';
      break;
    }
    case 3: {
      const t = originals.get('rootfs-diff.tar')!;
      // Mostly headers: that is where the archive reader decides.
      fs.writeFileSync(path.join(dir, 'rootfs-diff.tar'), mutateBytes(t, r, r() < 0.8 ? 2048 : t.length));
      what = 'archive bytes';
      break;
    }
    case 4: {
      const h = HOSTILE[Math.floor(r() * HOSTILE.length)]!;
      fs.writeFileSync(path.join(dir, 'rootfs-diff.tar'), craftTar(h, originals.get('rootfs-diff.tar')!));
      what = `archive entries ${h.map((e) => e.name).join(',')}`;
      break;
    }
    default: {
      const paths = ['../x', '/abs', 'a/../../b', 'etc/link/x', '', '.', 'ok/path', 7, null];
      const pick = () => paths[Math.floor(r() * paths.length)];
      const d =
        r() < 0.2
          ? mutateBytes(originals.get('deleted.files')!, r).toString()
          : JSON.stringify({ whiteouts: [pick()], opaque: [pick()] });
      fs.writeFileSync(path.join(dir, 'deleted.files'), d);
      what = `deleted.files ${d}`;
      break;
    }
  }
  if (resigned) await resign(dir);
  return `${what}${resigned ? ' (re-signed)' : ''}`;
}

test(`${CASES} mutated checkpoints: each verifies and applies inside the target, or is refused with CheckpointUnusableError`, async () => {
  const r = rng(SEED);
  const dir = path.join(tmp, 'case');
  const upper = path.join(tmp, 'upper');
  fs.cpSync(base, dir, { recursive: true });
  const outcomes = new Map<string, number>();
  const t0 = Date.now();
  for (let i = 0; i < CASES; i++) {
    fs.rmSync(upper, { recursive: true, force: true });
    fs.mkdirSync(upper);
    const what = await mutate(dir, r);
    let outcome = 'applied';
    try {
      const v = await verifyCheckpointDirStaged(dir, { trust, defer: PAGE_IMAGE_PATH });
      await v.verifyDeferred();
      await applyDiff(dir, upper, v.manifest.rootfs.bytes);
    } catch (err) {
      if (!(err instanceof CheckpointUnusableError)) throw new Error(`case ${i} (${what}): ${(err as Error).stack}`);
      outcome = err.reason;
    }
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    // Nothing outside the target: the sibling directories are what they were.
    expect({ i, what, outside: fs.readdirSync(outside) }).toEqual({ i, what, outside: [] });
    expect({ i, what, tmp: fs.readdirSync(tmp).sort() }).toEqual({
      i,
      what,
      tmp: ['case', 'ckpt', 'layer', 'outside', 'upper'],
    });
    expect(fs.existsSync('/tmp/abs-escape') || fs.existsSync(path.join(tmp, 'escape'))).toBe(false);
  }
  const ms = Date.now() - t0;
  process.stdout.write(
    `fuzz: ${CASES} cases in ${ms} ms: ${JSON.stringify(Object.fromEntries([...outcomes].sort((a, b) => b[1] - a[1])))}\n`,
  );
  // The mutations reach past the signature to the readers behind it.
  expect(outcomes.get('bad-signature')).toBeGreaterThan(0);
  expect(
    (outcomes.get('archive-escape') ?? 0) +
      (outcomes.get('archive-entry') ?? 0) +
      (outcomes.get('archive-invalid') ?? 0),
  ).toBeGreaterThan(0);
  expect(outcomes.get('applied')).toBeGreaterThan(0);
});
