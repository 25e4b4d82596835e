/**
 * The worker thread of core/digest.ts (loaded by path: new Worker(URL)).
 * Two roles:
 *  - workerData.follow = { dir, pattern }: follow matching files in dir until
 *    the parent posts 'finish', then post { digests: [[name, digest], ...] };
 *  - otherwise: for each posted { file }, post back its { size, sha256 }.
 * Reads are synchronous (no thread-pool round trip per block), which is what
 * lets one thread reach openssl's speed.
 */
import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';

interface Digest {
  size: number;
  sha256: string;
}

interface Followed {
  fd: number;
  pos: number;
  hash: Hash;
}

/** Twice digest.ts's READ_SIZE: this thread does nothing but read and hash. */
const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
const nap = (ms: number) => new Promise((r) => setTimeout(r, ms));
const port = parentPort!;

function hashFile(file: string): Digest {
  const fd = fs.openSync(file, 'r');
  try {
    const h = createHash('sha256');
    let pos = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
    return { size: pos, sha256: h.digest('hex') };
  } finally {
    fs.closeSync(fd);
  }
}

// Read what has been written since last time; a file that shrank was rewritten: start over.
function catchUp(f: Followed): void {
  const size = fs.fstatSync(f.fd).size;
  if (size < f.pos) {
    f.hash = createHash('sha256');
    f.pos = 0;
  }
  while (f.pos < size) {
    const n = fs.readSync(f.fd, buf, 0, Math.min(buf.length, size - f.pos), f.pos);
    if (n === 0) break;
    f.hash.update(buf.subarray(0, n));
    f.pos += n;
  }
}

async function follow({ dir, pattern }: { dir: string; pattern: string }): Promise<[string, Digest][]> {
  const re = new RegExp(pattern);
  const files = new Map<string, Followed>();
  let finishing = false;
  port.on('message', (m) => {
    if (m === 'finish') finishing = true;
  });
  for (;;) {
    const last = finishing;
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      // not there yet
    }
    for (const name of names) {
      if (!re.test(name) || files.has(name)) continue;
      try {
        files.set(name, { fd: fs.openSync(path.join(dir, name), 'r'), pos: 0, hash: createHash('sha256') });
      } catch {
        // gone again: not one of the dump's files
      }
    }
    for (const f of files.values()) catchUp(f);
    if (last) break;
    await nap(5);
  }
  const digests: [string, Digest][] = [];
  for (const [name, f] of files) {
    fs.closeSync(f.fd);
    digests.push([name, { size: f.pos, sha256: f.hash.digest('hex') }]);
  }
  return digests;
}

const data = workerData as { follow?: { dir: string; pattern: string } } | null;
if (data?.follow) {
  follow(data.follow).then(
    (digests) => port.postMessage({ digests }),
    (err: Error) => port.postMessage({ error: err.message }),
  );
} else {
  port.on('message', (job: { file: string }) => {
    try {
      port.postMessage(hashFile(job.file));
    } catch (err) {
      port.postMessage({ error: (err as Error).message });
    }
  });
}
