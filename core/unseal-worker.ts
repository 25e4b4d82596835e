/**
 * The worker thread of core/seal.ts's Unsealer (loaded by path: new
 * Worker(URL)): for each { job, next } the parent posts, decrypts chunks of
 * job's file alongside the parent (openChunks, the shared counter `next`
 * says which) and replies {} when none is left, or { error, reason } (reason:
 * a CheckpointUnusableError's, e.g. a chunk that failed authentication).
 */
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { CheckpointUnusableError, errorMessage } from '../contract/errors.js';
import { DirectBuffer, DirectReader } from './direct-append.js';
import { DIRECT_READ_BYTES, openChunks, SEAL_CHUNK_BYTES, type OpenJob } from './seal.js';

const port = parentPort!;
let buf: Buffer | undefined;
let direct: DirectBuffer | undefined;
port.on('message', ({ job, next }: { job: OpenJob; next: Int32Array }) => {
  void (async () => {
    const fd = fs.openSync(job.src, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      // The parent created dest (0600, in its own scratch dir): only written here.
      const out = fs.openSync(job.dest, fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW);
      try {
        if (job.direct) direct ??= new DirectBuffer(DIRECT_READ_BYTES);
        const reader = new DirectReader(fd, job.src, job.entry.chunkBytes <= SEAL_CHUNK_BYTES ? direct : undefined);
        try {
          const need = Math.max(job.entry.chunkBytes, SEAL_CHUNK_BYTES) + 16;
          if (!reader.direct && (!buf || buf.length < need)) buf = Buffer.allocUnsafe(need);
          await openChunks(reader, out, job, next, buf ?? Buffer.alloc(0));
        } finally {
          reader.close();
        }
      } finally {
        fs.closeSync(out);
      }
    } finally {
      fs.closeSync(fd);
    }
  })().then(
    () => port.postMessage({}),
    (err: unknown) =>
      port.postMessage(
        err instanceof CheckpointUnusableError
          ? { error: err.message.replace(/^checkpoint unusable \([^)]*\): /, ''), reason: err.reason }
          : { error: errorMessage(err) },
      ),
  );
});
