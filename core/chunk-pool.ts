import os from 'node:os';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import type { ChunkKeys } from './chunk-codec.js';
import { replyError, ChunkWork, type ChunkJob, type ChunkReply } from './chunk-work.js';
import { usesWorkerThreads } from './digest.js';
import { helperThreadsBesideCriu } from './growing-files.js';

/**
 * Hashing, compressing, encrypting and checking chunks on worker threads
 * (one per core, at most MAX_WORKERS; for a checkpoint, one per core left
 * beside CRIU's and this thread's: besideCriu), so that a checkpoint's
 * chunks are produced while CRIU is still writing and this thread stays
 * free for I/O.
 * Where this process may not start workers (the shim: core/digest.ts says
 * why) the same work runs on this thread, a chunk at a time.
 */
const MAX_WORKERS = 4;

/** A hashed chunk still held by the thread that read it, to be encoded or dropped. */
export interface HeldChunk {
  id: string;
  job: number;
  lane: number;
  length: number;
}

interface Lane {
  worker?: Worker;
  pending: Map<number, { resolve: (r: ChunkReply) => void; reject: (e: Error) => void }>;
}

export class ChunkPool {
  private readonly lanes: Lane[];
  private readonly here?: ChunkWork;
  private nextJob = 1;

  /** `workers` 0: every chunk on this thread (where starting workers costs more than they save). */
  constructor(keys?: ChunkKeys, workers = Math.min(MAX_WORKERS, os.availableParallelism())) {
    if (!usesWorkerThreads() || workers === 0) {
      this.here = new ChunkWork(keys);
      this.lanes = [{ pending: new Map() }];
      return;
    }
    const workerData = keys ? { keys: { id: keys.key.id, key: keys.key.key, idKey: keys.idKey } } : {};
    this.lanes = Array.from({ length: workers }, () => {
      const lane: Lane = { pending: new Map() };
      // trackUnmanagedFds off: a chunk file a worker opens is closed by this thread (after its
      // fdatasync), so the worker must neither warn when the number comes back nor close it at exit.
      const w = new Worker(new URL('../core/chunk-worker.js', import.meta.url), {
        workerData,
        trackUnmanagedFds: false,
      });
      w.on('message', (r: ChunkReply) => {
        const p = lane.pending.get(r.job);
        lane.pending.delete(r.job);
        if (r.error) p?.reject(replyError(r.error));
        else p?.resolve(r);
      });
      const fail = (err: Error) => {
        for (const p of lane.pending.values()) p.reject(err);
        lane.pending.clear();
      };
      w.on('error', fail);
      w.on('exit', (code) => fail(new Error(`chunk worker exited (${code})`)));
      lane.worker = w;
      return lane;
    });
  }

  /** A pool for a checkpoint: as many workers as there are cores beside CRIU's and this thread's (none on 2 cores). */
  static besideCriu(keys?: ChunkKeys): ChunkPool {
    return new ChunkPool(keys, helperThreadsBesideCriu(MAX_WORKERS));
  }

  /** Read and hash `length` bytes of `fd` at `offset`; the plain bytes stay with the worker until encode() or drop(). */
  async hash(fd: number, offset: number, length: number): Promise<HeldChunk> {
    const lane = this.idlest();
    const job = this.nextJob++;
    const r = await this.send(lane, { op: 'hash', job, fd, offset, length });
    return { id: r.id!, job, lane, length };
  }

  /** The stored bytes of a held chunk (compressed, encrypted with a key). */
  async encode(h: HeldChunk): Promise<Buffer> {
    const r = await this.send(h.lane, { op: 'encode', job: h.job, id: h.id, length: h.length });
    const s = r.stored!;
    return Buffer.from(s.buffer, s.byteOffset, s.byteLength);
  }

  /** Encode a held chunk into a new file at `dest` (made by the thread that encodes it); its fd is left open. */
  async encodeTo(h: HeldChunk, dest: string): Promise<{ fd: number; size: number }> {
    const r = await this.send(h.lane, { op: 'encode', job: h.job, id: h.id, length: h.length, dest });
    return r.written!;
  }

  drop(h: HeldChunk): void {
    this.send(h.lane, { op: 'drop', job: h.job }).catch(() => undefined);
  }

  /** Check a stored chunk (decodeChunk) and write its plain bytes to `fd` at `offset`. */
  async decode(stored: Buffer, id: string, size: number, what: string, fd: number, offset: number): Promise<void> {
    await this.send(this.idlest(), { op: 'decode', job: this.nextJob++, stored, id, size, what, fd, offset });
  }

  async close(): Promise<void> {
    await Promise.all(this.lanes.map((l) => l.worker?.terminate()));
  }

  private idlest(): number {
    let best = 0;
    this.lanes.forEach((l, i) => {
      if (l.pending.size < this.lanes[best]!.pending.size) best = i;
    });
    return best;
  }

  private async send(lane: number, m: ChunkJob): Promise<ChunkReply> {
    if (this.here) {
      await yieldToLoop(); // let I/O completions in between chunks
      const r = this.here.run(m);
      if (r.error) throw replyError(r.error);
      return r;
    }
    const l = this.lanes[lane]!;
    return new Promise((resolve, reject) => {
      l.pending.set(m.job, { resolve, reject });
      l.worker!.postMessage(m);
    });
  }
}
