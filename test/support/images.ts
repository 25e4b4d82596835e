import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import {
  cachedImageArchive,
  ensureImage as importImageIfMissing,
  layoutBusyboxRootfs,
  type ImageArchive,
} from '../../core/busybox-image.js';
import type { Containerd } from '../../core/containerd.js';

/**
 * Test images built from nothing but Debian packages (no registry here):
 * the static `counter` program on a busybox rootfs (core/busybox-image.ts
 * lays it out, packs it and imports it), and the CRI tests' sandboxes. An
 * archive is cached under .test-work/images/<hash of inputs>/ so reruns
 * only import it.
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

/** Compile counter.c statically. */
export async function buildCounter(outFile: string): Promise<void> {
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  await execa('gcc', ['-static', '-O2', '-Wall', '-o', outFile, COUNTER_SOURCE]);
}

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

/** A test image: what `buildImageArchive` builds (once per set of inputs) and `ensureImage` imports. */
export interface ImageRecipe {
  ref: string;
  /** Everything the archive depends on besides busybox (sources, layout versions): the cache key. */
  readonly inputs: string[];
  /** Lay out the rootfs directory (it does not exist yet). */
  buildRootfs(dir: string): Promise<void>;
  cmd: string[];
}

const COUNTER_IMAGE: ImageRecipe = {
  ref: TEST_IMAGE_REF,
  get inputs() {
    return [fs.readFileSync(COUNTER_SOURCE, 'utf8'), LAYOUT_VERSION];
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
    return [fs.readFileSync(PAUSE_SOURCE, 'utf8')];
  },
  async buildRootfs(dir) {
    for (const d of ['proc', 'sys', 'dev', 'etc']) fs.mkdirSync(path.join(dir, d), { recursive: true, mode: 0o755 });
    await execa('gcc', ['-static', '-O2', '-Wall', '-o', path.join(dir, 'pause'), PAUSE_SOURCE]);
  },
  cmd: ['/pause'],
};

/** A sandbox image whose PID 1 is `sleep`: it never reaps its pod's zombies (the counter image's files). */
export const SLEEP_SANDBOX_IMAGE: ImageRecipe = {
  ref: 'localhost/arch-test/sleep-sandbox:1',
  get inputs() {
    return COUNTER_IMAGE.inputs;
  },
  buildRootfs,
  cmd: ['/bin/sleep', '2000000000'],
};

/** One build per recipe per process at a time (callers in one Promise.all share it); other processes race by rename. */
const building = new Map<string, Promise<ImageArchive>>();

/** Build (or reuse) a recipe's image archive; the cache key covers its inputs, ref, config and busybox. */
export function buildImageArchive(recipe: ImageRecipe): Promise<ImageArchive> {
  let b = building.get(recipe.ref);
  if (!b) {
    b = cachedImageArchive({
      cacheDir: testWorkDir('images'),
      inputs: recipe.inputs,
      ref: recipe.ref,
      config: { cmd: recipe.cmd, createdBy: 'ARCH test/support/images.ts' },
      layout: (rootfs) => recipe.buildRootfs(rootfs),
    }).finally(() => building.delete(recipe.ref));
    building.set(recipe.ref, b);
  }
  return b;
}

/** The counter image archive. */
export function buildTestImageArchive(): Promise<ImageArchive> {
  return buildImageArchive(COUNTER_IMAGE);
}

/**
 * Make sure `containerd` has the recipe's current image; returns its ref.
 * An image of the same ref but another digest (older sources) is replaced.
 */
export async function ensureImage(containerd: Containerd, recipe: ImageRecipe): Promise<string> {
  await importImageIfMissing(containerd, await buildImageArchive(recipe));
  return recipe.ref;
}

/** Make sure `containerd` has the current counter image; returns its ref. */
export function ensureTestImage(containerd: Containerd): Promise<string> {
  return ensureImage(containerd, COUNTER_IMAGE);
}

export const PYTHON_JOB_SOURCE = path.join(REPO_ROOT, 'test/support/python-job.py');

/** The host's Debian python3 (never a user's pyenv shim): the binary, its version directory name. */
function hostPython(): { binary: string; version: string } {
  const link = '/usr/bin/python3';
  if (!fs.existsSync(link)) throw new Error('python3 not found. Fix: scripts/install-test-clients.sh python3');
  const binary = fs.realpathSync(link);
  const version = path.basename(binary); // python3.11
  if (!/^python3\.\d+$/.test(version)) throw new Error(`unexpected python3 binary ${binary}`);
  return { binary, version };
}

