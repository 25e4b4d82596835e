import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { RECORD_SUFFIX } from '../../core/host-dirs.js';
import { execa } from 'execa';
import { checkpointContainer } from '../../core/checkpoint.js';
import { CtrError } from '../../core/containerd.js';
import { digestFiles } from '../../core/digest.js';
import type { Manifest } from '../../core/manifest.js';
import { findUpperDir } from '../../core/rootfs-diff.js';
import { CheckpointStore, isLeaseEntry } from '../../core/store.js';
import { SCRATCH_ROOTS } from '../../core/seal.js';
import { signManifest, trustOf } from '../../core/trust.js';
import { thisCpu } from '../../core/cpu-features.js';
import { craftTar, type TarEntry } from '../support/crafted-tar.js';
import { realRunc } from '../support/arch-env.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { buildRootfs, COUNTER_FILES, REPO_ROOT } from '../support/images.js';
import { CRIU_DIR, MANIFEST_FILE, PAGE_IMAGE_NAME, SIGNATURE_FILE, SPEC_FILE } from '../../core/checkpoint-layout.js';

/**
 * Bad input on the real stack (containerd → arch-runc → runc/CRIU): for
 * every bad setting or damaged checkpoint the container still starts — fresh,
 * its counter from 1 — the shim logs one structured error line naming the
 * field or the reason, and nothing is written outside the checkpoint root
 * and the container's own layer.
 */

let node: ArchTestNode;
/** Checkpoint roots of this file live below it. */
let work: string;
/** Targets that escaping archive entries aim at: must stay empty. */
let outside: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  node = await startArchNode('bad-input');
  work = fs.mkdtempSync('/tmp/arch-bad-input-');
  outside = path.join('/tmp', `arch-bad-input-outside-${process.pid}`);
  fs.rmSync(outside, { recursive: true, force: true });
  fs.mkdirSync(outside);
});

afterAll(async () => {
  await stopAllNodes();
  // startArchNode's settings dir (arch.env, arch.log) is not removed by the support code.
  if (node) fs.rmSync(path.dirname(node.archConfig), { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
  fs.rmSync(outside, { recursive: true, force: true });
});

type LogLine = Record<string, unknown>;

function errorsOf(id: string, namespace = 'default'): LogLine[] {
  return node
    .logLines()
    .filter(
      (l) =>
        l.container === id && (l.namespace === namespace || l.namespace === undefined) && (l.level as number) >= 50,
    );
}

/** The single error line the shim wrote for this container (waits for it). */
async function theError(id: string, namespace = 'default'): Promise<LogLine> {
  await waitFor(`error logged for ${id}`, () => (errorsOf(id, namespace).length ? true : undefined), 10_000);
  const errs = errorsOf(id, namespace);
  expect(errs).toHaveLength(1);
  return errs[0]!;
}

/** Started fresh: the counter's first output is "count 1" and it logged one start. */
async function expectFreshStart(id: string, out: string, namespace = 'default'): Promise<void> {
  await node.containerd.withNamespace(namespace).waitStatus(id, 'RUNNING', 15_000);
  await node.waitCount(id, 2, namespace);
  await waitFor(`${id} output`, () => (fs.readFileSync(out, 'utf8').includes('count 2\n') ? true : undefined));
  // The container's stderr is runc's during a restore: when CRIU's restorer
  // itself fails on a damaged image, runc's own error lines come first. No
  // line of a restored process may: the program's first line is its start.
  const runcSaid = /^(?:criu failed: .*\n|log file: .*\n)*/;
  expect(fs.readFileSync(out, 'utf8').replace(runcSaid, '')).toMatch(
    /^counter start pid=1 mem_mb=0\ncount 1\ncount 2\n/,
  );
  expect(node.readContainerFile(id, COUNTER_FILES.starts, namespace)).toBe('start\n');
}

async function remove(id: string, namespace = 'default'): Promise<void> {
  await node.containerd
    .withNamespace(namespace)
    .removeContainer(id)
    .catch(() => undefined);
}

/** Every file below dir with its size and digest (to prove a dir was not touched). */
async function treeDigest(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string): Promise<void> => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      // The job's lease (core/lease.ts) is not part of a checkpoint: every create of the job takes it.
      if (isLeaseEntry(r)) continue;
      if (e.isDirectory()) await walk(r);
      else if (e.isSymbolicLink()) out[r] = `-> ${fs.readlinkSync(path.join(dir, r))}`;
      else out[r] = (await digestFiles([path.join(dir, r)]))[0]!.sha256;
    }
  };
  await walk('');
  return out;
}

