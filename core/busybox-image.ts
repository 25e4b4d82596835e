import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import * as tar from 'tar';
import type { Containerd } from './containerd.js';

/**
 * Container images made on this host, without any registry: a rootfs of the
 * host's static busybox (Debian's busybox-static, which install.sh
 * installs) plus a few files, packed as an OCI image archive that
 * `ctr image import` loads. `arch-cli demo` builds its counter image this
 * way, and the tests build theirs (test/support/images.ts).
 */

export function findBusybox(): string {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) if (fs.existsSync(p)) return p;
  throw new Error('busybox not found. Fix: apt-get install busybox-static (install.sh does)');
}

export interface RootfsFile {
  content: string;
  mode?: number;
}

/**
 * Lay out a rootfs directory: busybox with the given applets as symlinks in
 * /bin (a static busybox needs no libraries), the usual mount points, a
 * root user, and `files` (absolute paths in the container).
 */
export function layoutBusyboxRootfs(
  dir: string,
  o: { applets: string[]; hostname: string; files?: Record<string, RootfsFile> },
): void {
  fs.rmSync(dir, { recursive: true, force: true });
  for (const d of ['bin', 'usr/bin', 'etc', 'state', 'proc', 'sys', 'dev', 'run', 'root', 'var']) {
    fs.mkdirSync(path.join(dir, d), { recursive: true, mode: 0o755 });
  }
  fs.mkdirSync(path.join(dir, 'tmp'));
  fs.chmodSync(path.join(dir, 'tmp'), 0o1777);
  fs.copyFileSync(findBusybox(), path.join(dir, 'bin/busybox'));
  fs.chmodSync(path.join(dir, 'bin/busybox'), 0o755);
  for (const a of o.applets) fs.symlinkSync('busybox', path.join(dir, 'bin', a));
  const files: Record<string, RootfsFile> = {
    '/etc/passwd': { content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
    '/etc/group': { content: 'root:x:0:\nnogroup:x:65534:\n' },
    '/etc/hostname': { content: `${o.hostname}\n` },
    ...o.files,
  };
  for (const [p, f] of Object.entries(files)) {
    const target = path.join(dir, p);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, f.content);
    fs.chmodSync(target, f.mode ?? 0o644);
  }
}

function sha256(data: Buffer | string): string {
  return crypto.createHash('sha256').update(data).digest('hex');
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

async function streamToBuffer(stream: AsyncIterable<Buffer | string>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(chunks);
}

export interface ImageConfig {
  cmd: string[];
  env?: string[];
  /** The image history's created_by: who built it. */
  createdBy: string;
}

/**
 * Pack a rootfs into an OCI image archive (a tar of an oci-layout
 * directory) with a single gzip layer; returns the manifest's digest.
 */
export async function writeOciArchive(rootfs: string, ref: string, archive: string, c: ImageConfig): Promise<string> {
  const work = `${archive}.dir`;
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(path.join(work, 'blobs/sha256'), { recursive: true });

  // Fixed mtime so the digest only changes when the content does.
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
      config: { Cmd: c.cmd, Env: c.env ?? ['PATH=/usr/bin:/bin'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: [diffId] },
      history: [{ created_by: c.createdBy }],
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

export interface ImageArchive {
  ref: string;
  archive: string;
  /** Digest of the image manifest: what `ctr images ls` shows for the ref. */
  digest: string;
}

/**
 * Build an image archive once per cache key: in cacheDir/<key>/, built in a
 * temporary directory and renamed into place, so concurrent builders (two
 * processes) are safe and an interrupted build leaves no half entry.
 * `layout` fills a rootfs directory.
 */
export async function cachedImageArchive(o: {
  cacheDir: string;
  /** Everything the image depends on (sources, layout version...): hashed with busybox's size into the key. */
  inputs: string[];
  ref: string;
  config: ImageConfig;
  layout: (rootfs: string) => Promise<void> | void;
}): Promise<ImageArchive> {
  const key = sha256([...o.inputs, o.ref, JSON.stringify(o.config), fs.statSync(findBusybox()).size].join('\0')).slice(
    0,
    16,
  );
  const dir = path.join(o.cacheDir, key);
  const archive = path.join(dir, 'image-oci.tar');
  const digestFile = path.join(dir, 'manifest-digest');
  const done = (): ImageArchive => ({ ref: o.ref, archive, digest: fs.readFileSync(digestFile, 'utf8').trim() });
  if (fs.existsSync(digestFile)) return done();
  const tmp = `${dir}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  try {
    await o.layout(path.join(tmp, 'rootfs'));
    const digest = await writeOciArchive(path.join(tmp, 'rootfs'), o.ref, path.join(tmp, 'image-oci.tar'), o.config);
    // Written last: its presence marks a complete cache entry.
    fs.writeFileSync(path.join(tmp, 'manifest-digest'), `${digest}\n`);
    fs.rmSync(path.join(tmp, 'rootfs'), { recursive: true, force: true });
    fs.renameSync(tmp, dir);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    // Another process won the rename race: use its archive.
    if (!fs.existsSync(digestFile)) throw err;
  }
  return done();
}

/**
 * Make sure `containerd` has the image; returns true if it had to import
 * it. An image of the same ref but another digest is replaced.
 */
export async function ensureImage(containerd: Containerd, image: ImageArchive): Promise<boolean> {
  // `ctr images ls` columns: REF TYPE DIGEST ...
  const listed = (await containerd.ctr(['images', 'ls'])).split('\n').some((l) => {
    const cols = l.trim().split(/\s+/);
    return cols[0] === image.ref && cols[2] === image.digest;
  });
  if (listed) return false;
  const refs = await containerd.importImage(image.archive);
  if (!refs.includes(image.ref) && !(await containerd.hasImage(image.ref))) {
    throw new Error(`importing ${image.archive} gave ${JSON.stringify(refs)}, not ${image.ref}`);
  }
  return true;
}
