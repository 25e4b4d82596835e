import fs, { type BigIntStats } from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import { CheckpointUnusableError } from '../contract/errors.js';
import {
  CLOSED_FILES_MAX,
  cutAppendedFiles,
  dirThere,
  dropLinks,
  linkBack,
  linkOpenFiles,
  openFileLink,
  openSecondName,
  pruneLinks,
  putBackFiles,
  recordClosedFiles,
  SetAside,
  setAsideIn,
  type ClosedFile,
} from './closed-files.js';
import { openBeneath } from './host-dirs.js';
import { DELETED_SUFFIX, openFds, mappedFiles } from './open-files.js';
import { isPlainRelativePath } from './paths.js';

/**
 * Files a job keeps open for writing in its shared work directory roll back
 * with its checkpoint.
 *
 * The work directory is not part of a checkpoint: it lives on the shared
 * filesystem and outlives every copy of the job. A checkpoint that left the
 * job running (periodic protection) is followed by more writes; when the node
 * is then lost, the job is restored from that checkpoint while its open
 * files hold what the lost run wrote after it. CRIU refuses such a file
 * (opened without O_APPEND it checks the size it recorded: "has bad size"),
 * and the job would start over from nothing; an O_APPEND log would get the
 * lost run's lines twice. So the checkpoint records, while the job's
 * processes are stopped, the size of every regular file in the work
 * directory they hold open for writing, and a restore cuts each file back to
 * that size first: the restored processes write that part again, as they
 * did before. A file the job rewrites in place (a database: opened for
 * reading and writing, or written elsewhere than at its end) cannot be cut
 * back: cut, a SQLite database that grew after the checkpoint was left with
 * pages its header still counted ("database disk image is malformed"), and
 * a same-sized one kept what the lost run wrote. So its contents are kept
 * with the checkpoint, read while the job is stopped (up to the node's
 * ARCH_KEPT_FILES_MAX_BYTES, KEPT_FILES), and written back whole. A file that
 * is shorter or another file now is not the job's any more (a non-append one
 * is refused by CRIU anyway: the reason names it here, before CRIU starts).
 *
 * Paths come from the job (its file names): every one is walked below the
 * work directory without following a symlink, and only a regular file that
 * is the very file the job has open (same inode) is recorded or cut.
 */
export interface WorkFile {
  /** Relative to the work directory. */
  path: string;
  /** Bytes when the job was stopped for the checkpoint. */
  size: number;
  /** Its inode number (decimal; the same on every node of a shared filesystem): another file under the name is left alone. */
  ino: string;
  /** Opened O_APPEND (a log): a shorter one (rotated, truncated by hand) is left as it is, since CRIU accepts it. */
  append: boolean;
  /** Rewritten in place (see above): its contents roll back, not only its size. Absent: written at its end only. */
  inPlace?: InPlace;
  /**
   * Its contents were kept: where its `size` bytes start in KEPT_FILES. Every file rewritten in place
   * (up to the node's limit), written back whole; and every other non-append one up to
   * SMALL_FILE_BYTES, cut back as before where it is longer, written back where it is shorter, and
   * made again where it is gone (a temporary file the job renamed after the checkpoint, as a file
   * written whole is: write, then rename).
   */
  kept?: number;
  /** With `kept`: its mode bits and owner, for a file made again. */
  mode?: number;
  uid?: number;
  gid?: number;
}

/** What a checkpoint records of a file the job rewrites in place. */
export interface InPlace {
  /** Its modification time then, in ns: a file not kept may be restored into only if it is unchanged since. */
  mtimeNs: string;
}

/** Non-append files up to this size are kept whole with the checkpoint even when written at their end only. */
export const SMALL_FILE_BYTES = 1024 * 1024;

/** The node setting that bounds the bytes of rewritten files a checkpoint keeps. */
export const KEPT_FILES_MAX_FIELD = 'ARCH_KEPT_FILES_MAX_BYTES';

/** Where a checkpoint keeps rewritten files' contents, one after another in the order they are recorded. */
export interface KeptFilesSink {
  /** Copies `size` bytes of `h` from its start; the offset they were written at, or undefined over the limit. */
  keep(h: FileHandle, size: number): Promise<number | undefined>;
}

