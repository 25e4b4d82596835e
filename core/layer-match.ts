import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar';
import { ROOTFS_TAR } from './checkpoint-layout.js';
import {
  canonical,
  isEmptyArchive,
  opaqueDirs,
  readDeletions,
  unreadable,
  validateDiffArchive,
  type Deletions,
} from './rootfs-diff.js';

/**
 * Docker (`docker start`, its restart policies after a reboot) starts the
 * SAME container again, with the writable layer it had when it stopped.
 * Restoring the checkpoint's processes over that layer is only right when
 * the layer is exactly what the checkpoint recorded: the processes' open
 * files, offsets and expectations are those of that instant. A layer that
 * changed since (the job ran on after a --leave-running checkpoint, someone
 * `docker exec`ed into it, a file was edited on the host) would hand the
 * restored job files from another time, so it starts fresh instead.
 *
 * "Exactly" is compared on what the checkpoint's (verified) archive and
 * deletion list say, never on names or times alone: every file's content
 * digest, size, mode and owner, every directory's mode and owner, every
 * symlink's target, every deleted path (whiteout) and opaque directory; and
 * nothing more in the layer. Modification times are not compared (a copy-up
 * changes them without changing what the container sees).
 *
 * One thing more may be there: a directory copied up from the image with
 * nothing changed in it but its times (CRIU's dump makes and removes a
 * temporary directory in the container's /tmp, which copies /tmp up). It
 * counts as unchanged when the image has the same directory with the same
 * mode and owner, read from the overlay's lower dirs; when those are
 * unknown, it counts as a change.
 */
interface Entry {
  kind: 'file' | 'dir' | 'symlink';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  target?: string;
  digest?: string;
}

/** What the checkpoint recorded of the layer: its archive (content hashed while read) and its deletions. */
async function recordedLayer(
  checkpointDir: string,
  maxBytes: number,
): Promise<{ entries: Map<string, Entry>; links: Map<string, string>; deletions: Deletions }> {
  const tarFile = path.join(checkpointDir, ROOTFS_TAR);
  // Same checks as before an extraction: plain relative paths, links inside, declared size within the manifest's.
  await validateDiffArchive(tarFile, maxBytes);
  const entries = new Map<string, Entry>();
  const links: { p: string; target: string; e: Entry }[] = [];
  if (!(await isEmptyArchive(tarFile)))
    await tar
      .t({
        file: tarFile,
        strict: true,
        onReadEntry: (entry) => {
          const p = canonical(entry.path);
          const e: Entry = {
            kind: 'file',
            mode: (entry.mode ?? 0) & 0o7777,
            uid: entry.uid ?? 0,
            gid: entry.gid ?? 0,
            size: entry.size ?? 0,
          };
          switch (entry.type) {
            case 'Directory':
              e.kind = 'dir';
              break;
            case 'SymbolicLink':
              e.kind = 'symlink';
              e.target = entry.linkpath ?? '';
              break;
            case 'Link':
              links.push({ p, target: canonical(entry.linkpath ?? ''), e });
              break;
            default: {
              const h = crypto.createHash('sha256');
              entry.on('data', (c: Buffer) => h.update(c));
              entry.on('end', () => (e.digest = h.digest('hex')));
            }
          }
          entries.set(p, e);
        },
      })
      .catch(unreadable);
  // A hard link is the same file as its (earlier, validated) target.
  for (const l of links) {
    const t = entries.get(l.target);
    if (t) entries.set(l.p, { ...t });
  }
  const linked = new Map(links.map((l) => [l.p, l.target]));
  const deletions = await readDeletions(checkpointDir);
  return {
    entries,
    links: linked,
    deletions: { whiteouts: deletions.whiteouts.map(canonical), opaque: deletions.opaque.map(canonical) },
  };
}

