/**
 * Build the shim's V8 start-up snapshot: dist/shim/arch-runc.blob, and the
 * stamp bin/arch-runc checks before using it (part of `npm run build`).
 *
 * Why: a restore waits for arch-runc's Node side to start. From a snapshot
 * the bundle's modules are loaded and the restore path is compiled already
 * (shim/snapshot-warm-up.ts), which saves ~20-30 ms of every ARCH create.
 *
 * A blob works only with the Node that built it: any other Node (another
 * version, or the same version built differently) crashes on it before
 * running a line of JavaScript, and a container create must never fail for
 * that. So the stamp names that Node (its real path) and records its
 * identity, and that of libnode where Node is a shared library (Debian 13),
 * as `stat -L` prints it. bin/arch-runc runs the blob with that Node only
 * while the identity is unchanged (and ARCH_NODE_BIN, if set, names it),
 * and starts through start.cjs (code cache) otherwise. An upgrade of Node
 * changes the identity (new inode, ctime) until the next build. The stamp's
 * format is in core/shim-snapshot.ts.
 *
 * Never fails the build: without a blob, arch-runc works as before, slower.
 */
import { execa } from 'execa';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fileIdentity, formatStamp, snapshotFiles } from '../core/shim-snapshot.js';

const ARCH_HOME = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BUNDLE = path.join(ARCH_HOME, 'dist/shim/arch-runc.cjs');
const { blob: BLOB, stamp: STAMP } = snapshotFiles(ARCH_HOME);

/** Node's notes about modules it has not verified in snapshots (printed at every build). */
const SNAPSHOT_SUPPORT_NOTE =
  /not yet fully verified|may still work in some cases|To request support for the module|--trace-warnings/;

/** Node's own shared library, when this Node is built on one (Debian's libnode). */
function nodeLibraries(): string[] {
  const maps = fs.readFileSync('/proc/self/maps', 'utf8');
  const libs = new Set<string>();
  for (const line of maps.split('\n')) {
    const file = line.slice(line.indexOf('/'));
    if (line.includes('/') && /\/libnode\.so/.test(file)) libs.add(file.trim());
  }
  return [...libs];
}

/**
 * The stamp goes first (package.json's bundle:shim removes it before the
 * bundle is rewritten, so an old blob never runs beside new code); the blob
 * is replaced by a rename, never removed: an arch-runc that read the stamp
 * a moment ago opens the old blob or the new one, never none (a missing
 * blob fails that runc call). A blob left without a stamp is never used,
 * and the next build replaces it.
 */
async function build(): Promise<void> {
  fs.rmSync(STAMP, { force: true });
  const tmp = `${BLOB}.${process.pid}.tmp`;
  const env = { ...process.env, NODE_OPTIONS: '', NODE_EXTRA_CA_CERTS: '' };
  try {
    // Node warns that child_process, tty and worker_threads are "not yet fully
    // verified" in snapshots: the whole test suite runs arch-runc from this blob.
    const b = await execa(process.execPath, ['--snapshot-blob', tmp, '--build-snapshot', BUNDLE], {
      env,
      reject: false,
      all: true,
    });
    if (b.exitCode !== 0) {
      const said = String(b.all)
        .split('\n')
        .filter((l) => l.trim() && !SNAPSHOT_SUPPORT_NOTE.test(l));
      throw new Error(`node --build-snapshot exited ${b.exitCode}: ${said.slice(-5).join(' | ')}`);
    }
    // The blob must run a call with argv intact before anything uses it.
    const argv = ['--root', '/run/arch-snapshot-check/x', 'state', 'arch-snapshot-check'];
    const check = await execa(process.execPath, ['--snapshot-blob', tmp, '--', ...argv], {
      env: { ...env, ARCH_CONFIG: '/dev/null', ARCH_RUNC: '/bin/echo', ARCH_LOG_FILE: '' },
      reject: false,
      all: true,
    });
    if (check.exitCode !== 0 || String(check.stdout).trim() !== argv.join(' ')) {
      throw new Error(`the snapshot's check call printed "${String(check.all).trim()}" (exit ${check.exitCode})`);
    }
    const node = fs.realpathSync(process.execPath);
    const libs = nodeLibraries();
    const identity = await fileIdentity([node, ...libs]);
    fs.renameSync(tmp, BLOB);
    const stampTmp = `${STAMP}.${process.pid}.tmp`;
    fs.writeFileSync(stampTmp, formatStamp({ node, libs, identity }));
    fs.renameSync(stampTmp, STAMP);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

build().catch((err: unknown) => {
  fs.rmSync(STAMP, { force: true });
  process.stderr.write(
    `warning: no start-up snapshot for arch-runc (it starts through start.cjs, ~25 ms slower): ${err instanceof Error ? err.message : String(err)}\n`,
  );
});
