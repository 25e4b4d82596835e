import fs from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './atomic-file.js';

/**
 * What a runtime binary says about itself (its version, a feature CRIU
 * supports on this kernel), kept per boot in a root-only file instead of
 * exec'ing the binary every time: each fork+exec costs milliseconds that a
 * reclaim notice (`arch-cli finalize`) does not have, and the answer cannot
 * change until the binary or the kernel does.
 *
 * The key is the binary's identity on this boot: its path, inode, size and
 * mtime, and the boot id. An upgrade (a new file: a new inode), a binary
 * edited in place (mtime, size) or a reboot (a new kernel) asks again.
 */
export async function binaryKey(binary: string): Promise<string | undefined> {
  const file = await resolveBinary(binary);
  if (!file) return undefined;
  try {
    const st = await fs.stat(file);
    const boot = (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
    return `${boot}:${file}:${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return undefined;
  }
}

/** An absolute path as it is; a bare name where PATH finds it (as exec would). */
async function resolveBinary(binary: string): Promise<string | undefined> {
  if (path.isAbsolute(binary)) return binary;
  if (binary.includes('/')) return path.resolve(binary);
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (!path.isAbsolute(dir)) continue; // a relative PATH entry depends on the cwd: not a stable identity
    const file = path.join(dir, binary);
    if (
      await fs.access(file, fs.constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return file;
  }
  return undefined;
}

/**
 * The fact `ask` finds about `binary`, from `cacheFile` (a JSON object of
 * key → answer) when it holds one for this binary's identity that `valid`
 * accepts; otherwise asked and written back. A cache that cannot be read or
 * written only costs the asking.
 */
export async function cachedBinaryFact(
  binary: string,
  cacheFile: string,
  ask: () => Promise<string>,
  valid: (answer: string) => boolean,
): Promise<string> {
  const key = await binaryKey(binary);
  let cache: Record<string, unknown> = {};
  try {
    const parsed: unknown = JSON.parse(await fs.readFile(cacheFile, 'utf8'));
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) cache = parsed as Record<string, unknown>;
  } catch {
    // none yet (or unreadable): ask, and write a fresh one
  }
  const hit = key ? cache[key] : undefined;
  if (typeof hit === 'string' && valid(hit)) return hit;
  const answer = await ask();
  if (key) await writeRunFile(cacheFile, JSON.stringify({ ...cache, [key]: answer })).catch(() => undefined);
  return answer;
}

/** Files below /run/arch: root's only. */
export async function writeRunFile(file: string, text: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, text, { mode: 0o600 });
}
