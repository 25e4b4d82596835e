import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/**
 * The sha256 of files another process is still appending to (CRIU's page
 * images during a dump), kept up as they grow: each catchUp() opens the
 * matching files that appeared and hashes what was written since. Reads
 * stay below the size the kernel reports, which it advances once the data
 * is in the page cache. A file that shrank was rewritten: hashed again from
 * its start. Used by a worker thread (core/digest-worker.ts) and, where no
 * core is left for one, by the checkpointing thread itself (core/digest.ts).
 * Reads are synchronous: no thread-pool round trip per block.
 */
export class GrowingFilesDigest {
  private readonly files = new Map<string, { fd: number; pos: number; hash: Hash }>();

  constructor(
    private readonly dir: string,
    private readonly pattern: RegExp,
  ) {}

  /**
   * Hash what was appended since the last call, at most `budget` bytes of
   * it (`buf` at a time); true when more is waiting (the caller gives its
   * event loop a turn, then calls again).
   */
  catchUp(buf: Buffer, budget = Infinity): boolean {
    for (const [name, fd] of openNewFiles(this.dir, this.pattern, this.files))
      this.files.set(name, { fd, pos: 0, hash: createHash('sha256') });
    let left = budget;
    for (const f of this.files.values()) {
      const size = fs.fstatSync(f.fd).size;
      if (size < f.pos) {
        f.hash = createHash('sha256');
        f.pos = 0;
      }
      while (f.pos < size) {
        if (left <= 0) return true;
        const n = fs.readSync(f.fd, buf, 0, Math.min(buf.length, size - f.pos, left), f.pos);
        if (n === 0) break;
        f.hash.update(buf.subarray(0, n));
        f.pos += n;
        left -= n;
      }
    }
    return false;
  }

  /** Each file's size and sha256 as hashed so far, by name; the files are closed. */
  finish(): [string, { size: number; sha256: string }][] {
    const out: [string, { size: number; sha256: string }][] = [];
    for (const [name, f] of this.files) out.push([name, { size: f.pos, sha256: f.hash.digest('hex') }]);
    this.close();
    return out;
  }

  close(): void {
    for (const f of this.files.values()) fs.closeSync(f.fd);
    this.files.clear();
  }
}

/**
 * The files matching `pattern` in `dir` that `known` does not have yet,
 * opened for reading. Never through a symlink, and regular files only: the
 * dump directory can lie in a store others may write. A name gone again, a
 * symlink or anything else is skipped: not one of the dump's files.
 */
export function openNewFiles(dir: string, pattern: RegExp, known: { has(name: string): boolean }): [string, number][] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir);
  } catch {
    // not made yet
  }
  const opened: [string, number][] = [];
  for (const name of names) {
    if (!pattern.test(name) || known.has(name)) continue;
    let fd: number;
    try {
      // O_NONBLOCK: a FIFO planted under a page image's name would hold this thread in open().
      fd = fs.openSync(path.join(dir, name), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    } catch {
      continue; // gone again, or a symlink
    }
    if (fs.fstatSync(fd).isFile()) opened.push([name, fd]);
    else fs.closeSync(fd); // not a file CRIU wrote
  }
  return opened;
}

/**
 * The pause between two looks at files another process is writing, cut
 * short by wake() once that process is done: whoever waits for the last
 * look (a frozen container, for one) need not wait out the pause.
 */
export class Nap {
  private wakeUp?: () => void;

  for(ms: number): Promise<void> {
    return new Promise((r) => setTimeout((this.wakeUp = r), ms));
  }

  wake(): void {
    this.wakeUp?.();
  }
}

/**
 * Threads a checkpoint may start to hash, compress or encrypt beside CRIU:
 * the cores left once CRIU and the checkpointing thread have one each. On
 * a 2-core node that is none: a worker thread's own start (~80 ms of CPU
 * here, a V8 isolate and Node's bootstrap) then came out of CRIU's core,
 * and the checkpointing thread, idle while it waits for runc, does the
 * work sooner itself (bench/chunking.ts, README "2026-12-05, threads").
 */
export function helperThreadsBesideCriu(max: number): number {
  return Math.max(0, Math.min(max, (os.availableParallelism?.() ?? os.cpus().length) - 2));
}
