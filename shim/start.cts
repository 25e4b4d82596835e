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
 * carries the sha256 of the bundle it was made from, and is used only with
 * that bundle; and the sha256 of the cache data itself, so that a damaged
 * file is never handed to V8 (it would be recompiled and written anew).
 */
import crypto = require('node:crypto');
import fs = require('node:fs');
import Module = require('node:module');
import path = require('node:path');
import vm = require('node:vm');

const sha256 = (data: string | Buffer): Buffer => crypto.createHash('sha256').update(data).digest();
/** Cache file: sha256 of the bundle, sha256 of the data, the data. */
const HEADER_BYTES = 64;

/** Run a CommonJS bundle as a module of its own, compiled from `<bundle>.v8cache` when that fits it. */
function runBundle(bundle: string): void {
  const cache = `${bundle}.v8cache`;
  const source = fs.readFileSync(bundle, 'utf8');
  const key = sha256(source);
  let cachedData: Buffer | undefined;
  try {
    const file = fs.readFileSync(cache);
    const data = file.subarray(HEADER_BYTES);
    if (file.subarray(0, 32).equals(key) && file.subarray(32, HEADER_BYTES).equals(sha256(data))) cachedData = data;
  } catch {
    // no cache yet: compile, and write one at exit
  }

  const script = new vm.Script(Module.wrap(source), { filename: bundle, cachedData });
  if (!cachedData || script.cachedDataRejected) process.once('exit', () => writeCache(script, cache, key));

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
    fs.writeFileSync(tmp, Buffer.concat([key, sha256(data), data]));
    fs.renameSync(tmp, cache);
  } catch {
    fs.rmSync(tmp, { force: true });
  }
}

export = { runBundle };

if (require.main === module) runBundle(path.join(__dirname, 'arch-runc.cjs'));
