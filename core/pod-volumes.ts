import fs from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import * as tar from 'tar';
import { CheckpointUnusableError } from '../contract/errors.js';
import { isBindMount, mountDestination, type OciSpec } from './oci-spec.js';
import { mappedFiles, openFds } from './open-files.js';
import { runCommand } from './run-command.js';
import { openBeneath } from './host-dirs.js';
import { canonical, isEmptyArchive, unreadable, validateDiffArchive, writeEntryFile } from './rootfs-diff.js';

/**
 * A Kubernetes pod's emptyDir volumes: scratch space that lives exactly as
 * long as its pod (kubelet makes `<root>/pods/<pod uid>/volumes/kubernetes.io~empty-dir/<name>`
 * and containerd binds it into the containers that mount it, or a
 * subdirectory of it with `subPath`; `medium: Memory` is a tmpfs at the same path). To runc and CRIU it is an external mount:
 * they leave its files where they are. A pod rescheduled after a reclaim
 * gets a new, empty emptyDir, so a job restored there found its scratch
 * files gone: one it held open failed CRIU's restore (the job started
 * over), one it had closed was silently missing (a spill file, an
 * intermediate result, `/tmp` of a read-only root filesystem).
 *
 * So the checkpoint keeps them, as it keeps the writable layer: each
 * emptyDir the container mounts becomes `volume-<n>.tar`, read while the
 * job's processes are stopped, its entry count and bytes in the signed
 * manifest with the container path it was mounted at and the pod it was
 * in. A restore in another pod (rescheduled) writes them into the new
 * container's emptyDir at that path: a name the pod's init containers or
 * other containers wrote meanwhile is replaced (it holds what the job's
 * memory expects), other names are left alone. In the same pod (a
 * container restarted by the kubelet after a crash, from a checkpoint that
 * left it running) the emptyDir outlived the container and holds what the
 * lost run wrote after the checkpoint: the job's names are written back
 * likewise, as its restored memory expects them (CRIU refuses a file it
 * holds open that grew since: "has bad size"). The directory is shared with the
 * pod's other containers, which may write in it at any time: nothing is
 * read or written through a symlink (every directory is opened with
 * O_NOFOLLOW from its parent's descriptor, every file created with O_EXCL
 * after its old name, a file or a symlink, is moved aside), a name that is
 * something else where the job had a file (a directory where it had a
 * file, or the reverse) refuses the restore, and a restore that fails
 * leaves the emptyDir as it found it: the names it created are taken back
 * and the files it moved aside are put back (the fresh start sees what the
 * pod had: an init container's download, the lost run's own resume files).
 *
 * Other volumes (host paths, persistent volumes, configMaps, secrets) are
 * not the pod's own scratch: they outlive the pod or come from the cluster,
 * and ARCH neither keeps nor writes them.
 */
export interface PodVolume {
  /** Where the container sees it. */
  destination: string;
  /** The host directory (the container manager's, named by the spec it wrote). */
  source: string;
}

/** What the manifest records of one kept emptyDir (archive `volumeTar(index)`). */
export interface VolumeRecord {
  destination: string;
  /** The pod's uid (kubelet's pod dir): a restore tells a new pod from the same one. */
  pod?: string;
  files: number;
  bytes: number;
}

/** The pod uid in an emptyDir's source (kubelet's `pods/<uid>/…`). */
export function podUidOf(source: string): string | undefined {
  return /\/pods\/([0-9a-fA-F-]{1,64})\/(?:volumes|volume-subpaths)\//.exec(source)?.[1];
}

/** kubelet's emptyDir layout below its root dir (which is configurable: --root-dir). */
const EMPTY_DIR_SOURCE = /\/pods\/[0-9a-fA-F-]{1,64}\/volumes\/kubernetes\.io~empty-dir\/[^/]+\/?$/;
/**
 * A volume mounted with `subPath`: kubelet binds the subdirectory at
 * `<pod dir>/volume-subpaths/<volume>/<container>/<mount index>` and names
 * that in the container's mounts. Which kind of volume it is, only the pod
 * dir's `volumes/<plugin>/<volume>` says.
 */
const SUB_PATH_SOURCE = /^(.*\/pods\/[0-9a-fA-F-]{1,64})\/volume-subpaths\/([^/]+)\/[^/]+\/\d+\/?$/;