/** Copy a host file to the same path under rootfs (its content, not a symlink), making parents. */
function copyHostFile(rootfs: string, hostPath: string): void {
  const target = path.join(rootfs, hostPath);
  if (fs.existsSync(target)) return;
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.copyFileSync(fs.realpathSync(hostPath), target);
  fs.chmodSync(target, fs.statSync(hostPath).mode & 0o7777);
}

/** The shared libraries `ldd` names for each of `files` (absolute host paths). */
async function sharedLibraries(files: string[]): Promise<Set<string>> {
  const libs = new Set<string>();
  for (const f of files) {
    const { stdout } = await execa('ldd', [f], { reject: false });
    for (const m of stdout.matchAll(/(\/\S+\.so[^\s]*)/g)) libs.add(m[1]!);
  }
  return libs;
}

/** Parts of the standard library a batch job never imports (tests, GUIs, installers). */
const PYTHON_STDLIB_SKIP = new Set(['test', 'idlelib', 'tkinter', 'turtledemo', 'ensurepip', 'lib2to3', 'pydoc_data']);

/**
 * A Python job image: the host's python3 with its standard library and the
 * libraries they link, on the busybox rootfs, running python-job.py. Real
 * batch jobs are Python more often than anything else: worker pools, queues,
 * threads and shared memory, as the standard library makes them.
 */
export const PYTHON_IMAGE: ImageRecipe = {
  ref: 'localhost/arch-test/python-job:1',
  get inputs() {
    const { binary } = hostPython();
    const st = fs.statSync(binary);
    return [fs.readFileSync(PYTHON_JOB_SOURCE, 'utf8'), binary, String(st.size), String(st.mtimeMs), LAYOUT_VERSION];
  },
  async buildRootfs(dir) {
    const { binary, version } = hostPython();
    layoutBusyboxRootfs(dir, { applets: BUSYBOX_APPLETS, hostname: 'arch-test' });
    const stdlib = `/usr/lib/${version}`;
    fs.cpSync(stdlib, path.join(dir, stdlib), {
      recursive: true,
      dereference: true,
      // A dangling symlink (a configuration file of another package) is left out: copying it would fail.
      filter: (src) => !PYTHON_STDLIB_SKIP.has(path.relative(stdlib, src).split('/')[0]!) && fs.existsSync(src),
    });
    copyHostFile(dir, binary);
    fs.symlinkSync(version, path.join(dir, 'usr/bin/python3'));
    const dynload = path.join(stdlib, 'lib-dynload');
    const modules = fs.readdirSync(dynload).map((f) => path.join(dynload, f));
    for (const lib of await sharedLibraries([binary, ...modules])) copyHostFile(dir, lib);
    fs.copyFileSync(PYTHON_JOB_SOURCE, path.join(dir, 'job.py'));
  },
  cmd: ['/usr/bin/python3', '-u', '/job.py'],
};

/** node-job.ts as tsc compiled it: the file a Node job image runs. */
export const NODE_JOB_SCRIPT = path.join(REPO_ROOT, 'dist/test/support/node-job.js');

/**
 * A Node.js job image: the host's node (one binary; ICU built in) and the
 * libraries it links, on the busybox rootfs, running node-job.ts. Node is
 * what many data pipelines, scrapers and queue consumers are written in, and
 * libuv's event loop (epoll, eventfds, a signal pipe, a thread pool) is none
 * of the Python job's.
 */