// ---- the container contract ------------------------------------------------

describe('bad ARCH_* settings: the container starts without ARCH, the field is named', () => {
  const cases: { name: string; id: string; env: (w: string) => string[]; field: string; message: RegExp }[] = [
    {
      name: 'ARCH_ENABLE=yes',
      id: 'bi-enable-yes',
      env: (w) => ['ARCH_ENABLE=yes', `ARCH_CHECKPOINT_HOST_PATH=${w}/ck`],
      field: 'ARCH_ENABLE',
      message: /"yes" is not 0 or 1/,
    },
    {
      name: 'relative ARCH_CHECKPOINT_HOST_PATH',
      id: 'bi-relative',
      env: () => ['ARCH_ENABLE=1', 'ARCH_CHECKPOINT_HOST_PATH=rel/path'],
      field: 'ARCH_CHECKPOINT_HOST_PATH',
      message: /"rel\/path" is a relative path/,
    },
    {
      name: 'ARCH_CHECKPOINT_HOST_PATH with ".."',
      id: 'bi-dotdot',
      env: (w) => ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${w}/ck/../../escape`],
      field: 'ARCH_CHECKPOINT_HOST_PATH',
      message: /contains "\.\."/,
    },
    {
      name: 'missing ARCH_CHECKPOINT_HOST_PATH',
      id: 'bi-missing',
      env: () => ['ARCH_ENABLE=1'],
      field: 'ARCH_CHECKPOINT_HOST_PATH',
      message: /is not set/,
    },
    {
      name: 'only ARCH_SHAREDFS_HOST_PATH',
      id: 'bi-only-shared',
      env: (w) => ['ARCH_ENABLE=1', `ARCH_SHAREDFS_HOST_PATH=${w}/shared`],
      field: 'ARCH_WORKDIR_CONTAINER_PATH',
      message: /half-set shared mode/,
    },
    {
      name: 'only ARCH_WORKDIR_CONTAINER_PATH',
      id: 'bi-only-workdir',
      env: (w) => ['ARCH_ENABLE=1', 'ARCH_WORKDIR_CONTAINER_PATH=/work', `ARCH_CHECKPOINT_HOST_PATH=${w}/ck`],
      field: 'ARCH_SHAREDFS_HOST_PATH',
      message: /half-set shared mode/,
    },
  ];

  test.each(cases)('$name', async ({ id, env, field, message }) => {
    const w = path.join(work, id);
    fs.mkdirSync(path.join(w, 'shared'), { recursive: true });
    try {
      const out = await node.runCounter(id, [...env(w), 'COUNTER_INTERVAL_MS=50']);
      await expectFreshStart(id, out);
      const e = await theError(id);
      expect(e).toMatchObject({ namespace: 'default', container: id, phase: 'create', field });
      expect(String(e.err)).toMatch(new RegExp(`^${field}: `));
      expect(String(e.err)).toMatch(message);
      expect(String(e.err)).toContain('. Fix: ');
      // Not treated as an ARCH container: no shim state, no checkpoint or work dirs, spec untouched.
      expect(fs.existsSync(path.join(node.runcRoot('default'), id, 'arch.json'))).toBe(false);
      expect(fs.existsSync(path.join(w, 'ck'))).toBe(false);
      expect(fs.existsSync(path.join(work, 'escape'))).toBe(false);
      expect(fs.readdirSync(path.join(w, 'shared'))).toEqual([]);
      const bundle = node.bundleDir(id);
      const spec = JSON.parse(fs.readFileSync(path.join(bundle, SPEC_FILE), 'utf8')) as {
        mounts: { destination: string }[];
        process: { cwd: string };
      };
      expect(spec.mounts.map((m) => m.destination)).not.toContain('/work');
      expect(spec.process.cwd).toBe('/');
      // A relative path resolved against any working directory in play would land here.
      for (const base of [bundle, '/', node.dir, node.state, REPO_ROOT, process.cwd()])
        expect(fs.existsSync(path.join(base, 'rel'))).toBe(false);
      const upper = await findUpperDir(path.join(bundle, 'rootfs'));
      expect(upper).toBeDefined();
      expect(fs.readdirSync(upper!).sort()).toEqual(['state']);
    } finally {
      await remove(id);
    }
  });
});

// ---- damaged checkpoints -----------------------------------------------------

describe('damaged checkpoints: refused, container starts fresh, nothing written outside', () => {
  const SEED = 'bi-seed';
  let ckRoot: string;
  let seedDir: string;

  beforeAll(async () => {
    ckRoot = path.join(work, 'ck');
    // A real checkpoint of a counter that also wrote, changed and deleted files.
    await node.runCounter(SEED, ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${ckRoot}`, 'COUNTER_START_FILES=1']);
    await node.waitCount(SEED, 5);
    const res = await checkpointContainer(node.ctx, {
      namespace: 'default',
      id: SEED,
      runcRoot: node.runcRoot('default'),
    });
    await node.containerd.waitStatus(SEED, 'STOPPED', 15_000);
    await remove(SEED);
    seedDir = res.dir;
    expect(fs.readdirSync(path.join(seedDir, CRIU_DIR)).some((f) => PAGE_IMAGE_NAME.test(f))).toBe(true);
  });

  function readManifest(dir: string): Manifest {
    return JSON.parse(fs.readFileSync(path.join(dir, MANIFEST_FILE), 'utf8')) as Manifest;
  }

  /** Written and signed by this node: these cases test the readers behind the signature (shim-trust tests the signature). */
  function writeManifest(dir: string, m: Manifest): void {
    const bytes = Buffer.from(JSON.stringify(m, null, 1));
    fs.writeFileSync(path.join(dir, MANIFEST_FILE), bytes);
    fs.writeFileSync(path.join(dir, SIGNATURE_FILE), signManifest(bytes, trustOf(node.ctx.settings))!);
  }

  /** A copy of the seed checkpoint published for container `id` (manifest identity rewritten). */
  async function copyFor(id: string): Promise<string> {
    const cdir = path.join(ckRoot, 'default', id);
    fs.mkdirSync(cdir, { recursive: true });
    const dir = path.join(cdir, path.basename(seedDir));
    await execa('cp', ['-a', seedDir, dir]);
    fs.symlinkSync(path.basename(seedDir), path.join(cdir, 'current'));
    writeManifest(dir, { ...readManifest(dir), containerId: id });
    await expect(new CheckpointStore(cdir).verifyCurrent()).resolves.toMatchObject({ dir });
    return dir;
  }

  function pagesFile(dir: string): string {
    const f = fs.readdirSync(path.join(dir, CRIU_DIR)).find((n) => PAGE_IMAGE_NAME.test(n))!;
    return path.join(dir, CRIU_DIR, f);
  }

  /** Rewrite rootfs-diff.tar with extra entries, and its manifest entry so the digests still match. */
  async function tamperArchive(dir: string, entries: TarEntry[]): Promise<void> {
    const tarFile = path.join(dir, 'rootfs-diff.tar');
    fs.writeFileSync(tarFile, craftTar(entries, fs.readFileSync(tarFile)));
    const m = readManifest(dir);
    const d = (await digestFiles([tarFile]))[0]!;
    // rootfs.bytes grown too, as whoever signed it would: the archive's declared size is checked before its entries.
    const rootfs = {
      ...m.rootfs,
      bytes: m.rootfs.bytes + entries.reduce((a, e) => a + Buffer.byteLength(e.data ?? ''), 0),
    };
    writeManifest(dir, {
      ...m,
      rootfs,
      files: m.files.map((f) => (f.path === 'rootfs-diff.tar' ? { path: f.path, ...d } : f)),
    });
    await expect(new CheckpointStore(path.dirname(dir)).verifyCurrent()).resolves.toBeTruthy();
  }

  test("control: an untampered copy restores (so the refusals below are the tampering's doing)", async () => {
    const id = 'bi-control';
    await copyFor(id);
    try {
      const out = await node.runCounter(id, ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${ckRoot}`]);
      await node.containerd.waitStatus(id, 'RUNNING', 15_000);
      await waitFor('restored output', () => (/count \d+\n/.test(fs.readFileSync(out, 'utf8')) ? true : undefined));
      expect(fs.readFileSync(out, 'utf8')).not.toMatch(/(^|\n)count 1\n/);
      expect(node.readContainerFile(id, COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
      expect(errorsOf(id)).toEqual([]);
      expect(node.logLines().some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
      // It records the CPU it was taken on (this one): a restore on a CPU without its instructions is refused below.
      expect(readManifest(path.join(ckRoot, 'default', id, path.basename(seedDir))).cpu).toEqual(thisCpu());
    } finally {
      await remove(id);
    }
  });

  /**
   * A job that moved here from a CPU with fewer instructions (another node of
   * the cluster signed its checkpoint) still runs what it chose there: its
   * next checkpoint records that CPU, so it can move back. Once it has
   * started a process here, this node's CPU.
   */
  test("a job restored from a CPU with fewer instructions records that CPU at its next checkpoint, and this node's once it starts a process here", async () => {
    const id = 'bi-cpu-back';
    const dir = await copyFor(id);
    const m = readManifest(dir);
    const fewer = { arch: m.cpu!.arch, features: m.cpu!.features.slice(0, -1) };
    writeManifest(dir, { ...m, cpu: fewer });
    try {
      const out = await node.runCounter(id, ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${ckRoot}`]);
      await waitFor('restored output', () => (/count \d+\n/.test(fs.readFileSync(out, 'utf8')) ? true : undefined));
      expect(node.logLines().some((l) => l.container === id && l.msg === 'restored from checkpoint')).toBe(true);
      const checkpoint = () =>
        checkpointContainer(node.ctx, {
          namespace: 'default',
          id,
          runcRoot: node.runcRoot('default'),
          leaveRunning: true,
        });
      expect((await checkpoint()).manifest.cpu).toEqual(fewer);
      // A process started here (as a job's next step would be) chose on this CPU.
      await node.containerd.ctr(['tasks', 'exec', '--detach', '--exec-id', 'later', id, '/bin/sleep', '300']);
      expect((await checkpoint()).manifest.cpu).toEqual(thisCpu());
    } finally {
      await remove(id);
    }
  });

  const escapeTargets = (): Record<string, string> => ({
    abs: path.join(outside, 'abs', 'file'),
    somewhere: path.join(outside, 'somewhere', 'file'),
  });

  const cases: { name: string; id: string; tamper: (dir: string) => Promise<void> | void; reason: string }[] = [
    {
      name: 'truncated page image',
      id: 'bi-truncated',
      tamper: (dir) => fs.truncateSync(pagesFile(dir), Math.floor(fs.statSync(pagesFile(dir)).size / 2)),
      reason: 'truncated',
    },
    {
      name: 'one flipped byte in a page image',
      id: 'bi-corrupt',
      tamper: (dir) => {
        const f = pagesFile(dir);
        const b = fs.readFileSync(f);
        b[Math.floor(b.length / 2)] ^= 0x40;
        fs.writeFileSync(f, b);
      },
      reason: 'corrupt',
    },
    {
      name: 'manifest of a newer format (99)',
      id: 'bi-newer',
      tamper: (dir) => writeManifest(dir, { ...readManifest(dir), formatVersion: 99 }),
      reason: 'format-newer',
    },
    {
      name: 'archive entry with an absolute path',
      id: 'bi-tar-abs',
      tamper: (dir) => tamperArchive(dir, [{ name: escapeTargets().abs, type: '0', data: 'pwned' }]),
      reason: 'archive-escape',
    },
    {
      name: 'archive entry "../x"',
      id: 'bi-tar-dotdot',
      tamper: (dir) =>
        tamperArchive(dir, [
          { name: '../x', type: '0', data: 'pwned' },
          { name: '../../../../../../../../tmp/x', type: '0', data: 'pwned' },
        ]),
      reason: 'archive-escape',
    },
    {
      name: 'symlink evil -> outside, then evil/file',
      id: 'bi-tar-symlink',
      tamper: (dir) => {
        fs.mkdirSync(path.dirname(escapeTargets().somewhere), { recursive: true });
        return tamperArchive(dir, [
          { name: 'evil', type: '2', link: path.dirname(escapeTargets().somewhere) },
          { name: 'evil/file', type: '0', data: 'pwned' },
        ]);
      },
      reason: 'archive-escape',
    },
    {
      name: 'hard link to /etc/passwd',
      id: 'bi-tar-hardlink',
      tamper: (dir) => tamperArchive(dir, [{ name: 'passwd-link', type: '1', link: '/etc/passwd' }]),
      reason: 'archive-escape',
    },
    {
      name: 'character device',
      id: 'bi-tar-chardev',
      tamper: (dir) => tamperArchive(dir, [{ name: 'dev-mem', type: '3', dev: [1, 1] }]),
      reason: 'archive-entry',
    },
    // A checkpoint another node of the cluster took (signed by a trusted key) on a CPU this one is not.
    {
      name: 'taken on a CPU with instructions this one lacks (an AVX-512 node, restored on one without)',
      id: 'bi-cpu-features',
      tamper: (dir) => {
        const m = readManifest(dir);
        const lacking = ['avx512f', 'avx512bw', 'amx_tile', 'avx512_fp16'].find(
          (f) => !thisCpu()!.features.includes(f),
        )!;
        writeManifest(dir, { ...m, cpu: { arch: m.cpu!.arch, features: [...m.cpu!.features, lacking].sort() } });
      },
      reason: 'cpu-features',
    },
    {
      name: 'taken on a CPU of another architecture',
      id: 'bi-cpu-arch',
      tamper: (dir) => {
        const m = readManifest(dir);
        writeManifest(dir, { ...m, cpu: { ...m.cpu!, arch: process.arch === 'arm64' ? 'x64' : 'arm64' } });
      },
      reason: 'cpu-features',
    },
  ];

  test.each(cases)('$name → reason $reason', async ({ id, tamper, reason }) => {
    const dir = await copyFor(id);
    await tamper(dir);
    const before = await treeDigest(path.join(ckRoot, 'default', id));
    const passwdBefore = fs.statSync('/etc/passwd');
    try {
      const out = await node.runCounter(id, [
        'ARCH_ENABLE=1',
        `ARCH_CHECKPOINT_HOST_PATH=${ckRoot}`,
        'COUNTER_INTERVAL_MS=50',
      ]);
      await expectFreshStart(id, out);
      const e = await theError(id);
      expect(e).toMatchObject({ namespace: 'default', container: id, phase: 'create', reason });
      expect(String(e.err)).toContain(`checkpoint unusable (${reason})`);
      expect(e.checkpointDir).toBe(path.join(ckRoot, 'default', id));
      // The fresh container's layer holds only what the counter wrote: nothing of the archive.
      const upper = await findUpperDir(path.join(node.bundleDir(id), 'rootfs'));
      expect(fs.readdirSync(upper!).sort()).toEqual(['state']);
      expect(
        fs
          .readdirSync(path.join(upper!, 'state'))
          .filter((f) => !f.endsWith('.tmp'))
          .sort(),
      ).toEqual(['count', 'starts']);
      expect(fs.existsSync(path.join(upper!, '..', 'x'))).toBe(false);
      // Nothing outside: the escape targets, /etc/passwd, /tmp/x.
      for (const t of Object.values(escapeTargets())) expect(fs.existsSync(t)).toBe(false);
      expect(fs.existsSync('/tmp/x')).toBe(false);
      const passwdAfter = fs.statSync('/etc/passwd');
      expect([passwdAfter.nlink, passwdAfter.size, passwdAfter.mtimeMs]).toEqual([
        passwdBefore.nlink,
        passwdBefore.size,
        passwdBefore.mtimeMs,
      ]);
      // The damaged checkpoint is left as it was (evidence for the operator), not "repaired" or half-used.
      expect(await treeDigest(path.join(ckRoot, 'default', id))).toEqual(before);
    } finally {
      await remove(id);
    }
  });
});

