import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import * as tar from 'tar';
import type { Containerd } from '../../core/containerd.js';

/**
 * Test images built from nothing but Debian packages (no registry here):
 * a rootfs of busybox-static plus the static `counter` program, packed as an
 * OCI image archive that `ctr image import` loads. The archive is cached
 * under .test-work/images/<hash of inputs>/ so reruns only import it.
 */

/** Never a real registry host: "localhost/" makes that explicit. */
export const TEST_IMAGE_REF = 'localhost/arch-test/counter:1';

/** What COUNTER_START_FILES does inside the container (see counter.c). */
export const COUNTER_FILES = {
  count: '/state/count',
  starts: '/state/starts',
  memcheck: '/state/memcheck',
  created: '/state/created.txt',
  createdContent: 'created before checkpoint\n',
  nested: '/state/created-dir/nested.txt',
  nestedContent: 'nested file\n',
  /** A hard link to `created`. */
  createdLink: '/state/created-dir/created-link.txt',
  /** In the image; the counter overwrites it. */
  modified: '/etc/to-modify.txt',
  originalContent: 'original\n',
  modifiedContent: 'modified by counter\n',
  /** In the image; the counter deletes it. */
  deleted: '/etc/to-delete.txt',
} as const;

/** Bump when the image layout below changes, to invalidate caches. */
const LAYOUT_VERSION = '1';
const BUSYBOX_APPLETS = [
  'sh',
  'sleep',
  'cat',
  'ls',
  'echo',
  'mkdir',
  'rm',
  'touch',
  'ps',
  'kill',
  'grep',
  'true',
  'false',
  'env',
  'id',
  'stat',
  'wc',
  'head',
  'tail',
  'md5sum',
  'sha256sum',
  'dd',
  'mv',
  'cp',
  'date',
];

/** The repository root: this file is <root>/dist/test/support/images.js. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const COUNTER_SOURCE = path.join(REPO_ROOT, 'test/support/counter.c');

/** Scratch space of the tests (git-ignored). */
export function testWorkDir(...parts: string[]): string {
  return path.join(process.env.ARCH_TEST_WORK ?? path.join(REPO_ROOT, '.test-work'), ...parts);
}

function sha256(data: Buffer | string): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

function findBusybox(): string {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) if (fs.existsSync(p)) return p;
  throw new Error('busybox not found: apt-get install busybox-static');
}

/** Compile counter.c statically. */
export async function buildCounter(outFile: string): Promise<void> {
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  await execa('gcc', ['-static', '-O2', '-Wall', '-o', outFile, COUNTER_SOURCE]);
}