/** An emptyDir's own directory, or a subPath of one (not a subPath of another kind of volume). */
function isEmptyDirSource(source: string): boolean {
  if (EMPTY_DIR_SOURCE.test(source)) return true;
  const sub = SUB_PATH_SOURCE.exec(source);
  if (!sub) return false;
  try {
    return fs.lstatSync(path.join(sub[1]!, 'volumes/kubernetes.io~empty-dir', sub[2]!)).isDirectory();
  } catch {
    return false;
  }
}

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_DIRECTORY, O_NOFOLLOW } = fs.constants;

/** A restore's hold directory at an emptyDir's root: one per restore, random (never a name the pod's containers chose). */
const HOLD_PREFIX = '.arch-replaced-';
const HOLD_NAME = /^\.arch-replaced-[0-9a-f]{16}$/;

/** The emptyDir volumes bound into the container (the last mount at a destination wins; /dev/shm is dev-shm.ts's). */
export function podScratchVolumes(spec: OciSpec | undefined): PodVolume[] {
  const byDest = new Map<string, PodVolume>();
  for (const m of spec?.mounts ?? []) {
    const destination = mountDestination(m.destination);
    if (!m.source || !path.isAbsolute(m.source) || !path.posix.isAbsolute(destination)) continue;
    if (isBindMount(m) && destination !== '/dev/shm' && isEmptyDirSource(m.source))
      byDest.set(destination, { destination, source: m.source });
    else byDest.delete(destination); // mounted over by something else
  }
  return [...byDest.values()];
}

/**
 * The bytes a volume's files hold now (du's apparent sizes, no symlink
 * followed): what its archive will hold, give or take its headers; 0 where
 * du cannot tell.
 */
export async function volumeBytes(volume: PodVolume): Promise<number> {
  const r = await runCommand('du', ['-s', '-b', '-P', '--', volume.source], { reject: false });
  return Number(/^(\d+)\s/.exec(String(r.stdout))?.[1]) || 0;
}

/** A volume a checkpoint keeps, and its bytes before the job was stopped. */
export interface KeptVolume {
  volume: PodVolume;
  bytes: number;
}

/**
 * The volumes a checkpoint keeps, and those it leaves (larger than the
 * node's ARCH_EMPTYDIR_MAX_BYTES: reading one while the job is stopped would
 * stall it for as long, at every checkpoint, and a dataset cache is not
 * worth it), measured before anything is stopped.
 */
export async function keptVolumes(
  volumes: readonly PodVolume[],
  maxBytes: number,
): Promise<{ kept: KeptVolume[]; left: { destination: string; bytes: number }[] }> {
  const sized = await Promise.all(volumes.map(async (volume) => ({ volume, bytes: await volumeBytes(volume) })));
  return {
    kept: sized.filter((v) => v.bytes <= maxBytes),
    left: sized.filter((v) => v.bytes > maxBytes).map((v) => ({ destination: v.volume.destination, bytes: v.bytes })),
  };
}

/** At most this many paths named per volume, the first by name (the same on every run): enough to recognise the files. */
const OPEN_NAMED = 5;

/**
 * The files below each of `destinations` (container paths) that `pids` hold
 * open or have mapped, by their path in the container: what a restore cannot
 * do without.
 */
export async function openInVolumes(
  pids: readonly number[],
  destinations: readonly string[],
): Promise<Map<string, string[]>> {
  const under = (p: string) => destinations.find((d) => p.startsWith(d.endsWith('/') ? d : `${d}/`));
  const found = new Map<string, Set<string>>();
  const add = (p: string) => {
    const d = under(p);
    if (d === undefined) return;
    const set = found.get(d) ?? new Set<string>();
    set.add(p);
    found.set(d, set);
  };
  const wanted = (t: string) => under(t) !== undefined;
  for await (const f of openFds(pids, wanted)) add(f.target);
  for await (const m of mappedFiles(pids, wanted)) add(m.target);
  return new Map([...found].map(([d, set]) => [d, [...set].sort().slice(0, OPEN_NAMED)]));
}

const openDirAt = (dirFd: number, name: string): Promise<FileHandle> =>
  fsp.open(`/proc/self/fd/${dirFd}/${name}`, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);

/** One tar entry: its header (and a PAX header before it when a field does not fit). */
function headerBlocks(data: tar.HeaderData): Buffer[] {
  const h = new tar.Header(data);
  const out: Buffer[] = [];
  if (h.encode()) out.push(new tar.Pax({ ...data }).encode());
  out.push(h.block!);
  return out;
}

const pad = (size: number): Buffer => Buffer.alloc((512 - (size % 512)) % 512);

