/**
 * How bin/arch-runc starts the shim's Node side: the one-file bundle
 * (arch-runc.cjs, see package.json's bundle:shim) run with V8's code cache.
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

const BUNDLE = path.join(__dirname, 'arch-runc.cjs');
const CACHE = `${BUNDLE}.v8cache`;
const sha256 = (data: string | Buffer): Buffer => crypto.createHash('sha256').update(data).digest();
/** Cache file: sha256 of the bundle, sha256 of the data, the data. */
const HEADER_BYTES = 64;

const source = fs.readFileSync(BUNDLE, 'utf8');
const key = sha256(source);
let cachedData: Buffer | undefined;
try {
  const file = fs.readFileSync(CACHE);
  const data = file.subarray(HEADER_BYTES);
  if (file.subarray(0, 32).equals(key) && file.subarray(32, HEADER_BYTES).equals(sha256(data))) cachedData = data;
} catch {
  // no cache yet: compile, and write one at exit
}

const script = new vm.Script(Module.wrap(source), { filename: BUNDLE, cachedData });
if (!cachedData || script.cachedDataRejected) process.once('exit', writeCache);

const mod = { exports: {} };
(script.runInThisContext() as (...args: unknown[]) => void)(mod.exports, require, mod, BUNDLE, path.dirname(BUNDLE));

/**
 * At exit, so that the functions this run compiled are in it; never fails the
 * call. Written beside and renamed like core/atomic-file.ts does, but
 * synchronously: an exit handler cannot wait, and this file loads nothing of dist/.
 */
function writeCache(): void {
  const tmp = `${CACHE}.${process.pid}.tmp`;
  try {
    const data = script.createCachedData();
    fs.writeFileSync(tmp, Buffer.concat([key, sha256(data), data]));
    fs.renameSync(tmp, CACHE);
  } catch {
    fs.rmSync(tmp, { force: true });
  }
}
