/**
 * A worker thread of core/chunk-pool.ts (loaded by path): runs each posted
 * ChunkJob with chunk-work.ts and posts its reply. workerData: the chunk
 * keys (raw bytes), when the store has a key.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ChunkWork, type ChunkJob } from './chunk-work.js';

const data = workerData as { keys?: { id: string; key: Uint8Array; idKey: Uint8Array } } | null;
const work = new ChunkWork(
  data?.keys && {
    key: { id: data.keys.id, key: Buffer.from(data.keys.key) },
    idKey: Buffer.from(data.keys.idKey),
  },
);
const port = parentPort!;
port.on('message', (m: ChunkJob) => port.postMessage(work.run(m)));
