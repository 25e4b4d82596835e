import { execa } from 'execa';
import fs from 'node:fs';
import path from 'node:path';
import { digestFiles } from '../../core/digest.js';
import type { Manifest } from '../../core/manifest.js';
import { signManifest, type Trust } from '../../core/trust.js';
import type { ArchTestNode } from './arch-node.js';
import { waitFor } from './arch-node.js';
import { COUNTER_FILES } from './images.js';
import { MANIFEST_FILE, SIGNATURE_FILE } from '../../core/checkpoint-layout.js';

/**
 * What the tests of checkpoints from the store do with them: copy a seed
 * checkpoint under another name, rewrite its manifest (re-signed by a given
 * key, as a trusted node or a forger with a key would, or left with its old
 * signature), recompute every size and sha256 as someone who can write the
 * store would, and check that a container was restored from it.
 */
export function readManifest(dir: string): Manifest {
  return JSON.parse(fs.readFileSync(path.join(dir, MANIFEST_FILE), 'utf8')) as Manifest;
}

/** Write the manifest; signed with `key`, or left with its old signature (null). */
export function writeManifest(dir: string, m: Manifest, key: Trust | null): void {
  const bytes = Buffer.from(JSON.stringify(m, null, 1));
  fs.writeFileSync(path.join(dir, MANIFEST_FILE), bytes);
  if (key) fs.writeFileSync(path.join(dir, SIGNATURE_FILE), signManifest(bytes, key)!);
}

/** Recompute every size and sha256 in manifest.json (and apply `patch`), then write it as writeManifest does. */
export async function redigest(dir: string, key: Trust | null, patch: Partial<Manifest> = {}): Promise<void> {
  const m = readManifest(dir);
  const files = await Promise.all(
    m.files.map(async (f) => ({ path: f.path, ...(await digestFiles([path.join(dir, f.path)]))[0]! })),
  );
  writeManifest(dir, { ...m, files, ...patch }, key);
}

/** The seed checkpoint published again under checkpoint name `name` in `ckRoot`/default, signed with `key` (a legitimate copy). */
export async function publishCopy(o: {
  ckRoot: string;
  seedDir: string;
  name: string;
  key: Trust;
  dirName?: string;
}): Promise<string> {
  const cdir = path.join(o.ckRoot, 'default', o.name);
  fs.mkdirSync(cdir, { recursive: true });
  const dir = path.join(cdir, o.dirName ?? path.basename(o.seedDir));
  await execa('cp', ['-a', o.seedDir, dir]);
  fs.symlinkSync(path.basename(dir), path.join(cdir, 'current'));
  writeManifest(dir, { ...readManifest(dir), checkpointId: o.name }, o.key);
  return dir;
}

/** The error lines a node logged for a container. */
export function errorsOf(node: ArchTestNode, id: string): Record<string, unknown>[] {
  return node.logLines().filter((l) => l.container === id && (l.level as number) >= 50);
}

/** Running, counting on from the checkpoint (never "count 1"), its files back, nothing logged as an error. */
export async function expectRestored(node: ArchTestNode, id: string, out: string): Promise<void> {
  await node.containerd.waitStatus(id, 'RUNNING', 15_000);
  await waitFor('restored output', () => (/count \d+\n/.test(fs.readFileSync(out, 'utf8')) ? true : undefined));
  expect(fs.readFileSync(out, 'utf8')).not.toMatch(/(^|\n)count 1\n/);
  expect(node.readContainerFile(id, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
  expect(errorsOf(node, id)).toEqual([]);
}

/**
 * Damage a checkpoint as a bad disk or a store writer without the key would:
 * one byte flipped (by `mask`) in the middle of its first page image
 * (<ckDir>/criu/pages-N.img), which only the page check during CRIU's
 * restore finds.
 */
export function damagePageImage(ckDir: string, mask = 0x40): void {
  const criu = path.join(ckDir, 'criu');
  const file = path.join(
    criu,
    fs.readdirSync(criu).find((n) => /^pages-\d+\.img$/.test(n))!,
  );
  const bytes = fs.readFileSync(file);
  bytes[bytes.length >> 1] ^= mask;
  fs.writeFileSync(file, bytes);
}

/** Every file under `dir` whose bytes contain `bytes` as they are (what a copy of the store would show). */
export function filesHolding(dir: string, bytes: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && fs.readFileSync(path.join(e.parentPath, e.name)).includes(bytes))
    .map((e) => path.join(e.parentPath, e.name));
}