// ---- namespace and container id ----------------------------------------------

describe('namespace / id that would escape the checkpoint root', () => {
  test('containerd itself refuses ids and namespaces with ".." or over-long: nothing reaches ARCH', async () => {
    const ck = path.join(work, 'ids-ck');
    const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${ck}`];
    for (const id of ['a..b', '..', 'x'.repeat(77), 'a/b']) {
      await expect(
        node.containerd.run({
          image: node.image,
          id,
          env,
          runcBinary: ARCH_RUNC_BIN,
          detach: true,
          logFile: path.join(work, 'ids.out'),
        }),
      ).rejects.toThrow(CtrError);
    }
    await expect(node.containerd.withNamespace('a..b').ctr(['containers', 'ls'])).rejects.toThrow(CtrError);
    expect(fs.existsSync(ck)).toBe(false);
    for (const id of ['a..b', '..']) expect(node.logLines().filter((l) => l.container === id)).toEqual([]);
  });

  test('what containerd allows (dots, dashes, underscores, 76 characters) stays below ROOT/NS/ID', async () => {
    const ns = 'arch.bad-input_ns';
    const id = `x.y-z_${'n'.repeat(70)}`;
    expect(id.length).toBe(76);
    const ck = path.join(work, 'ids-ok');
    try {
      await node.runCounter(id, ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${ck}`], { namespace: ns });
      await node.waitCount(id, 2, ns);
      const res = await checkpointContainer(node.ctx, {
        namespace: ns,
        id,
        runcRoot: node.runcRoot(ns),
        leaveRunning: true,
      });
      expect(path.dirname(res.dir)).toBe(path.join(ck, ns, id));
      expect(fs.readdirSync(ck)).toEqual([ns]);
      // The checkpoint dir and its ownership record beside it (core/host-dirs.ts), nothing else.
      expect(fs.readdirSync(path.join(ck, ns)).sort()).toEqual([id, `${id}${RECORD_SUFFIX}`].sort());
      expect(errorsOf(id, ns)).toEqual([]);
    } finally {
      await remove(id, ns);
    }
  });

  describe("direct callers of arch-runc (not containerd): hostile --root or id is not ARCH's to handle", () => {
    const RUNC = realRunc();
    let bundle: string;
    let ck: string;
    const cg = `/arch-bi-${process.pid}`;

    beforeAll(async () => {
      bundle = path.join(work, 'direct-bundle');
      ck = path.join(work, 'direct-ck');
      fs.mkdirSync(bundle, { recursive: true });
      await buildRootfs(path.join(bundle, 'rootfs'));
      await execa(RUNC, ['spec', '--bundle', bundle]);
      const spec = JSON.parse(fs.readFileSync(path.join(bundle, SPEC_FILE), 'utf8')) as {
        process: { terminal: boolean; args: string[]; env: string[] };
        root: { path: string; readonly: boolean };
        linux: { cgroupsPath?: string };
      };
      spec.process.terminal = false;
      spec.process.args = ['/usr/bin/counter'];
      spec.process.env.push('ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${ck}`);
      spec.root = { path: 'rootfs', readonly: false };
      spec.linux.cgroupsPath = `${cg}/c`;
      fs.writeFileSync(path.join(bundle, SPEC_FILE), JSON.stringify(spec));
    });

    afterAll(() => {
      for (const c of fs.readdirSync('/sys/fs/cgroup')) {
        for (const d of [path.join('/sys/fs/cgroup', c, cg, 'c'), path.join('/sys/fs/cgroup', c, cg)]) {
          try {
            fs.rmdirSync(d);
          } catch {
            // absent or busy
          }
        }
      }
    });

    test.each([
      ['a namespace with ".." (from --root)', 'ns..bad', 'direct-1', 'namespace (from runc --root)'],
      ['a namespace that is "..": --root ROOT/x/..', '..', 'direct-2', 'namespace (from runc --root)'],
      ['an over-long id (129)', 'default', `d${'x'.repeat(128)}`, 'container id'],
    ])('%s', async (_n, nsPart, id, field) => {
      // Not path.join: it would fold "x/.." away.
      const runcRoot = nsPart === '..' ? `${work}/direct-root/x/..` : path.join(work, 'direct-root', nsPart);
      fs.mkdirSync(runcRoot, { recursive: true });
      const outFile = path.join(work, `${id.slice(0, 20)}.out`);
      const out = fs.openSync(outFile, 'w');
      try {
        // Plain fds: the created container keeps runc's stdio open.
        const p = spawn(ARCH_RUNC_BIN, ['--root', runcRoot, 'create', '--bundle', bundle, id], {
          env: { ...process.env, ARCH_CONFIG: node.archConfig },
          stdio: ['ignore', out, out],
        });
        const code = await new Promise<number | null>((res) => p.on('exit', (c) => res(c)));
        // Passed to runc unchanged: the container exists (runc's own rules allow these).
        expect({ code, output: fs.readFileSync(outFile, 'utf8') }).toEqual({ code: 0, output: '' });
        const st = await execa(RUNC, ['--root', runcRoot, 'state', id]);
        expect((JSON.parse(st.stdout) as { status: string }).status).toBe('created');
        // ARCH stayed out: no checkpoint root, no shim state, one error line naming the field.
        expect(fs.existsSync(ck)).toBe(false);
        expect(fs.existsSync(path.join(runcRoot, id, 'arch.json'))).toBe(false);
        const errs = node.logLines().filter((l) => l.container === id && (l.level as number) >= 50);
        expect(errs).toHaveLength(1);
        expect(String(errs[0]!.err)).toMatch(new RegExp(`^${field.replace(/[()]/g, '\\$&')}: `));
        expect(String(errs[0]!.err)).toContain('Fix: ');
      } finally {
        fs.closeSync(out);
        await execa(RUNC, ['--root', runcRoot, 'delete', '--force', id], { reject: false, stdin: 'ignore' });
      }
    });
  });
});