export const NODE_IMAGE: ImageRecipe = {
  ref: 'localhost/arch-test/node-job:1',
  get inputs() {
    const binary = fs.realpathSync(process.execPath);
    const st = fs.statSync(binary);
    return [fs.readFileSync(NODE_JOB_SCRIPT, 'utf8'), binary, String(st.size), String(st.mtimeMs), LAYOUT_VERSION];
  },
  async buildRootfs(dir) {
    const binary = fs.realpathSync(process.execPath);
    layoutBusyboxRootfs(dir, { applets: BUSYBOX_APPLETS, hostname: 'arch-test' });
    fs.mkdirSync(path.join(dir, 'usr/bin'), { recursive: true });
    fs.copyFileSync(binary, path.join(dir, 'usr/bin/node'));
    fs.chmodSync(path.join(dir, 'usr/bin/node'), 0o755);
    const libs = await sharedLibraries([binary]);
    for (const lib of libs) copyHostFile(dir, lib);
    // Debian's node (libnode) loads some of its own builtins from /usr/share/nodejs (cjs-module-lexer, acorn,
    // undici): the files its libraries name, where the host has them. A self-contained node names none.
    for (const f of [binary, ...libs])
      for (const m of fs
        .readFileSync(f)
        .toString('latin1')
        .matchAll(/\/usr\/share\/nodejs\/[\w./@-]+\.[cm]?js/g))
        if (fs.existsSync(m[0])) copyHostFile(dir, m[0]);
    // .mjs: an ES module without a package.json beside it.
    fs.copyFileSync(NODE_JOB_SCRIPT, path.join(dir, 'job.mjs'));
  },
  cmd: ['/usr/bin/node', '/job.mjs'],
};

/** The first `name` in this process's PATH (absolute directories only). */
function onPath(name: string): string | undefined {
  const dirs = (process.env.PATH ?? '').split(':').filter((d) => path.isAbsolute(d));
  return dirs.map((d) => path.join(d, name)).find((f) => fs.existsSync(f));
}

export const GO_JOB_SOURCE = path.join(REPO_ROOT, 'test/support/go-job.go');