/**
 * Write the archive of the directory `source` into `tarFile`: directories,
 * regular files, symlinks and second names of files (hard links); sockets,
 * FIFOs and devices are listed in `skipped`. Walked through descriptors:
 * a directory or file swapped for a symlink meanwhile is skipped, never
 * followed. A file is archived with the size it had when opened (a file a
 * sibling container cuts short meanwhile is padded with zeros, one it grows
 * is cut at that size): the archive always matches its headers.
 */
export async function captureVolume(
  source: string,
  tarFile: string,
): Promise<{ files: number; bytes: number; skipped: string[] }> {
  const out = await fsp.open(tarFile, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  const skipped: string[] = [];
  const firstName = new Map<string, string>(); // dev:ino -> first name archived
  let files = 0;
  let bytes = 0;
  const write = async (bufs: Buffer[]) => {
    for (const b of bufs) if (b.length) await out.write(b);
  };
  async function copyBody(h: FileHandle, size: number): Promise<void> {
    const buf = Buffer.allocUnsafe(Math.min(size, 1 << 20) || 1);
    let pos = 0;
    while (pos < size) {
      const { bytesRead } = await h.read(buf, 0, Math.min(buf.length, size - pos), pos);
      if (bytesRead === 0) {
        await write([Buffer.alloc(size - pos)]); // cut short by someone else meanwhile
        pos = size;
        break;
      }
      await out.write(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    await write([pad(size)]);
  }
  async function walk(dir: FileHandle, rel: string): Promise<void> {
    const at = `/proc/self/fd/${dir.fd}`;
    const entries = (await fsp.readdir(at, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (!rel && HOLD_NAME.test(e.name)) continue; // what a stopped restore moved aside: ARCH's, not the job's
      if (e.isDirectory()) {
        const child = await openDirAt(dir.fd, e.name).catch(() => undefined);
        if (!child) {
          skipped.push(r); // swapped for something else since the listing
          continue;
        }
        try {
          const st = await child.stat();
          await write(headerBlocks({ path: `${r}/`, type: 'Directory', ...owner(st), size: 0 }));
          files++;
          await walk(child, r);
        } finally {
          await child.close();
        }
      } else if (e.isSymbolicLink()) {
        const target = await fsp.readlink(`${at}/${e.name}`).catch(() => undefined);
        const st = await fsp.lstat(`${at}/${e.name}`).catch(() => undefined);
        if (target === undefined || !st?.isSymbolicLink()) {
          skipped.push(r);
          continue;
        }
        await write(headerBlocks({ path: r, type: 'SymbolicLink', linkpath: target, ...owner(st), size: 0 }));
        files++;
      } else if (e.isFile()) {
        // Taken with O_PATH first (openBeneath): a FIFO or device the job swapped in meanwhile is never opened.
        const h = await openBeneath(at, e.name, O_RDONLY).catch(() => undefined);
        if (!h) {
          skipped.push(r);
          continue;
        }
        try {
          const st = await h.stat();
          if (!st.isFile()) {
            skipped.push(r);
            continue;
          }
          const key = `${st.dev}:${st.ino}`;
          const first = st.nlink > 1 ? firstName.get(key) : undefined;
          if (first !== undefined) {
            await write(headerBlocks({ path: r, type: 'Link', linkpath: first, ...owner(st), size: 0 }));
          } else {
            if (st.nlink > 1) firstName.set(key, r);
            await write(headerBlocks({ path: r, type: 'File', ...owner(st), size: st.size }));
            await copyBody(h, st.size);
            bytes += st.size;
          }
          files++;
        } finally {
          await h.close();
        }
      } else {
        skipped.push(r); // sockets, FIFOs, devices: recreated by the processes, not files to carry
      }
    }
  }
  try {
    const root = await fsp.open(source, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    try {
      await walk(root, '');
    } finally {
      await root.close();
    }
    await write([Buffer.alloc(1024)]); // end of archive: two zero blocks
  } finally {
    await out.close();
  }
  return { files, bytes, skipped };
}

function owner(st: fs.Stats): Pick<tar.HeaderData, 'mode' | 'uid' | 'gid' | 'mtime'> {
  return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: st.mtime };
}

/** The archive checked against its record: validateDiffArchive's rules, no more entries or bytes than signed. */
async function checkArchive(tarFile: string, recorded: VolumeRecord): Promise<void> {
  let entries = 0;
  await validateDiffArchive(tarFile, recorded.bytes, () => entries++);
  if (entries !== recorded.files)
    throw new CheckpointUnusableError(
      'volume',
      `the archive of the emptyDir at ${recorded.destination} holds ${entries} entries, the manifest records ${recorded.files}`,
    );
}

/**
 * What restoreVolume wrote into one emptyDir: undone by undoVolumeWrite if
 * the restore fails after, made final by keepVolumeFiles once it succeeded.
 */
export interface VolumeWrite {
  destination: string;
  /** The pod the checkpoint was taken in (a container restarted by the kubelet), not a new one. */
  samePod: boolean;
  /** Names it made where nothing was. */
  created: string[];
  /** Its hold directory at the emptyDir's root, once a name had to be freed. */
  hold?: string;
  /** The names whose file or symlink it moved into the hold directory, and the name each has there. */
  replaced: [string, string][];
}

/**
 * Write the checkpoint's files of the emptyDir mounted at `recorded.destination`
 * into the container's (`spec`'s emptyDir at the same path), before CRIU
 * restores the processes that hold them: in a new pod (rescheduled) and in
 * the same one (the kubelet restarting a crashed container, whose emptyDir
 * holds what the lost run wrote after the checkpoint) alike, each name the
 * job had gets what it held at the checkpoint. A file or symlink there is
 * moved aside, not deleted, until the restore succeeds: a restore that fails
 * (the job starts fresh) leaves the emptyDir as it found it. On its own
 * failure it undoes what it wrote.
 */
export async function restoreVolume(
  tarFile: string,
  spec: OciSpec | undefined,
  recorded: VolumeRecord,
): Promise<VolumeWrite> {
  await checkArchive(tarFile, recorded);
  const target = podScratchVolumes(spec).find((v) => v.destination === recorded.destination);
  if (!target)
    throw new CheckpointUnusableError(
      'volume',
      `the checkpoint holds the files of the job's emptyDir at ${recorded.destination}, and this container has no emptyDir mounted there: they would be lost. Mount the same emptyDir volume at ${recorded.destination} as before`,
    );
  const root = await fsp.open(target.source, O_RDONLY | O_DIRECTORY | O_NOFOLLOW).catch((err: unknown) => {
    throw new CheckpointUnusableError(
      'volume',
      `the pod's emptyDir at ${recorded.destination} (${target.source}) cannot be opened as a directory: ${(err as Error).message}`,
    );
  });
  const write: VolumeWrite = {
    destination: recorded.destination,
    samePod: recorded.pod !== undefined && podUidOf(target.source) === recorded.pod,
    created: [],
    replaced: [],
  };
  const writer = new Writer(root, write);
  try {
    if (await isEmptyArchive(tarFile)) return write;
    try {
      await extract(tarFile, root, writer);
    } catch (err) {
      await writer.close();
      await undoWrite(root, write);
      if (err instanceof CheckpointUnusableError) throw err;
      throw new CheckpointUnusableError(
        'volume',
        `the job's emptyDir at ${recorded.destination} could not be written back: ${(err as Error).message}`,
      );
    }
    return write;
  } finally {
    await writer.close();
    await root.close();
  }
}

/** Records what extract() does to an emptyDir in its VolumeWrite. */
class Writer {
  private holdDir?: FileHandle;

  constructor(
    private readonly root: FileHandle,
    readonly write: VolumeWrite,
  ) {}

  /**
   * Make `at` free for a file or symlink of the archive. A file or symlink
   * there (the pod's init containers or other containers wrote it, or the
   * lost run did after the checkpoint) is moved into the hold directory,
   * which moves the name, never what a symlink points to; anything else
   * refuses the restore.
   */
  async freeName(at: string, rel: string): Promise<void> {
    const st = await fsp.lstat(at).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (!st) {
      this.write.created.push(rel);
      return;
    }
    if (!st.isFile() && !st.isSymbolicLink())
      throw new CheckpointUnusableError(
        'volume',
        `"${rel}" is ${st.isDirectory() ? 'a directory' : 'not a regular file'} in the pod's emptyDir, where the job had a file: not replaced`,
      );
    const hold = await this.hold();
    const as = String(this.write.replaced.length);
    try {
      await fsp.rename(at, `/proc/self/fd/${hold.fd}/${as}`);
    } catch (err) {
      // Another filesystem mounted inside the emptyDir: the name cannot be kept aside there.
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      await fsp.unlink(at);
      return;
    }
    this.write.replaced.push([rel, as]);
  }

  private async hold(): Promise<FileHandle> {
    if (this.holdDir) return this.holdDir;
    const name = `${HOLD_PREFIX}${randomBytes(8).toString('hex')}`;
    await fsp.mkdir(`/proc/self/fd/${this.root.fd}/${name}`, { mode: 0o700 });
    this.write.hold = name;
    this.holdDir = await openDirAt(this.root.fd, name);
    return this.holdDir;
  }

  async close(): Promise<void> {
    await this.holdDir?.close();
    this.holdDir = undefined;
  }
}

/**
 * The parent directory of `rel` below `root`, each component opened with
 * O_NOFOLLOW from the one before (a symlink planted on the way refuses).
 */
async function parentOf(root: FileHandle, rel: string): Promise<{ dir: FileHandle; name: string; owned: boolean }> {
  const parts = rel.split('/');
  let dir = root;
  for (const part of parts.slice(0, -1)) {
    const next = await openDirAt(dir.fd, part).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'ENOTDIR' || err.code === 'ELOOP'
        ? new Error(`"${rel}": a component is not a directory (a symlink or a file put there meanwhile)`)
        : err;
    });
    if (dir !== root) await dir.close();
    dir = next;
  }
  return { dir, name: parts[parts.length - 1]!, owned: dir !== root };
}

async function extract(tarFile: string, root: FileHandle, w: Writer): Promise<void> {
  const dirs: { rel: string; mode: number; uid?: number; gid?: number; mtime?: Date }[] = [];
  const links: [string, string][] = [];
  // One entry at a time, in archive order (a directory before what it holds): the parser waits for each.
  const entries: tar.ReadEntry[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  let failed: unknown;
  const parser = new tar.Parser({
    strict: true,
    onReadEntry: (entry) => {
      entry.pause();
      entries.push(entry);
      wake?.();
    },
  });
  const done = new Promise<void>((resolve, reject) => {
    parser.on('error', reject);
    parser.on('end', resolve);
    fs.createReadStream(tarFile).on('error', reject).pipe(parser);
  }).finally(() => {
    ended = true;
    wake?.();
  });
  done.catch(() => undefined);
  for (;;) {
    if (!entries.length) {
      if (ended) break;
      await new Promise<void>((r) => (wake = r));
      wake = undefined;
      continue;
    }
    const entry = entries.shift()!;
    if (failed) {
      entry.resume();
      continue;
    }
    try {
      const rel = canonical(entry.path);
      if (entry.type === 'Link') {
        links.push([rel, canonical(entry.linkpath ?? '')]);
        entry.resume();
        continue;
      }
      const { dir, name, owned } = await parentOf(root, rel);
      const at = `/proc/self/fd/${dir.fd}/${name}`;
      try {
        if (entry.type === 'Directory') {
          if (await madeOrDir(at, rel)) w.write.created.push(rel);
          dirs.push({ rel, mode: (entry.mode ?? 0o755) & 0o7777, uid: entry.uid, gid: entry.gid, mtime: entry.mtime });
          entry.resume();
        } else if (entry.type === 'SymbolicLink') {
          await w.freeName(at, rel);
          await fsp.symlink(entry.linkpath ?? '', at);
          if (entry.uid !== undefined && entry.gid !== undefined) await fsp.lchown(at, entry.uid, entry.gid);
          if (entry.mtime) await fsp.lutimes(at, entry.mtime, entry.mtime);
          entry.resume();
        } else {
          await w.freeName(at, rel);
          const h = await fsp.open(at, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
          try {
            await writeEntryFile(h, entry);
          } finally {
            await h.close();
          }
        }
      } finally {
        if (owned) await dir.close();
      }
    } catch (err) {
      failed = err;
      entry.resume();
    }
  }
  await done.catch(unreadable);
  if (failed) throw failed;
  // Second names once every file is there (validated: each names an earlier regular file of the archive).
  for (const [rel, first] of links) {
    const a = await parentOf(root, first);
    const b = await parentOf(root, rel);
    try {
      const at = `/proc/self/fd/${b.dir.fd}/${b.name}`;
      await w.freeName(at, rel);
      // link(2) follows no symlink at either end; both names are in directories held open.
      await fsp.link(`/proc/self/fd/${a.dir.fd}/${a.name}`, at);
    } finally {
      if (a.owned) await a.dir.close();
      if (b.owned) await b.dir.close();
    }
  }
  // Directory modes, owners and times last (their contents changed their mtime), deepest first.
  for (const d of dirs.reverse()) {
    const { dir, name, owned } = await parentOf(root, d.rel);
    try {
      const h = await openDirAt(dir.fd, name);
      try {
        if (d.uid !== undefined && d.gid !== undefined) await h.chown(d.uid, d.gid);
        await h.chmod(d.mode);
        if (d.mtime) await h.utimes(d.mtime, d.mtime);
      } finally {
        await h.close();
      }
    } finally {
      if (owned) await dir.close();
    }
  }
}

/** A directory of the archive at `at`: made (true), or one already there (false; a symlink or a file there refuses). */
async function madeOrDir(at: string, rel: string): Promise<boolean> {
  try {
    await fsp.mkdir(at, { mode: 0o700 });
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const st = await fsp.lstat(at);
  if (!st.isDirectory())
    throw new CheckpointUnusableError(
      'volume',
      `"${rel}" is ${st.isSymbolicLink() ? 'a symlink' : 'not a directory'} in the pod's emptyDir, where the job had a directory: not written through`,
    );
  return false;
}

/** Remove `created` (relative to the open directory `root`), deepest first, never through a symlink. */
async function removeCreated(root: FileHandle, created: readonly string[]): Promise<void> {
  for (const rel of [...created].reverse()) {
    try {
      const { dir, name, owned } = await parentOf(root, rel);
      try {
        const at = `/proc/self/fd/${dir.fd}/${name}`;
        const st = await fsp.lstat(at);
        // rmdir leaves a directory someone else put files in; unlink removes a name, never what it points to.
        await (st.isDirectory() ? fsp.rmdir(at) : fsp.unlink(at));
      } finally {
        if (owned) await dir.close();
      }
    } catch {
      // gone already, or no longer ours to reach: left
    }
  }
}

/**
 * Undo `write` in the emptyDir `root`: every replaced name gets its earlier
 * file or symlink back from the hold directory (the latest replacement
 * first), then the created names go and the hold directory with them.
 */
async function undoWrite(root: FileHandle, write: VolumeWrite): Promise<void> {
  if (write.hold) {
    const hold = await openDirAt(root.fd, write.hold).catch(() => undefined);
    if (hold) {
      try {
        for (const [rel, as] of [...write.replaced].reverse()) {
          try {
            const { dir, name, owned } = await parentOf(root, rel);
            try {
              const at = `/proc/self/fd/${dir.fd}/${name}`;
              const st = await fsp.lstat(at).catch(() => undefined);
              if (st?.isDirectory()) continue; // not the job's file there any more: the earlier one stays held
              if (st) await fsp.unlink(at);
              await fsp.rename(`/proc/self/fd/${hold.fd}/${as}`, at);
            } finally {
              if (owned) await dir.close();
            }
          } catch {
            // its directory is gone or no longer ours to reach: it stays in the hold directory
          }
        }
      } finally {
        await hold.close();
      }
    }
  }
  await removeCreated(root, write.created);
  if (write.hold) await fsp.rmdir(`/proc/self/fd/${root.fd}/${write.hold}`).catch(() => undefined);
}

/** The emptyDir `write` went to, open (undefined when the spec has none at its path any more). */
async function writtenRoot(spec: OciSpec | undefined, write: VolumeWrite): Promise<FileHandle | undefined> {
  const target = podScratchVolumes(spec).find((v) => v.destination === write.destination);
  return target && fsp.open(target.source, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
}

/** Undo what restoreVolume wrote into the container's emptyDir (its restore failed after): as it was found. */
export async function undoVolumeWrite(spec: OciSpec | undefined, write: VolumeWrite): Promise<void> {
  if (!write.created.length && !write.hold) return;
  const root = await writtenRoot(spec, write);
  if (!root) return;
  try {
    await undoWrite(root, write);
  } finally {
    await root.close();
  }
}

/** The restore succeeded: the files restoreVolume moved aside are removed, and its hold directory. */
export async function keepVolumeFiles(spec: OciSpec | undefined, write: VolumeWrite): Promise<void> {
  if (!write.hold) return;
  const root = await writtenRoot(spec, write);
  if (!root) return;
  try {
    const hold = await openDirAt(root.fd, write.hold);
    try {
      // unlink removes a name, never what a symlink points to.
      for (const [, as] of write.replaced) await fsp.unlink(`/proc/self/fd/${hold.fd}/${as}`).catch(() => undefined);
    } finally {
      await hold.close();
    }
    await fsp.rmdir(`/proc/self/fd/${root.fd}/${write.hold}`);
  } finally {
    await root.close();
  }
}