// ---- a full disk during checkpoint -------------------------------------------

test('full disk during checkpoint: it fails, the previous checkpoint stays current and valid, no staging left, the container keeps running', async () => {
  const id = 'bi-full';
  const mnt = path.join('/tmp', `arch-bad-input-tmpfs-${process.pid}`);
  fs.mkdirSync(mnt, { recursive: true });
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]);
  try {
    await node.runCounter(id, ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${mnt}`]);
    await node.waitCount(id, 3);
    const req = { namespace: 'default', id, runcRoot: node.runcRoot('default'), leaveRunning: true };
    const first = await checkpointContainer(node.ctx, req);
    expect(first.sizeBytes).toBeLessThan(3 * 1024 * 1024);
    const afterFirst = await node.waitCount(id, node.count(id) + 2);
    expect((await node.containerd.task(id))?.status).toBe('RUNNING');

    // Fill the tmpfs to a few KiB of free space.
    const filler = path.join(mnt, 'filler');
    const fd = fs.openSync(filler, 'w');
    const chunk = Buffer.alloc(64 * 1024, 1);
    let written = 0;
    try {
      for (;;) {
        try {
          written += fs.writeSync(fd, chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw err;
        }
      }
      fs.ftruncateSync(fd, Math.max(0, written - 8 * 1024));
    } finally {
      fs.closeSync(fd);
    }
    const st = fs.statfsSync(mnt);
    expect(st.bavail * st.bsize).toBeLessThan(64 * 1024);

    const linesBefore = node.logLines().length;
    const scratchEntries = (): string[] =>
      SCRATCH_ROOTS.flatMap((r) => (fs.existsSync(r) ? fs.readdirSync(r).map((n) => path.join(r, n)) : [])).sort();
    const scratchBefore = scratchEntries();
    const failure = await checkpointContainer(node.ctx, req).then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    // Out of space: CRIU writing the images (it reports that as "criu failed"), or, with the dump
    // staged in memory (the default for a checkpoint left running), its move into the store
    // (Node's own ENOSPC error, which is not an instance of this test realm's Error).
    expect(failure).toBeDefined();
    expect(failure!.message).toMatch(/criu failed|ENOSPC|no space/i);
    const store = new CheckpointStore(path.join(mnt, 'default', id));
    expect(await store.current()).toBe(first.dir);
    await expect(store.verifyCurrent()).resolves.toMatchObject({ dir: first.dir });
    expect(
      fs
        .readdirSync(path.join(mnt, 'default', id))
        .filter((n) => !isLeaseEntry(n))
        .sort(),
    ).toEqual([path.basename(first.dir), 'current'].sort());
    expect(fs.readdirSync(mnt).sort()).toEqual(['default', 'filler']);
    // Nor is a dump staged in memory left behind.
    expect(scratchEntries()).toEqual(scratchBefore);
    // The freeze was undone: still RUNNING and counting.
    expect((await node.containerd.task(id))?.status).toBe('RUNNING');
    const c = node.count(id);
    expect(c).toBeGreaterThanOrEqual(afterFirst);
    await node.waitCount(id, c + 3);
    expect(
      node
        .logLines()
        .slice(linesBefore)
        .some((l) => l.container === id && (l.level as number) >= 50 && /checkpoint failed/.test(String(l.msg))),
    ).toBe(true);
  } finally {
    await remove(id);
    await execa('umount', ['-l', mnt], { reject: false });
    fs.rmSync(mnt, { recursive: true, force: true });
  }
});