/** The Go toolchain install.sh uses (it builds the Temporal CLI with it), or the one on PATH. */
function hostGo(): string {
  const go = fs.existsSync('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : onPath('go');
  if (go) return go;
  throw new Error('go not found. Fix: ./install.sh (it installs golang-go where no Go is present)');
}

/**
 * A Go job image: go-job.go built static on the busybox rootfs. Go's runtime
 * brings its own scheduler threads, signal-based preemption and network
 * poller, none of which the Python and Node jobs have.
 */
export const GO_IMAGE: ImageRecipe = {
  ref: 'localhost/arch-test/go-job:1',
  get inputs() {
    return [fs.readFileSync(GO_JOB_SOURCE, 'utf8'), hostGo(), LAYOUT_VERSION];
  },
  async buildRootfs(dir) {
    layoutBusyboxRootfs(dir, { applets: BUSYBOX_APPLETS, hostname: 'arch-test' });
    await execa(hostGo(), ['build', '-o', path.join(dir, 'job'), GO_JOB_SOURCE], {
      env: { CGO_ENABLED: '0', GOTOOLCHAIN: 'local' },
    });
  },
  cmd: ['/job'],
};

export const JAVA_JOB_SOURCE = path.join(REPO_ROOT, 'test/support/java-job/Job.java');

/** The host's JDK (Debian's default-jdk-headless): its home, found from javac on PATH. */
function hostJdk(): string {
  const javac = onPath('javac');
  if (!javac) throw new Error('javac not found. Fix: scripts/install-test-clients.sh java');
  const home = path.dirname(path.dirname(fs.realpathSync(javac)));
  if (!fs.existsSync(path.join(home, 'bin/jlink'))) throw new Error(`no jlink in ${home}: a JDK is needed, not a JRE`);
  return home;
}

/**
 * A Java job image: Job.java compiled by the host's javac, on a runtime that
 * jlink makes from the host's JDK (java.base only), on the busybox rootfs.
 * The JVM brings what no other job here has: JIT-compiled code, a moving
 * garbage collector and its threads, safepoints, a perf data file mapped in
 * /tmp, and children started through jspawnhelper.
 */
export const JAVA_IMAGE: ImageRecipe = {
  ref: 'localhost/arch-test/java-job:1',
  get inputs() {
    const home = hostJdk();
    const st = fs.statSync(path.join(home, 'lib/server/libjvm.so'));
    return [fs.readFileSync(JAVA_JOB_SOURCE, 'utf8'), home, String(st.size), String(st.mtimeMs), LAYOUT_VERSION];
  },
  async buildRootfs(dir) {
    const home = hostJdk();
    layoutBusyboxRootfs(dir, { applets: BUSYBOX_APPLETS, hostname: 'arch-test' });
    const runtime = path.join(dir, 'opt/java');
    fs.mkdirSync(path.dirname(runtime), { recursive: true });
    await execa(path.join(home, 'bin/jlink'), [
      '--add-modules',
      'java.base',
      '--strip-debug',
      '--no-man-pages',
      '--no-header-files',
      '--output',
      runtime,
    ]);
    await execa(path.join(home, 'bin/javac'), ['-d', path.join(dir, 'app'), JAVA_JOB_SOURCE]);
    // The host libraries the runtime links (its own, under the rootfs, are there already).
    const natives = [path.join(runtime, 'bin/java'), path.join(runtime, 'lib/jspawnhelper')];
    for (const d of [path.join(runtime, 'lib'), path.join(runtime, 'lib/server')])
      for (const f of fs.readdirSync(d)) if (f.endsWith('.so')) natives.push(path.join(d, f));
    for (const lib of await sharedLibraries(natives)) if (!lib.startsWith(`${dir}/`)) copyHostFile(dir, lib);
  },
  cmd: ['/opt/java/bin/java', '-Xmx384m', '-cp', '/app', 'Job'],
};

const PG_JOB_SCRIPT = path.join(REPO_ROOT, 'test/support/pg-job.sh');

/** The host's PostgreSQL server (Debian's postgresql-NN, the newest there): its bin, lib and share directories. */
function hostPostgres(): { bin: string; lib: string; share: string } {
  const base = '/usr/lib/postgresql';
  const versions = fs.existsSync(base)
    ? fs
        .readdirSync(base)
        .filter((v) => fs.existsSync(path.join(base, v, 'bin/postgres')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  const v = versions[0];
  if (!v) throw new Error('no PostgreSQL server in /usr/lib/postgresql. Fix: scripts/install-test-clients.sh postgres');
  return { bin: path.join(base, v, 'bin'), lib: path.join(base, v, 'lib'), share: `/usr/share/postgresql/${v}` };
}

/** Every regular file below `dir` that `keep` accepts, copied to the same path in the rootfs. */
function copyHostTree(rootfs: string, dir: string, keep: (f: string) => boolean = () => true): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const f = path.join(e.parentPath, e.name);
    if (fs.statSync(f).isFile() && keep(f)) copyHostFile(rootfs, f);
  }
}

/**
 * The rootfs of a job with its own PostgreSQL server (pg-job.sh): the host's
 * server binaries, modules and share files at their host paths (the server
 * finds its share directory relative to its binary), on the busybox rootfs.
 * The server brings what no other job here has: a family of processes of
 * another user than the container's root on anonymous shared memory and a
 * /dev/shm segment, a write-ahead log it fsyncs, and a client connection per
 * statement.
 */
export async function buildPgJobRootfs(dir: string): Promise<void> {
  const pg = hostPostgres();
  layoutBusyboxRootfs(dir, {
    applets: [...BUSYBOX_APPLETS, 'su', 'chown'],
    hostname: 'arch-test',
    files: {
      // The server refuses to run as root: it runs as postgres (uid 70), whom initdb looks up by uid.
      '/etc/passwd': { content: 'root:x:0:0:root:/root:/bin/sh\npostgres:x:70:70:postgres:/pg:/bin/sh\n' },
      '/etc/group': { content: 'root:x:0:\npostgres:x:70:\n' },
      '/job.sh': { content: fs.readFileSync(PG_JOB_SCRIPT, 'utf8'), mode: 0o755 },
    },
  });
  const tools = ['postgres', 'initdb', 'psql', 'pg_isready'].map((t) => path.join(pg.bin, t));
  for (const t of tools) copyHostFile(dir, t);
  // The server's modules (initdb loads plpgsql and the snowball dictionaries), not its JIT (jit=off).
  copyHostTree(dir, pg.lib, (f) => f.endsWith('.so') && !path.basename(f).startsWith('llvmjit'));
  copyHostTree(dir, pg.share);
  copyHostTree(dir, '/usr/share/zoneinfo', (f) => /\/(UTC|GMT)$/.test(f));
  const natives = [...tools, ...fs.readdirSync(path.join(dir, pg.lib)).map((f) => path.join(pg.lib, f))];
  for (const lib of await sharedLibraries(natives)) if (!lib.startsWith(`${dir}/`)) copyHostFile(dir, lib);
}

/** The process arguments of that job, its output (lines `pgjob N ok|FAIL …`) appended to `out`, a path in its rootfs. */
export function pgJobArgs(out: string): string[] {
  return ['/bin/sh', '-c', `PG_BIN=${hostPostgres().bin} exec /job.sh >>${out} 2>&1`];
}
