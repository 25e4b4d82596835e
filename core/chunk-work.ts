import fs from 'node:fs';
import { CheckpointUnusableError } from '../contract/errors.js';
import { chunkIdOf, decodeChunk, encodeChunk, type ChunkKeys } from './chunk-codec.js';

/**
 * The CPU part of store format 2, one chunk at a time, as run by a worker
 * thread of core/chunk-pool.ts (or by the calling thread where workers are
 * not allowed: the shim). Bytes come from and go to file descriptors the
 * caller opened (a descriptor is the process's, so a worker can use it):
 * the plain bytes never cross threads.
 *
 * A chunk is hashed first and kept here; the caller then asks for it to be
 * encoded (a chunk the store lacks) or dropped (one it has): a second
 * checkpoint compresses and encrypts only what changed.
 */
export type ChunkJob =
  | { op: 'hash'; job: number; fd: number; offset: number; length: number }
  | { op: 'encode'; job: number; id: string; length: number; dest?: string }
  | { op: 'drop'; job: number }
  | {
      op: 'decode';
      job: number;
      stored: Uint8Array;
      id: string;
      size: number;
      what: string;
      fd: number;
      offset: number;
    };

export interface ChunkReply {
  job: number;
  id?: string;
  stored?: Uint8Array;
  /** encode with `dest`: the new file, still open (for the caller's fdatasync), and its size. */
  written?: { fd: number; size: number };
  error?: { message: string; reason?: string };
}

/** Read buffers kept for reuse (fresh megabyte buffers cost a page fault every 4 KiB). */
const SPARE_BUFFERS = 16;

export class ChunkWork {
  private readonly held = new Map<number, Buffer>();
  private readonly spare: Buffer[] = [];

  constructor(private readonly keys?: ChunkKeys) {}

  private buffer(length: number): Buffer {
    const b = this.spare.pop();
    return b && b.length >= length ? b : Buffer.allocUnsafe(Math.max(length, 1 << 20));
  }

  private release(b: Buffer | undefined): void {
    if (b && this.spare.length < SPARE_BUFFERS) this.spare.push(b);
  }

  run(m: ChunkJob): ChunkReply {
    try {
      switch (m.op) {
        case 'hash': {
          const buf = this.buffer(m.length);
          this.held.set(m.job, buf);
          const plain = readExactly(m.fd, m.offset, m.length, buf);
          return { job: m.job, id: chunkIdOf(plain, this.keys) };
        }
        case 'encode': {
          const buf = this.held.get(m.job);
          if (!buf) throw new Error(`chunk job ${m.job}: nothing held to encode`);
          this.held.delete(m.job);
          const stored = encodeChunk(buf.subarray(0, m.length), m.id, this.keys, !!m.dest);
          this.release(buf);
          if (m.dest) return { job: m.job, written: { fd: writeNewFile(m.dest, stored), size: stored.length } };
          return { job: m.job, stored };
        }
        case 'drop':
          this.release(this.held.get(m.job));
          this.held.delete(m.job);
          return { job: m.job };
        case 'decode': {
          const stored = Buffer.from(m.stored.buffer, m.stored.byteOffset, m.stored.byteLength);
          const buf = this.buffer(m.size);
          try {
            writeExactly(m.fd, decodeChunk(stored, m.id, m.size, m.what, this.keys, buf), m.offset);
          } finally {
            this.release(buf);
          }
          return { job: m.job };
        }
      }
    } catch (err) {
      const e = err as Error & { reason?: string };
      return {
        job: m.job,
        error: { message: e.message, ...(e instanceof CheckpointUnusableError ? { reason: e.reason } : {}) },
      };
    }
  }
}

/** The error a reply carries, as the caller throws it (a CheckpointUnusableError keeps its reason). */
export function replyError(e: NonNullable<ChunkReply['error']>): Error {
  if (e.reason === undefined) return new Error(e.message);
  return Object.assign(new CheckpointUnusableError(e.reason, ''), { message: e.message });
}

function readExactly(fd: number, offset: number, length: number, b: Buffer): Buffer {
  let got = 0;
  while (got < length) {
    const r = fs.readSync(fd, b, got, length - got, offset + got);
    if (r === 0) throw new Error(`short read at ${offset + got}`);
    got += r;
  }
  return b.subarray(0, length);
}

/**
 * `b` written to a file made here (never an existing one, nor through a
 * symlink: O_EXCL), left open. Written from this thread, straight from the
 * codec's reused buffer: the stored bytes never cross threads, and a fresh
 * buffer per chunk (each page of it a fault on these VMs) is never needed.
 */
function writeNewFile(file: string, b: Buffer): number {
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  const fd = fs.openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  try {
    writeExactly(fd, b, 0);
    return fd;
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
    throw err;
  }
}

function writeExactly(fd: number, b: Buffer, offset: number): void {
  let done = 0;
  while (done < b.length) done += fs.writeSync(fd, b, done, b.length - done, offset + done);
}
