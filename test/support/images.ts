import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import {
  cachedImageArchive,
  ensureImage,
  layoutBusyboxRootfs,
  type ImageArchive,
  type ImageConfig,
} from '../../core/busybox-image.js';
import type { Containerd } from '../../core/containerd.js';

/**
 * Test images built from nothing but Debian packages (no registry here):
 * a busybox rootfs (core/busybox-image.ts) plus the static `counter`
 * program. The archive is cached under .test-work/images/<hash of inputs>/
 * so reruns only import it.
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

/** Compile counter.c statically. */
export async function buildCounter(outFile: string): Promise<void> {
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  await execa('gcc', ['-static', '-O2', '-Wall', '-o', outFile, COUNTER_SOURCE]);
}

const IMAGE_CONFIG: ImageConfig = {
  cmd: ['/usr/bin/counter'],
  env: ['PATH=/usr/bin:/bin'],
  createdBy: 'ARCH test/support/images.ts',
};

/** Lay out the rootfs directory (busybox, counter, /etc files, mount points). */
export async function buildRootfs(dir: string): Promise<void> {
  layoutBusyboxRootfs(dir, {
    applets: BUSYBOX_APPLETS,
    hostname: 'arch-test',
    files: {
      [COUNTER_FILES.modified]: { content: COUNTER_FILES.originalContent },
      [COUNTER_FILES.deleted]: { content: 'this file is deleted by the counter\n' },
    },
  });
  await buildCounter(path.join(dir, 'usr/bin/counter'));
}

/** One build per process at a time (callers in one Promise.all share it); other processes race by rename. */
let building: Promise<ImageArchive> | undefined;

/** Build (or reuse) the counter image archive; the cache key covers counter.c, busybox and LAYOUT_VERSION. */
export function buildTestImageArchive(): Promise<ImageArchive> {
  building ??= cachedImageArchive({
    cacheDir: testWorkDir('images'),
    inputs: [fs.readFileSync(COUNTER_SOURCE, 'utf8'), LAYOUT_VERSION],
    ref: TEST_IMAGE_REF,
    config: IMAGE_CONFIG,
    layout: buildRootfs,
  }).finally(() => {
    building = undefined;
  });
  return building;
}

/**
 * Make sure `containerd` has the current counter image; returns its ref.
 * An image of the same ref but another digest (older counter.c) is replaced.
 */
export async function ensureTestImage(containerd: Containerd): Promise<string> {
  await ensureImage(containerd, await buildTestImageArchive());
  return TEST_IMAGE_REF;
}
