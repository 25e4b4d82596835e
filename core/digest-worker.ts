/**
 * The worker thread of core/digest.ts (loaded by path: new Worker(URL)).
 * Two roles:
 *  - workerData.follow = { dir, pattern }: follow matching files in dir until
 *    the parent posts 'finish', then post { digests: [[name, digest], ...] };
 *  - otherwise: for each posted { file }, post back its { size, sha256 }.
 * Reads are synchronous (no thread-pool round trip per block), which is what
 * lets one thread reach openssl's speed.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { GrowingFilesDigest } from './growing-files.js';

interface Digest {
  size: number;
  sha256: string;
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

async function follow({ dir, pattern }: { dir: string; pattern: string }): Promise<[string, Digest][]> {
  const files = new GrowingFilesDigest(dir, new RegExp(pattern));
  let finishing = false;
  port.on('message', (m) => {
    if (m === 'finish') finishing = true;
  });
  for (;;) {
    const last = finishing;
    files.catchUp(buf);
    if (last) break;
    await nap(5);
  }
  return files.finish();
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