/** Captured work files, each still open so that the checkpoint can make its recorded size durable. */
export interface CapturedWorkFiles {
  files: WorkFile[];
  /** The place's other files, which the job opens and closes (core/closed-files.ts). */
  closed: ClosedFiles;
  /** The contents of the files rewritten in place and of small ones, kept through `sink` (each one's `kept` set). */
  keepContents(sink: KeptFilesSink): Promise<void>;
  /** fsync each file (its recorded bytes must outlive the node), then close them. */
  sync(fsync: boolean): Promise<void>;
  close(): Promise<void>;
  /**
   * Published: the place's older link sets let go, the newest `keep` kept
   * (the store keeps as many checkpoints); not published (`keep` undefined):
   * this checkpoint's own let go.
   */
  settleLinks(keep: number | undefined): void;
}

const O_ACCMODE = 3;
const { O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_DIRECTORY } = fs.constants;

interface OpenForWrite {
  ino: bigint;
  dev: bigint;
  size: number;
  append: boolean;
  inPlace: boolean;
}

/**
 * The regular files `pids` hold open for writing, or map shared and
 * writable, below each of `containerPaths`, by their path there, in one pass
 * over the processes' descriptors and one over their mappings (the job is
 * stopped meanwhile). A file below two of them (a mount inside another)
 * counts for the deeper one, the mount the container sees it through.
 */
async function openForWrite(
  pids: readonly number[],
  containerPaths: readonly string[],
): Promise<Map<string, OpenForWrite>[]> {
  const prefixes = containerPaths.map((p) => (p.endsWith('/') ? p : `${p}/`));
  const placeOf = (t: string): number => {
    let best = -1;
    for (const [i, p] of prefixes.entries())
      if (t.startsWith(p) && (best < 0 || p.length > prefixes[best]!.length)) best = i;
    return best;
  };
  const found = prefixes.map(() => new Map<string, OpenForWrite>());
  const wanted = (t: string) => placeOf(t) >= 0 && !t.endsWith(DELETED_SUFFIX);
  /** The file at `target` (stat'ed through /proc as `st`) noted as written: one file open or mapped several times rolls back like its non-append uses (CRIU checks those). */
  const note = (target: string, st: BigIntStats, append: boolean, inPlace: boolean) => {
    const i = placeOf(target);
    const rel = target.slice(prefixes[i]!.length);
    if (!isPlainRelativePath(rel)) return;
    const seen = found[i]!.get(rel);
    found[i]!.set(rel, {
      ino: st.ino,
      dev: st.dev,
      size: Number(st.size),
      append: append && (seen?.append ?? true),
      inPlace: inPlace || (seen?.inPlace ?? false),
    });
  };
  for await (const f of openFds(pids, wanted)) {
    const info = await fsp.readFile(f.info, 'utf8').catch(() => '');
    const flags = parseInt(/^flags:\s*([0-7]+)$/m.exec(info)?.[1] ?? '', 8);
    if (!Number.isInteger(flags) || (flags & O_ACCMODE) === O_RDONLY) continue;
    const st = await fsp.stat(f.proc, { bigint: true }).catch(() => undefined);
    if (!st?.isFile()) continue;
    const append = (flags & O_APPEND) !== 0;
    // Opened for reading and writing (SQLite, HDF5, LMDB, a memory-mapped array), or written up to
    // somewhere before its end (it went back): a database, not a results file or a log. A write-only
    // one at position 0 counts as neither (another descriptor writes it: that one says).
    const pos = Number(/^pos:\s*(\d+)$/m.exec(info)?.[1] ?? st.size);
    note(f.target, st, append, !append && ((flags & O_ACCMODE) === O_RDWR || (pos > 0 && pos < Number(st.size))));
  }
  // Mapped shared and writable: written in place through memory, whether or not a descriptor is still
  // open (a C program's mmap, Java's MappedByteBuffer, NumPy's memmap once its file object is gone).
  // Unseen, the restored job found the lost run's writes in it, its memory from the checkpoint.
  for await (const m of mappedFiles(pids, wanted)) {
    if (!m.sharedWritable) continue;
    const st = await fsp.stat(m.proc, { bigint: true }).catch(() => undefined);
    if (st?.isFile()) note(m.target, st, false, true);
  }
  return found;
}