/** Lay out the rootfs directory (busybox, counter, /etc files, mount points). */
export async function buildRootfs(dir: string): Promise<void> {
  fs.rmSync(dir, { recursive: true, force: true });
  for (const d of ['bin', 'usr/bin', 'etc', 'state', 'proc', 'sys', 'dev', 'run', 'root', 'var']) {
    fs.mkdirSync(path.join(dir, d), { recursive: true, mode: 0o755 });
  }
  fs.mkdirSync(path.join(dir, 'tmp'));
  fs.chmodSync(path.join(dir, 'tmp'), 0o1777);
  // A static busybox needs no libraries; applets are symlinks to it.
  fs.copyFileSync(findBusybox(), path.join(dir, 'bin/busybox'));
  fs.chmodSync(path.join(dir, 'bin/busybox'), 0o755);
  for (const a of BUSYBOX_APPLETS) fs.symlinkSync('busybox', path.join(dir, 'bin', a));
  await buildCounter(path.join(dir, 'usr/bin/counter'));
  const etc = (f: string, s: string): void => fs.writeFileSync(path.join(dir, 'etc', f), s);
  etc('passwd', 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  etc('group', 'root:x:0:\nnogroup:x:65534:\n');
  etc('hostname', 'arch-test\n');
  etc(path.basename(COUNTER_FILES.modified), COUNTER_FILES.originalContent);
  etc(path.basename(COUNTER_FILES.deleted), 'this file is deleted by the counter\n');
}

interface Blob {
  digest: string;
  size: number;
}

function writeBlob(ociDir: string, data: Buffer | string): Blob {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const hex = sha256(buf);
  fs.writeFileSync(path.join(ociDir, 'blobs/sha256', hex), buf);
  return { digest: `sha256:${hex}`, size: buf.length };
}

/**
 * Pack a rootfs into an OCI image archive (a tar of an oci-layout
 * directory) with a single gzip layer. Cmd defaults to ["/usr/bin/counter"].
 */
export async function writeOciArchive(
  rootfs: string,
  ref: string,
  archive: string,
  cmd: string[] = ['/usr/bin/counter'],
): Promise<string> {
  const work = `${archive}.dir`;
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(path.join(work, 'blobs/sha256'), { recursive: true });

  // Layer: files relative to the rootfs, fixed mtime so the digest only
  // changes when the content does.
  const layerTar = await streamToBuffer(
    tar.c({ cwd: rootfs, mtime: new Date(0), noDirRecurse: false }, fs.readdirSync(rootfs).sort()),
  );
  const diffId = `sha256:${sha256(layerTar)}`;
  const layer = writeBlob(work, zlib.gzipSync(layerTar, { level: 6 }));

  const config = writeBlob(
    work,
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: cmd, Env: ['PATH=/usr/bin:/bin'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: [diffId] },
      history: [{ created_by: 'ARCH test/support/images.ts' }],
    }),
  );
  const manifest = writeBlob(
    work,
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }],
    }),
  );
  fs.writeFileSync(path.join(work, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  fs.writeFileSync(
    path.join(work, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          ...manifest,
          platform: { architecture: 'amd64', os: 'linux' },
          // ctr keeps a full reference in ref.name as the image name.
          annotations: { 'org.opencontainers.image.ref.name': ref, 'io.containerd.image.name': ref },
        },
      ],
    }),
  );
  await tar.c({ cwd: work, file: archive, mtime: new Date(0) }, ['oci-layout', 'index.json', 'blobs']);
  fs.rmSync(work, { recursive: true, force: true });
  return manifest.digest;
}

async function streamToBuffer(stream: AsyncIterable<Buffer | string>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(chunks);
}

export interface TestImageArchive {
  archive: string;
  /** Digest of the image manifest: what `ctr images ls` shows for the ref. */
  digest: string;
}

/** An image archive built once per set of inputs: what `ensureImage` imports. */
export interface ImageRecipe {
  ref: string;
  /** Everything the archive depends on (sources, sizes, layout versions): the cache key. */
  inputs: (string | number)[];
  /** Lay out the rootfs directory (it exists and is empty). */
  buildRootfs(dir: string): Promise<void>;
  cmd: string[];
}

const COUNTER_IMAGE: ImageRecipe = {
  ref: TEST_IMAGE_REF,
  get inputs() {
    return [fs.readFileSync(COUNTER_SOURCE, 'utf8'), LAYOUT_VERSION, TEST_IMAGE_REF, fs.statSync(findBusybox()).size];
  },
  buildRootfs,
  cmd: ['/usr/bin/counter'],
};

export const PAUSE_IMAGE_REF = 'localhost/arch-test/pause:1';
export const PAUSE_SOURCE = path.join(REPO_ROOT, 'test/support/pause.c');

/** The CRI tests' sandbox image: only a static pause (pause.c) that reaps its pod's zombies. */
export const PAUSE_IMAGE: ImageRecipe = {
  ref: PAUSE_IMAGE_REF,
  get inputs() {
    return [fs.readFileSync(PAUSE_SOURCE, 'utf8'), PAUSE_IMAGE_REF];
  },
  async buildRootfs(dir) {
    for (const d of ['proc', 'sys', 'dev', 'etc']) fs.mkdirSync(path.join(dir, d), { mode: 0o755 });
    await execa('gcc', ['-static', '-O2', '-Wall', '-o', path.join(dir, 'pause'), PAUSE_SOURCE]);
  },
  cmd: ['/pause'],
};

