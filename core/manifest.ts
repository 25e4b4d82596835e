import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { CheckpointUnusableError } from './errors.js';

/**
 * The manifest is what makes a checkpoint trustworthy: restore refuses any
 * image whose format it does not know or whose files do not match, byte for
 * byte, what the checkpointing node recorded.
 */
export const FORMAT_VERSION = 1;
export const MANIFEST_FILE = 'manifest.json';

const FileEntry = z.object({
  path: z.string(),
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type FileEntry = z.infer<typeof FileEntry>;

export const ManifestSchema = z.object({
  formatVersion: z.number().int(),
  namespace: z.string(),
  containerId: z.string(),
  image: z.string().optional(),
  node: z.string(),
  createdAt: z.string(),
  mode: z.enum(['local', 'shared']),
  leaveRunning: z.boolean(),
  runtime: z.object({ runc: z.string(), criu: z.string() }),
  timingsMs: z.record(z.number()),
  rootfs: z.object({ files: z.number().int(), bytes: z.number().int(), deletions: z.number().int() }),
  files: z.array(FileEntry),
});
export type Manifest = z.infer<typeof ManifestSchema>;

/** Parse without trusting: newer formats and malformed fields are refused. */
export function parseManifest(text: string): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CheckpointUnusableError('manifest-corrupt', `manifest.json is not JSON: ${(err as Error).message}`);
  }
  const version = (raw as { formatVersion?: unknown } | null)?.formatVersion;
  if (typeof version === 'number' && version > FORMAT_VERSION) {
    throw new CheckpointUnusableError('format-newer', `format version ${version} is newer than this ARCH supports (${FORMAT_VERSION}); upgrade ARCH on this node`);
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    throw new CheckpointUnusableError('manifest-invalid', parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  }
  if (parsed.data.formatVersion !== FORMAT_VERSION) {
    throw new CheckpointUnusableError('format-unknown', `format version ${parsed.data.formatVersion} is not ${FORMAT_VERSION}`);
  }
  for (const f of parsed.data.files) {
    if (path.isAbsolute(f.path) || f.path.split('/').includes('..') || f.path === MANIFEST_FILE) {
      throw new CheckpointUnusableError('manifest-invalid', `file entry "${f.path}" is not a plain relative path`);
    }
  }
  return parsed.data;
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  // 1 MiB reads: fewer syscalls than the 64 KiB default on multi-hundred-MB page images.
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Every regular file below dir (relative paths, sorted), except the manifest itself. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    for (const e of await fsp.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile() && r !== MANIFEST_FILE) out.push(r);
      else if (!e.isFile()) throw new CheckpointUnusableError('unexpected-file', `${r} is not a regular file or directory`);
    }
  }
  await walk('');
  return out.sort();
}

/** Size and digest of every file, hashed a few at a time (large page images dominate). */
export async function describeFiles(dir: string, files: string[]): Promise<FileEntry[]> {
  const entries: FileEntry[] = new Array(files.length);
  let next = 0;
  async function lane(): Promise<void> {
    while (next < files.length) {
      const i = next++;
      const abs = path.join(dir, files[i]!);
      const st = await fsp.stat(abs);
      entries[i] = { path: files[i]!, size: st.size, sha256: await sha256File(abs) };
    }
  }
  await Promise.all([lane(), lane(), lane()]);
  return entries;
}

/**
 * Verify a checkpoint directory against its manifest: exactly the listed
 * files, each with the recorded size and sha256. Throws CheckpointUnusableError.
 */
export async function verifyCheckpointDir(dir: string): Promise<Manifest> {
  let text: string;
  try {
    text = await fsp.readFile(path.join(dir, MANIFEST_FILE), 'utf8');
  } catch {
    throw new CheckpointUnusableError('manifest-missing', `${dir} has no ${MANIFEST_FILE}`);
  }
  const manifest = parseManifest(text);
  const present = await listFiles(dir);
  const listed = manifest.files.map((f) => f.path).sort();
  const extra = present.filter((p) => !listed.includes(p));
  const missing = listed.filter((p) => !present.includes(p));
  if (missing.length) throw new CheckpointUnusableError('truncated', `missing files: ${missing.slice(0, 5).join(', ')}`);
  if (extra.length) throw new CheckpointUnusableError('unexpected-file', `files not in the manifest: ${extra.slice(0, 5).join(', ')}`);
  const actual = await describeFiles(dir, manifest.files.map((f) => f.path));
  for (let i = 0; i < actual.length; i++) {
    const want = manifest.files[i]!;
    const got = actual[i]!;
    if (got.size !== want.size) throw new CheckpointUnusableError('truncated', `${want.path}: ${got.size} bytes, manifest says ${want.size}`);
    if (got.sha256 !== want.sha256) throw new CheckpointUnusableError('corrupt', `${want.path}: sha256 mismatch`);
  }
  return manifest;
}