/** Where open files are recorded: the path the container sees, and the host directory behind it. */
export interface OpenFilesPlace {
  containerPath: string;
  /** The host directory (for the work dir: the walked, held one, a /proc/self/fd path). */
  dir: string;
}

/**
 * What the job holds open for writing in each place, read while its
 * processes are stopped. Each name is walked below the place's host
 * directory without following a symlink; files whose name there is not the
 * file the job has open (a mount over part of it, a rename) are left out.
 */
export async function captureOpenFiles(
  pids: readonly number[],
  places: readonly OpenFilesPlace[],
): Promise<CapturedWorkFiles[]> {
  const open = await openForWrite(
    pids,
    places.map((p) => p.containerPath),
  );
  const captured: CapturedWorkFiles[] = [];
  try {
    for (const [i, place] of places.entries())
      captured.push(
        await holdOpenFiles(
          place.dir,
          open[i]!,
          await recordClosedFiles(place.dir, new Set(open[i]!.keys()), CLOSED_FILES_MAX, { links: true }),
        ),
      );
  } catch (err) {
    await Promise.all(captured.map((c) => c.close()));
    throw err;
  }
  return captured;
}

/** The work directory's open files (captureOpenFiles for that one place). */
export async function captureWorkFiles(
  pids: readonly number[],
  containerPath: string,
  workDir: string,
): Promise<CapturedWorkFiles> {
  return (await captureOpenFiles(pids, [{ containerPath, dir: workDir }]))[0]!;
}

async function holdOpenFiles(
  dir: string,
  open: Map<string, OpenForWrite>,
  closed: ClosedFiles,
): Promise<CapturedWorkFiles> {
  const files: WorkFile[] = [];
  const handles: FileHandle[] = [];
  for (const [rel, f] of open) {
    const h = await openBeneath(dir, rel, O_RDONLY).catch(() => undefined);
    if (!h) continue;
    const st = await h.stat({ bigint: true }).catch(() => undefined);
    if (!st || st.ino !== f.ino || st.dev !== f.dev) {
      await h.close();
      continue;
    }
    files.push({
      path: rel,
      size: f.size,
      ino: f.ino.toString(),
      append: f.append,
      ...(f.inPlace ? { inPlace: { mtimeNs: st.mtimeNs.toString() } } : {}),
    });
    handles.push(h);
  }
  // Second names for them too: the lost run may rename one (a finished `result.part` to `result`) or delete it.
  if (closed.links)
    try {
      linkOpenFiles(
        dir,
        closed.links,
        files.map((f) => f.path),
      );
    } catch {
      /* without second names: as before */
    }
  const close = async () => {
    await Promise.all(handles.splice(0).map((h) => h.close().catch(() => undefined)));
  };
  return {
    files,
    closed,
    async keepContents(sink) {
      for (const [i, f] of files.entries()) {
        // An O_APPEND log is only cut: a shorter one was rotated, and stays as it is.
        if (!f.inPlace && (f.append || f.size > SMALL_FILE_BYTES)) continue;
        const h = handles[i]!;
        const offset = await sink.keep(h, f.size);
        if (offset === undefined) continue;
        const st = await h.stat();
        // Permission bits only: a file made again is never set-id.
        Object.assign(f, { kept: offset, mode: st.mode & 0o777, uid: st.uid, gid: st.gid });
      }
    },
    async sync(fsync: boolean) {
      try {
        if (fsync) await Promise.all(handles.map((h) => h.sync()));
      } finally {
        await close();
      }
    },
    close,
    settleLinks(keep) {
      // A place the job (or its owner) removed meanwhile has nothing left to let go.
      try {
        if (keep !== undefined) pruneLinks(dir, keep);
        else if (closed.links) dropLinks(dir, closed.links);
      } catch {
        /* next time */
      }
    },
  };
}

