/**
 * How bin/arch-runc starts the shim's Node side: the one-file bundle
 * (arch-runc.cjs, see package.json's bundle:shim) run with V8's code cache.
 * bin/arch-cli starts its own bundle the same way (cli/start.cts), through
 * runBundle below.
 *
 * Why: arch-runc runs once per runc call containerd makes for an ARCH
 * container, and the restore of a container waits for it. Compiling the
 * 700 KB bundle took ~25 ms of every start here; with the cache it takes ~5.
 * The build writes the cache (a pass-through call to /bin/true, see
 * package.json); a start
 * whose cache is missing or refused by V8 (another Node) writes a new one.
 *
 * V8 checks a cache only against the source's length, so the cache file
 * names the bundle it was made from (its device, inode, size and mtime in
 * ns: a new build writes a new file), and is used only with that bundle;
 * and carries the crc32 of the cache data itself, so that a damaged file is
 * never handed to V8 (it would be recompiled and written anew). Not sha256:
 * loading node:crypto and hashing 1.7 MB (bundle and cache) cost every
 * `arch-cli` start more than zlib's crc32 of the cache, and telling the
 * build's file from another needs no digest of it. A Node without
 * zlib.crc32 (before 20.15) compiles without a cache.
 */
import fs = require('node:fs');
import Module = require('node:module');
import path = require('node:path');
import vm = require('node:vm');
import zlib = require('node:zlib');

const crc32 = (zlib as { crc32?: (data: Buffer) => number }).crc32;
/** Cache file: the bundle's identity (KEY_BYTES, zero-padded), crc32 of the data (4 bytes, BE), the data. */
const KEY_BYTES = 96;
const HEADER_BYTES = KEY_BYTES + 4;

/** Which file the source was read from, as the cache header holds it. */
function identityOf(fd: number): Buffer {
  const st = fs.fstatSync(fd, { bigint: true });
  const key = Buffer.alloc(KEY_BYTES);
  key.write(`${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`, 'latin1');
  return key;
}

function checksum(data: Buffer): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(crc32!(data));
  return b;
}

/** A bundle's source and its identity, read from one open file (a new build between the two is never mixed). */
function readBundle(bundle: string): { source: string; key: Buffer } {
  const fd = fs.openSync(bundle, 'r');
  try {
    return { key: identityOf(fd), source: fs.readFileSync(fd, 'utf8') };
  } finally {
    fs.closeSync(fd);
  }
}

/** Run a CommonJS bundle as a module of its own, compiled from `<bundle>.v8cache` when that fits it. */
function runBundle(bundle: string): void {
  const cache = `${bundle}.v8cache`;
  const { source, key } = readBundle(bundle);
  let cachedData: Buffer | undefined;
  try {
    const file = crc32 ? fs.readFileSync(cache) : undefined;
    const data = file?.subarray(HEADER_BYTES);
    if (
      file &&
      data &&
      file.subarray(0, KEY_BYTES).equals(key) &&
      file.subarray(KEY_BYTES, HEADER_BYTES).equals(checksum(data))
    )
      cachedData = data;
  } catch {
    // no cache yet: compile, and write one at exit
  }

  const script = new vm.Script(Module.wrap(source), { filename: bundle, cachedData });
  if (crc32 && (!cachedData || script.cachedDataRejected)) process.once('exit', () => writeCache(script, cache, key));

  const mod = { exports: {} };
  // The bundle's require resolves from where the bundle is (its external packages: node_modules above it).
  (script.runInThisContext() as (...args: unknown[]) => void)(
    mod.exports,
    Module.createRequire(bundle),
    mod,
    bundle,
    path.dirname(bundle),
  );
}

/**
 * At exit, so that the functions this run compiled are in it; never fails the
 * call. Written beside and renamed like core/atomic-file.ts does, but
 * synchronously: an exit handler cannot wait, and this file loads nothing of dist/.
 */
function writeCache(script: vm.Script, cache: string, key: Buffer): void {
  const tmp = `${cache}.${process.pid}.tmp`;
  try {
    const data = script.createCachedData();
    fs.writeFileSync(tmp, Buffer.concat([key, checksum(data), data]));
    fs.renameSync(tmp, cache);
  } catch {
    fs.rmSync(tmp, { force: true });
  }
}

/**
 * Write the cache of a bundle without running it (what compiling it makes:
 * its top-level code): for a bundle no warm-up run of the build loads
 * (scripts/bundle-cli.ts). A start that finds it valid uses it as it is.
 */
function cacheBundle(bundle: string): void {
  if (!crc32) return;
  const { source, key } = readBundle(bundle);
  writeCache(new vm.Script(Module.wrap(source), { filename: bundle }), `${bundle}.v8cache`, key);
}

export = { runBundle, cacheBundle };

if (require.main === module) runBundle(path.join(__dirname, 'arch-runc.cjs'));
