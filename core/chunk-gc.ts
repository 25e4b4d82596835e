import fsp from 'node:fs/promises';
import path from 'node:path';
import { CHECKPOINT_NAME_RE as CKPT_RE, MANIFEST_FILE } from './checkpoint-layout.js';
import { TMP_PREFIX, TRASH_PREFIX, type ChunkDir } from './chunk-dir.js';
import { parseManifest } from './manifest.js';
import { isAlive } from './pid.js';

/**
 * Retention and chunk collection for store format 2, safe while other nodes
 * publish checkpoints of the same container into the same directory.
 *
 * The rule: a chunk is deleted only when (1) no manifest of a checkpoint
 * directory present when the collector looks refers to it, (2) its mtime
 * is older than the grace period, and (3) it then spent a grace period set
 * aside in `chunks/.trash-<time>/` and is still not referred to. A
 * publisher touches every chunk it refers to (reused or new) as it stores
 * the checkpoint and again just before the manifest is renamed into place,
 * taking a chunk back from the trash if a collector had set it aside
 * (rename: atomic). A restore that finds a chunk in the trash takes it back
 * too. So a chunk written or reused for a checkpoint being published is
 * young (1 and 2 keep it), or was set aside and is taken back by the
 * publisher, or by the next collector before it deletes anything (3).
 *
 * Chunks a dump staged and never committed (its process died before the
 * checkpoint was published, so ChunkDir.dropStaged never ran) are
 * `.tmp-<pid>-*` files beside the chunks; nothing refers to them. One is
 * removed once it is older than the grace period and its process is not
 * alive on this node. A dump on another node sharing the store is judged by
 * age alone: were it to outlast the grace period, its commit fails and the
 * previous checkpoint stays current; nothing half-written is published.
 */
export const CHUNK_GRACE_MS = 15 * 60_000;

export interface GcResult {
  /** Checkpoint directories removed (beyond `keep`). */
  removedCheckpoints: string[];
  /** Chunks set aside now. */
  trashed: number;
  /** Chunks deleted now (set aside by an earlier run). */
  deleted: number;
  /** Staged chunks of dead dumps removed now. */
  removedStaged: number;
  /** The chunks were gone through less than half a grace period ago: left alone this time. */
  skipped?: boolean;
}

/** Keep the newest `keep` checkpoints of the container (the current one always), then collect chunks. */
export async function collect(
  containerDir: string,
  chunks: ChunkDir,
  opts: { keep: number; current: string | null; graceMs?: number; now?: number },
): Promise<GcResult> {
  const grace = opts.graceMs ?? CHUNK_GRACE_MS;
  const now = opts.now ?? Date.now();
  const removedCheckpoints: string[] = [];
  const ckpts = (await fsp.readdir(containerDir)).filter((n) => CKPT_RE.test(n)).sort();
  const current = opts.current ? path.basename(opts.current) : undefined;
  const keep = new Set(ckpts.slice(-Math.max(1, opts.keep)));
  if (current) keep.add(current);
  for (const n of ckpts) {
    if (keep.has(n)) continue;
    await fsp.rm(path.join(containerDir, n), { recursive: true, force: true });
    removedCheckpoints.push(n);
  }

  // Going through every chunk (a stat each) on every publish costs the
  // checkpoint more than it frees: once per half grace period is enough, as a
  // chunk cannot go before it has been unreferenced for a grace period anyway.
  // Collecting less never deletes more (the rule above holds for any run).
  const last = await chunks.lastCollected();
  if (last !== undefined && last > now - grace / 2 && last <= now)
    return { removedCheckpoints, trashed: 0, deleted: 0, removedStaged: 0, skipped: true };

  // Old candidates first, the manifests after: a checkpoint published in between is read.
  const old = (await chunks.list()).filter((c) => c.mtimeMs < now - grace);
  const referenced = await referencedChunks(containerDir);
  // Set aside earlier: taken back when referred to, else deleted once the grace period has passed.
  let deleted = 0;
  for (const t of await chunks.trashDirs()) {
    const at = Number(t.slice(TRASH_PREFIX.length));
    const dir = path.join(chunks.dir, t);
    for (const id of await fsp.readdir(dir).catch(() => [] as string[])) {
      if (referenced.has(id)) await chunks.takeBack(id);
      else if (Number.isFinite(at) && at < now - grace) {
        await fsp.rm(path.join(dir, id), { force: true });
        deleted++;
      }
    }
    if ((await fsp.readdir(dir).catch(() => ['?'])).length === 0) await fsp.rmdir(dir).catch(() => undefined);
  }
  let trashed = 0;
  const trash = path.join(chunks.dir, `${TRASH_PREFIX}${now}`);
  for (const c of old) {
    if (referenced.has(c.id)) continue;
    // Touched since the listing (reused by a publisher): not a candidate any more.
    const st = await fsp.stat(chunks.pathOf(c.id)).catch(() => undefined);
    if (!st || st.mtimeMs >= now - grace) continue;
    if (trashed === 0) await fsp.mkdir(trash, { recursive: true, mode: 0o700 });
    await fsp.rename(chunks.pathOf(c.id), path.join(trash, c.id)).catch(() => undefined);
    trashed++;
  }
  const removedStaged = await removeStagedLeftovers(chunks, now - grace);
  await chunks.markCollected(now);
  return { removedCheckpoints, trashed, deleted, removedStaged };
}

/** `.tmp-<pid>-*` files older than `before` whose process is gone here (see the rule above). */
async function removeStagedLeftovers(chunks: ChunkDir, before: number): Promise<number> {
  let removed = 0;
  const subs = await fsp.readdir(chunks.dir, { withFileTypes: true }).catch(() => []);
  // Real directories only (a Dirent of a symlink is not one): nothing is removed through a link.
  for (const sub of subs.filter((d) => d.isDirectory() && /^[0-9a-f]{2}$/.test(d.name))) {
    const dir = path.join(chunks.dir, sub.name);
    for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
      if (!name.startsWith(TMP_PREFIX)) continue;
      const pid = Number(name.slice(TMP_PREFIX.length).split('-')[0]);
      if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) continue;
      const st = await fsp.lstat(path.join(dir, name)).catch(() => undefined);
      if (!st?.isFile() || st.mtimeMs >= before) continue;
      await fsp.rm(path.join(dir, name), { force: true });
      removed++;
    }
  }
  return removed;
}

/** Chunk ids the manifests of every checkpoint directory present refer to. An unreadable manifest keeps everything. */
async function referencedChunks(containerDir: string): Promise<Set<string>> {
  const out = new Set<string>();
  for (const n of (await fsp.readdir(containerDir)).filter((x) => CKPT_RE.test(x))) {
    let text: string;
    try {
      text = await fsp.readFile(path.join(containerDir, n, MANIFEST_FILE), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // removed meanwhile
      throw err;
    }
    // Not trusted for restore here, only read for what it keeps: a manifest this ARCH cannot read stops the collection.
    const m = parseManifest(text);
    for (const f of m.chunked?.files ?? []) for (const c of f.chunks) out.add(c.id);
  }
  return out;
}