/** KEPT_FILES being written: the sink the captured files copy into, and what did not fit. */
export interface KeptFilesWriter {
  sink: KeptFilesSink;
  /** Bytes kept so far. */
  bytes(): number;
  /** Bytes of the rewritten files that did not fit under the limit. */
  left(): number;
  close(): Promise<void>;
}

const COPY_STEP = 1024 * 1024;

/**
 * Open `file` (new) for the kept contents of rewritten files, at most
 * `maxBytes` of them in all: a file that would pass the limit is not kept
 * (the restore then takes it only unchanged).
 */
export async function keptFilesWriter(file: string, maxBytes: number): Promise<KeptFilesWriter> {
  let out: FileHandle | undefined;
  let bytes = 0;
  let left = 0;
  let buf: Buffer | undefined;
  return {
    sink: {
      async keep(h, size) {
        if (bytes + size > maxBytes) {
          left += size;
          return undefined;
        }
        out ??= await fsp.open(file, 'wx', 0o600);
        buf ??= Buffer.allocUnsafe(COPY_STEP);
        const offset = bytes;
        for (let at = 0; at < size;) {
          const { bytesRead } = await h.read(buf, 0, Math.min(COPY_STEP, size - at), at);
          // The job is stopped and the file is its own: shorter than its size a moment ago, something else writes it.
          if (bytesRead === 0)
            throw new Error(`a file the job rewrites in place shrank while it was read (${at} of ${size} bytes)`);
          await out.write(buf, 0, bytesRead, offset + at);
          at += bytesRead;
        }
        bytes += size;
        return offset;
      },
    },
    bytes: () => bytes,
    left: () => left,
    async close() {
      await out?.close();
      out = undefined;
    },
  };
}

/**
 * What a roll-back did to one file: cut from one size to another (held open, or `appended` to
 * between checkpoints: core/closed-files.ts), `rewritten` whole from its kept contents, or (made by
 * the lost run after the checkpoint) `setAside` into the directory `dir` at the top of the place.
 */
export interface RolledBack {
  path: string;
  from: number;
  to: number;
  how: 'cut' | 'rewritten' | 'appended' | 'putBack' | 'setAside' | 'changed';
  dir?: string;
}

/** What a checkpoint recorded of a place's files the job did not hold open. */
export interface ClosedFiles {
  files: ClosedFile[];
  /** The directories, symlinks and other entries there; absent in checkpoints from before ARCH recorded them. */
  nonFiles?: string[];
  /** Where each of `files` has a second name (core/closed-files.ts's LINKS_PREFIX directory at the top of the place). */
  links?: string;
  /** More entries than it records: what is not in `files` was not necessarily made after it. */
  more: boolean;
}

/** Where recorded files are rolled back, for the reason a refusal gives. */
export interface RollBackPlace {
  /** CheckpointUnusableError's reason. */
  reason: string;
  /** The place, after "in": "the work directory", "the volume at /results". */
  name: string;
  /** The same, after "is gone from": "its work directory". */
  own: string;
  fix: string;
}

export const WORK_DIR_PLACE: RollBackPlace = {
  reason: 'work-files',
  name: 'the work directory',
  own: 'its work directory',
  fix: 'keep the files a job writes in its work directory for that job alone',
};

/** Every file checked and held open, ready to be rolled back; nothing changed yet. */
export interface RollBack {
  /**
   * Cut each file back to its recorded size, and write each rewritten one's
   * kept contents back from `kept` (the checkpoint's KEPT_FILES, checked
   * with it), then close them.
   */
  apply(kept: string | undefined): Promise<RolledBack[]>;
  close(): Promise<void>;
}

/**
 * Check every recorded file below `dir` (walked, no symlink followed) and
 * hold it open: throws CheckpointUnusableError (the place's reason) naming
 * the file when one is gone, replaced, or (opened without O_APPEND) shorter:
 * CRIU could not restore the job into it. Nothing changes until apply(), so
 * a refusal of any place leaves every place as it was.
 */