/** A sandbox image whose PID 1 is `sleep`: it never reaps its pod's zombies (the counter image's files). */
export const SLEEP_SANDBOX_IMAGE: ImageRecipe = {
  ref: 'localhost/arch-test/sleep-sandbox:1',
  get inputs() {
    return [...COUNTER_IMAGE.inputs, 'sleep-sandbox'];
  },
  buildRootfs,
  cmd: ['/bin/sleep', '2000000000'],
};

/**
 * Build (or reuse) an image archive, cached under .test-work/images/<hash of
 * the recipe's inputs>/; the finished directory is renamed into place so
 * concurrent builders are safe. One build per recipe per process at a time
 * (callers in one Promise.all share it); other processes race by rename.
 */
const building = new Map<string, Promise<TestImageArchive>>();

export function buildImageArchive(recipe: ImageRecipe): Promise<TestImageArchive> {
  let b = building.get(recipe.ref);
  if (!b) {
    b = buildOnce(recipe).finally(() => building.delete(recipe.ref));
    building.set(recipe.ref, b);
  }
  return b;
}

/** The counter image archive. */
export function buildTestImageArchive(): Promise<TestImageArchive> {
  return buildImageArchive(COUNTER_IMAGE);
}

async function buildOnce(recipe: ImageRecipe): Promise<TestImageArchive> {
  const key = sha256([...recipe.inputs, recipe.cmd.join(' ')].join('\0')).slice(0, 16);
  const dir = testWorkDir('images', key);
  const archive = path.join(dir, 'image-oci.tar');
  const digestFile = path.join(dir, 'manifest-digest');
  if (fs.existsSync(digestFile)) return { archive, digest: fs.readFileSync(digestFile, 'utf8').trim() };
  const tmp = `${dir}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(path.join(tmp, 'rootfs'), { recursive: true });
  await recipe.buildRootfs(path.join(tmp, 'rootfs'));
  const digest = await writeOciArchive(
    path.join(tmp, 'rootfs'),
    recipe.ref,
    path.join(tmp, 'image-oci.tar'),
    recipe.cmd,
  );
  // Written last: its presence marks a complete cache entry.
  fs.writeFileSync(path.join(tmp, 'manifest-digest'), `${digest}\n`);
  fs.rmSync(path.join(tmp, 'rootfs'), { recursive: true, force: true });
  try {
    fs.renameSync(tmp, dir);
  } catch (err) {
    // Another process won the race: use its archive.
    fs.rmSync(tmp, { recursive: true, force: true });
    if (!fs.existsSync(digestFile)) throw err;
  }
  return { archive, digest: fs.readFileSync(digestFile, 'utf8').trim() };
}

/**
 * Make sure `containerd` has the recipe's current image; returns its ref.
 * An image of the same ref but another digest (older sources) is replaced.
 */
export async function ensureImage(containerd: Containerd, recipe: ImageRecipe): Promise<string> {
  const { archive, digest } = await buildImageArchive(recipe);
  // `ctr images ls` columns: REF TYPE DIGEST ...
  const listed = (await containerd.ctr(['images', 'ls'])).split('\n').some((l) => {
    const cols = l.trim().split(/\s+/);
    return cols[0] === recipe.ref && cols[2] === digest;
  });
  if (listed) return recipe.ref;
  const refs = await containerd.importImage(archive);
  if (!refs.includes(recipe.ref) && !(await containerd.hasImage(recipe.ref))) {
    throw new Error(`importing the test image gave ${JSON.stringify(refs)}, not ${recipe.ref}`);
  }
  return recipe.ref;
}

/** Make sure `containerd` has the current counter image; returns its ref. */
export function ensureTestImage(containerd: Containerd): Promise<string> {
  return ensureImage(containerd, COUNTER_IMAGE);
}
