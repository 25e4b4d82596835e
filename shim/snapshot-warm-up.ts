/**
 * What `node --build-snapshot` runs before it takes the shim's start-up
 * snapshot (scripts/build-shim-snapshot.ts): one restore, start and delete
 * through the shim's own main(), against a small checkpoint made here, with
 * /bin/true standing in for runc and CRIU.
 *
 * Why: V8 compiles a function the first time it runs, and the snapshot keeps
 * what was compiled. Warmed up, the restore path of a real create starts with
 * its code compiled (a cold restore spent ~20 ms compiling). Nothing here
 * leaves the temporary directory, and nothing that caches per process is
 * touched (the CRIU probe and the runc/CRIU versions stay unasked: the
 * network lock is set, not probed). It checks its own result, so a change
 * that stops the warm-up from reaching the restore fails the build's
 * snapshot step instead of silently warming nothing.
 */
import { generateKeyPairSync } from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { FORMAT_VERSION } from '../core/manifest.js';
import { captureDiff, applyDiff } from '../core/rootfs-diff.js';
import { CheckpointStore } from '../core/store.js';
import { CRIU_DIR, SPEC_FILE } from '../core/checkpoint-layout.js';

const NAMESPACE = 'warm-up';
const ID = 'arch-snapshot-warm-up';

export async function warmUp(main: (argv: string[]) => Promise<number>): Promise<void> {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'arch-snapshot-'));
  const saved = { ...process.env };
  try {
    const root = path.join(tmp, 'runc', NAMESPACE);
    const bundle = path.join(tmp, 'bundle');
    const checkpoints = path.join(tmp, 'checkpoints');
    const logFile = path.join(tmp, 'arch.log');
    await fsp.mkdir(path.join(root, ID), { recursive: true }); // runc's state dir, as a real create leaves it
    await fsp.mkdir(path.join(bundle, 'rootfs'), { recursive: true });
    const spec = {
      ociVersion: '1.0.2',
      process: {
        args: ['/bin/sh'],
        cwd: '/',
        env: ['PATH=/bin', 'ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${checkpoints}`],
      },
      root: { path: 'rootfs' },
    };
    await fsp.writeFile(path.join(bundle, SPEC_FILE), JSON.stringify(spec));
    // A key of its own: the restore verifies the manifest's signature (and that code gets warmed too).
    const signingKey = path.join(tmp, 'node.key');
    await fsp.writeFile(
      signingKey,
      generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }),
      { mode: 0o600 },
    );
    process.env.ARCH_SIGNING_KEY = signingKey;
    await makeCheckpoint(path.join(checkpoints, NAMESPACE, ID), tmp);

    Object.assign(process.env, {
      ARCH_CONFIG: '/dev/null',
      ARCH_RUNC: '/bin/true',
      ARCH_CRIU: '/bin/true',
      ARCH_CRIU_NETWORK_LOCK: 'iptables',
      ARCH_LOG_FILE: logFile,
      ARCH_NODE_NAME: 'warm-up',
      ARCH_RUNC_ROOT: path.dirname(root),
      ARCH_DEFAULT_CHECKPOINT_PATH: checkpoints,
    });
    const calls = [
      [
        '--root',
        root,
        '--log',
        path.join(bundle, 'log.json'),
        '--log-format',
        'json',
        'create',
        '--bundle',
        bundle,
        '--pid-file',
        path.join(bundle, 'init.pid'),
        ID,
      ],
      ['--root', root, 'start', ID],
      ['--root', root, 'delete', ID],
    ];
    for (const argv of calls) {
      const code = await main(argv);
      if (code !== 0) throw new Error(`warm-up: arch-runc ${argv.join(' ')} exited ${code}`);
    }
    const log = await fsp.readFile(logFile, 'utf8');
    for (const msg of ['restored from checkpoint', 'restored container started', 'container exited by itself']) {
      if (!log.includes(`"msg":"${msg}`)) throw new Error(`warm-up: the shim did not log "${msg}"; its log:\n${log}`);
    }
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/** A published checkpoint the shim accepts: CRIU-like files, a writable-layer archive, a manifest. */
async function makeCheckpoint(containerDir: string, tmp: string): Promise<void> {
  const store = new CheckpointStore(containerDir);
  const staging = await store.begin();
  await fsp.mkdir(path.join(staging.dir, CRIU_DIR));
  for (const [name, bytes] of [
    ['inventory.img', 64],
    ['core-1.img', 4096],
    ['pagemap-1.img', 256],
    ['pages-1.img', 64 * 1024],
  ] as const) {
    await fsp.writeFile(path.join(staging.dir, CRIU_DIR, name), Buffer.alloc(bytes, name.length));
  }
  // The writable layer is captured and applied here too (the restore leaves
  // it alone: this bundle's rootfs is no overlay mount).
  const upper = path.join(tmp, 'upper');
  await fsp.mkdir(path.join(upper, 'data'), { recursive: true });
  await fsp.writeFile(path.join(upper, 'data', 'state.txt'), 'warm');
  await fsp.symlink('state.txt', path.join(upper, 'data', 'link'));
  await captureDiff(upper, staging.dir);
  await store.publish(
    staging,
    {
      formatVersion: FORMAT_VERSION,
      namespace: NAMESPACE,
      containerId: ID,
      // What the restore finds for this spec (no CRI annotations, no containerd shim above it).
      owner: { podNamespace: null, image: null },
      node: 'warm-up',
      createdAt: new Date().toISOString(),
      mode: 'local',
      leaveRunning: false,
      runtime: { runc: 'warm-up', criu: 'warm-up', networkLock: 'iptables' },
      timingsMs: {},
      rootfs: { files: 0, bytes: 0, deletions: 0 },
    },
    { fsync: false },
  );
  const applied = path.join(tmp, 'applied');
  await fsp.mkdir(applied);
  const current = await store.current();
  if (!current) throw new Error('warm-up: the checkpoint was not published');
  await applyDiff(current, applied);
}