export async function prepareRollBack(
  dir: string,
  files: readonly WorkFile[],
  place: RollBackPlace = WORK_DIR_PLACE,
  /** Absent in checkpoints from before ARCH recorded them: then nothing is set aside. */
  closed?: ClosedFiles,
): Promise<RollBack> {
  const refuse = (what: string) => new CheckpointUnusableError(place.reason, `${what}: ${place.fix}`);
  /**
   * Each file checked: held open, or (h undefined) gone and made again from its kept contents;
   * `linkBack`: gone, replaced or renamed by the lost run, put back from its second name (h is that).
   */
  const open: { f: WorkFile; h?: FileHandle; size: number; linkBack?: string }[] = [];
  const close = async () => {
    await Promise.all(open.splice(0).map(({ h }) => h?.close().catch(() => undefined)));
  };
  /** The directories the checkpoint recorded: one the lost run removed is made again for a file put back into it. */
  const remake = closed?.nonFiles ? new Set(closed.nonFiles) : undefined;
  /** The file's second name at the checkpoint (closed-files.ts), when it is still the file and its directory is there (or made again). */
  const secondName = async (i: number, f: WorkFile) =>
    dirThere(dir, f.path, remake) ? openSecondName(dir, closed?.links, openFileLink(i), f.ino, O_WRONLY) : undefined;
  try {
    for (const [i, f] of files.entries()) {
      if (!isPlainRelativePath(f.path))
        throw new CheckpointUnusableError(place.reason, `the checkpoint names "${f.path}" in ${place.name}`);
      let h: FileHandle | undefined;
      let linkBack: string | undefined;
      try {
        h = await openBeneath(dir, f.path, O_WRONLY);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' && f.kept !== undefined) {
          open.push({ f, size: 0 });
          continue;
        }
        h = await secondName(i, f);
        linkBack = openFileLink(i);
        if (!h) {
          const now =
            code === 'ENOENT'
              ? 'is gone from'
              : code === 'ELOOP'
                ? 'is a symlink now in'
                : code === 'ENOTREG'
                  ? 'is not a regular file now in'
                  : `cannot be opened (${code ?? String(err)}) in`;
          throw refuse(`"${f.path}", open in the job at the checkpoint, ${now} ${place.own}`);
        }
      }
      const entry = { f, h, size: 0, ...(linkBack ? { linkBack } : {}) };
      open.push(entry);
      let st = await h.stat({ bigint: true });
      if (st.ino.toString() !== f.ino) {
        // Another file under the name (the lost run wrote a new one and renamed it over): the recorded one back.
        const second = await secondName(i, f);
        if (!second)
          throw refuse(`"${f.path}" in ${place.name} is another file than the one the job had open at the checkpoint`);
        await h.close();
        entry.h = second;
        entry.linkBack = openFileLink(i);
        st = await second.stat({ bigint: true });
      }
      const size = (entry.size = Number(st.size));
      if (f.kept !== undefined) continue; // written back whole, whatever the lost run left
      if (f.inPlace) {
        if (size !== f.size || st.mtimeNs.toString() !== f.inPlace.mtimeNs)
          throw new CheckpointUnusableError(
            place.reason,
            `"${f.path}" in ${place.name}, which the job rewrites in place, changed after the checkpoint, and the checkpoint ` +
              `does not hold its contents (more than the checkpointing node's ${KEPT_FILES_MAX_FIELD}): ` +
              `raise ${KEPT_FILES_MAX_FIELD} in that node's settings so that checkpoints keep it`,
          );
      } else if (size < f.size && !f.append)
        throw refuse(`"${f.path}" in ${place.name} is shorter than at the checkpoint (${size} < ${f.size} bytes)`);
    }
  } catch (err) {
    await close();
    throw err;
  }
  return {
    async apply(kept) {
      const root = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
      const aside = new SetAside(root);
      try {
        const done: RolledBack[] = [];
        // Held open at the checkpoint, and deleted, renamed or replaced by the lost run (a finished
        // `result.part` renamed to `result`): its second name back under its name, then cut as the others.
        for (const entry of open) {
          if (!entry.linkBack) continue;
          if (!linkBack(root, aside, closed!.links!, entry.linkBack, entry.f.path, entry.f.ino, remake))
            throw refuse(`the directory of "${entry.f.path}" is gone from ${place.own}`);
          done.push({ path: entry.f.path, from: 0, to: entry.size, how: 'putBack' });
        }
        let from: FileHandle | undefined;
        try {
          for (const entry of open) {
            const { f, size } = entry;
            // Rewritten in place: always whole. Written at its end: cut back, unless it is gone or shorter.
            if (f.kept !== undefined && (f.inPlace || !entry.h || size < f.size)) {
              if (!kept) throw refuse(`the checkpoint lacks the kept contents of "${f.path}"`);
              from ??= await fsp.open(kept, O_RDONLY);
              // Gone: made again (never over a file that appeared at the name meanwhile), as it was.
              const made = !entry.h;
              const h = (entry.h ??= await openBeneath(dir, f.path, O_WRONLY, 0o600));
              if (made && f.mode !== undefined) {
                await h.chown(f.uid ?? 0, f.gid ?? 0);
                await h.chmod(f.mode & 0o777);
              }
              await copyKept(from, f.kept, h, f.size, () =>
                refuse(`the checkpoint's kept contents of "${f.path}" end early`),
              );
              done.push({ path: f.path, from: size, to: f.size, how: 'rewritten' });
            } else if (!f.inPlace && size > f.size) {
              const h = entry.h!;
              await h.truncate(f.size);
              done.push({ path: f.path, from: size, to: f.size, how: 'cut' });
            }
          }
        } finally {
          await from?.close();
        }
        if (closed) {
          // The files it opens and closes that the lost run deleted, moved or replaced: put back as they were.
          const putBack = new Set<string>();
          if (closed.links)
            for (const c of putBackFiles(dir, root, aside, closed.files, closed.links, remake)) {
              done.push({ ...c, how: 'putBack' });
              putBack.add(c.path);
            }
          if (!closed.more) {
            const recorded = new Set([...files.map((f) => f.path), ...closed.files.map((c) => c.path)]);
            setAsideIn(root, aside, recorded, closed.nonFiles && new Set(closed.nonFiles));
          }
          // The files it opens and closes: cut back only where only appended to, never refused; the
          // ones rewritten through their own inode since are left as the lost run left them, and said.
          const { cut, changed } = await cutAppendedFiles(
            dir,
            closed.files.filter((f) => !putBack.has(f.path)), // as recorded already
          );
          for (const c of cut) done.push({ ...c, how: 'appended' });
          for (const c of changed) done.push({ ...c, how: 'changed' });
        }
        for (const p of aside.moved) done.push({ path: p, from: 0, to: 0, how: 'setAside', dir: aside.to });
        return done;
      } finally {
        aside.close();
        fs.closeSync(root);
        await close();
      }
    },
    close,
  };
}

/** `size` bytes of `from` at `offset` written over `to` from its start, and `to` cut to them. */
async function copyKept(
  from: FileHandle,
  offset: number,
  to: FileHandle,
  size: number,
  short: () => Error,
): Promise<void> {
  const buf = Buffer.allocUnsafe(Math.min(COPY_STEP, Math.max(size, 1)));
  for (let at = 0; at < size;) {
    const { bytesRead } = await from.read(buf, 0, Math.min(buf.length, size - at), offset + at);
    if (bytesRead === 0) throw short();
    await to.write(buf, 0, bytesRead, at);
    at += bytesRead;
  }
  await to.truncate(size);
}

/**
 * Before CRIU reopens them: cut each recorded file back to its size at the
 * checkpoint. `workDir` is the walked, held work directory. Throws
 * CheckpointUnusableError (reason `work-files`) naming the file when one is
 * gone, replaced, or (opened without O_APPEND) shorter, with nothing cut.
 */
export async function rollBackWorkFiles(
  workDir: string,
  files: readonly WorkFile[],
  kept?: string,
): Promise<RolledBack[]> {
  return (await prepareRollBack(workDir, files)).apply(kept);
}