/** The layer as it is: entries (without digests yet) and whiteouts. Sockets, FIFOs and devices are left out, as captureDiff leaves them out. */
async function currentLayer(upper: string): Promise<{ entries: Map<string, Entry>; whiteouts: Set<string> }> {
  const entries = new Map<string, Entry>();
  const whiteouts = new Set<string>();
  async function walk(rel: string): Promise<void> {
    for (const d of await fsp.readdir(path.join(upper, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${d.name}` : d.name;
      const st = await fsp.lstat(path.join(upper, r));
      const base = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, size: 0 };
      if (st.isCharacterDevice() && st.rdev === 0) whiteouts.add(r);
      else if (st.isDirectory()) {
        entries.set(r, { ...base, kind: 'dir' });
        await walk(r);
      } else if (st.isFile()) entries.set(r, { ...base, kind: 'file', size: st.size });
      else if (st.isSymbolicLink())
        entries.set(r, { ...base, kind: 'symlink', target: await fsp.readlink(path.join(upper, r)) });
    }
  }
  await walk('');
  return { entries, whiteouts };
}

async function sha256File(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  // The layer is the container's: a file swapped for a symlink since the walk is not followed out of it.
  const fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  await pipeline(fh.createReadStream(), h); // closes fh
  return h.digest('hex');
}

const octal = (m: number) => `0${m.toString(8)}`;

/** Why `now` is not `was` (same path), or undefined when they match (file contents aside). */
function metadataDifference(p: string, was: Entry, now: Entry | undefined): string | undefined {
  if (!now) return `"${p}" is gone`;
  if (now.kind !== was.kind) return `"${p}" is a ${now.kind} now, was a ${was.kind}`;
  if (now.kind !== 'symlink' && now.mode !== was.mode)
    return `"${p}" has mode ${octal(now.mode)}, was ${octal(was.mode)}`;
  if (now.uid !== was.uid || now.gid !== was.gid)
    return `"${p}" is owned by ${now.uid}:${now.gid}, was ${was.uid}:${was.gid}`;
  if (now.kind === 'file' && now.size !== was.size) return `"${p}" has ${now.size} bytes, was ${was.size}`;
  if (now.kind === 'symlink' && now.target !== was.target)
    return `"${p}" points to "${now.target}", was "${was.target}"`;
  return undefined;
}

/** A directory only copied up: the image's topmost lower dir has the same directory, mode and owner. */
async function onlyCopiedUp(p: string, now: Entry, lower: string[] | undefined): Promise<boolean> {
  if (now.kind !== 'dir' || !lower) return false;
  for (const dir of lower) {
    const st = await fsp.lstat(path.join(dir, p)).catch(() => undefined);
    if (!st) continue;
    return st.isDirectory() && (st.mode & 0o7777) === now.mode && st.uid === now.uid && st.gid === now.gid;
  }
  return false;
}

/**
 * The first way the writable layer `upper` differs from what the
 * checkpoint in `checkpointDir` recorded, or undefined when it is that
 * layer. `maxBytes`: the manifest's (signed) size of the layer archive.
 */
export async function layerDifference(
  checkpointDir: string,
  upper: string,
  lower: string[] | undefined,
  maxBytes = Infinity,
): Promise<string | undefined> {
  const [was, now, opaqueNow] = await Promise.all([
    recordedLayer(checkpointDir, maxBytes),
    currentLayer(upper),
    opaqueDirs(upper),
  ]);
  // Cheap checks first: names, kinds, modes, owners, sizes. Contents are hashed only if all of them match.
  for (const [p, e] of was.entries) {
    const why = metadataDifference(p, e, now.entries.get(p));
    if (why) return why;
  }
  for (const [p, e] of now.entries) {
    if (!was.entries.has(p) && !(await onlyCopiedUp(p, e, lower)))
      return `"${p}${e.kind === 'dir' ? '/' : ''}" was created after the checkpoint`;
  }
  const wasWhiteouts = new Set(was.deletions.whiteouts);
  for (const w of wasWhiteouts) if (!now.whiteouts.has(w)) return `"${w}", deleted at the checkpoint, exists again`;
  for (const w of now.whiteouts) if (!wasWhiteouts.has(w)) return `"${w}" was deleted after the checkpoint`;
  const wasOpaque = new Set(was.deletions.opaque);
  const nowOpaque = new Set(opaqueNow.map(canonical));
  for (const o of wasOpaque) if (!nowOpaque.has(o)) return `"${o}/" is no longer an opaque directory`;
  for (const o of nowOpaque) if (!wasOpaque.has(o)) return `"${o}/" was made opaque (emptied) after the checkpoint`;
  // Two names of one file, copied apart: a write through one would no longer show through the other.
  for (const [p, target] of was.links) {
    const [a, b] = await Promise.all([fsp.lstat(path.join(upper, p)), fsp.lstat(path.join(upper, target))]);
    if (a.ino !== b.ino) return `"${p}" is no longer a hard link to "${target}"`;
  }
  for (const [p, e] of was.entries) {
    if (e.kind !== 'file') continue;
    if ((await sha256File(path.join(upper, p))) !== e.digest) return `"${p}" has other content`;
  }
  return undefined;
}
