import path from 'node:path';
import { CheckpointUnusableError } from '../contract/errors.js';
import { isBindMount, mountAt, mountDestination, type OciMount, type OciSpec } from './oci-spec.js';
import { podScratchVolumes } from './pod-volumes.js';
import type { ClosedFile } from './closed-files.js';
import {
  captureOpenFiles,
  prepareRollBack,
  type ClosedFiles,
  type KeptFilesSink,
  type RollBack,
  type RollBackPlace,
  type WorkFile,
} from './work-files.js';

/**
 * Files a job holds open for writing in a volume its owner says is the job's
 * alone (ARCH_ROLLBACK_VOLUMES) roll back with its checkpoint, as those of
 * the shared work directory do (core/work-files.ts says why): a Kubernetes
 * job's results file on a persistent volume, a Docker job's log in a named
 * volume. A volume outlives the node and every copy of the job; after a
 * checkpoint that left the job running, the lost run went on writing there,
 * and CRIU refuses the grown file ("has bad size": the job starts over from
 * nothing) or, for a log opened O_APPEND, the restored job writes the lost
 * run's lines a second time.
 *
 * Opt-in, per volume: cutting a file back is right only when nothing but
 * this job writes it (a volume shared with other writers would lose their
 * appends). The container names where the volume is mounted in it; the
 * host side is the mount's source in the container's spec (the
 * orchestrator's word, never the environment's), and only regular files the
 * job's processes hold open for writing are recorded, each walked below
 * that source without following a symlink and checked to be the very file
 * (same inode), at the checkpoint and again before it is cut. ARCH cuts
 * nothing the job could not have cut itself through its own mount.
 */
export const ROLLBACK_VOLUMES_FIELD = 'ARCH_ROLLBACK_VOLUMES';

/** A volume named by ARCH_ROLLBACK_VOLUMES, as the container's spec mounts it. */
export interface JobVolume {
  /** Where the container sees it (its mount destination). */
  destination: string;
  /** The host directory bound there. */
  source: string;
}

/** What a checkpoint records of one such volume (the manifest's `volumeFiles`). */
export interface VolumeFiles {
  destination: string;
  files: WorkFile[];
  /** The volume's other files, which the job opens and closes (core/closed-files.ts). */
  closed?: ClosedFile[];
  /** Its directories, symlinks and other entries that are not regular files. */
  closedNonFiles?: string[];
  /** More entries than the checkpoint records: `closed` and `closedNonFiles` are not all of them. */
  closedMore?: true;
  /** Where each of `closed` has a second name (core/closed-files.ts). */
  closedLinks?: string;
}

const isReadOnly = (m: OciMount) => (m.options ?? []).includes('ro');

/** The bind mount the container sees at `destination`, if that is one (from a host directory). */
function bindAt(spec: OciSpec | undefined, destination: string): OciMount | undefined {
  const m = mountAt(spec, destination);
  return m && isBindMount(m) && m.source && path.isAbsolute(m.source) ? m : undefined;
}

/**
 * The volumes of `named` the job's files roll back in, and those it names
 * that cannot (with why, for the checkpoint's log): nothing mounted there,
 * read-only (the job cannot hold a file open for writing in it), an
 * emptyDir (kept whole with the checkpoint anyway), the work directory
 * (rolled back anyway).
 */
export function jobVolumes(
  spec: OciSpec | undefined,
  named: readonly string[],
  workdir?: string,
): { volumes: JobVolume[]; ignored: { destination: string; why: string }[] } {
  const emptyDirs = new Set(podScratchVolumes(spec).map((v) => v.destination));
  const volumes: JobVolume[] = [];
  const ignored: { destination: string; why: string }[] = [];
  for (const destination of named) {
    const m = bindAt(spec, destination);
    const why = !m
      ? 'no volume (bind mount) is mounted there'
      : isReadOnly(m)
        ? 'it is mounted read-only'
        : emptyDirs.has(destination)
          ? 'it is an emptyDir, kept whole with every checkpoint'
          : destination === workdir
            ? 'it is the work directory, rolled back anyway'
            : undefined;
    if (why) ignored.push({ destination, why });
    else volumes.push({ destination, source: m!.source! });
  }
  return { volumes, ignored };
}

/** Captured volume files, each still open so that the checkpoint can make its recorded size durable. */
export interface CapturedVolumeFiles {
  /** Each volume's files: those the job held open for writing, and the others. */
  records: VolumeFiles[];
  /** The contents of the files rewritten in place and of small ones, kept through `sink` (core/work-files.ts). */
  keepContents(sink: KeptFilesSink): Promise<void>;
  sync(fsync: boolean): Promise<void>;
  close(): Promise<void>;
  /** CapturedWorkFiles.settleLinks for each volume. */
  settleLinks(keep: number | undefined): void;
}

/** What the job (`pids`, stopped) holds open for writing in each volume, in one pass over its descriptors. */
export async function captureVolumeFiles(
  pids: readonly number[],
  volumes: readonly JobVolume[],
): Promise<CapturedVolumeFiles> {
  const captured = await captureOpenFiles(
    pids,
    volumes.map((v) => ({ containerPath: v.destination, dir: v.source })),
  );
  return {
    records: volumes.map((v, i) => ({
      destination: v.destination,
      files: captured[i]!.files,
      closed: captured[i]!.closed.files,
      closedNonFiles: captured[i]!.closed.nonFiles ?? [],
      ...(captured[i]!.closed.links ? { closedLinks: captured[i]!.closed.links } : {}),
      ...(captured[i]!.closed.more ? { closedMore: true as const } : {}),
    })),
    async keepContents(sink) {
      for (const c of captured) await c.keepContents(sink);
    },
    async sync(fsync) {
      await Promise.all(captured.map((c) => c.sync(fsync)));
    },
    async close() {
      await Promise.all(captured.map((c) => c.close()));
    },
    settleLinks(keep) {
      for (const c of captured) c.settleLinks(keep);
    },
  };
}

/** A manifest's record of a place's other files, for prepareRollBack. */
export const closedOf = (
  files: ClosedFile[] | undefined,
  more: true | undefined,
  nonFiles: string[] | undefined,
  links: string | undefined,
): ClosedFiles | undefined =>
  files && { files, more: !!more, ...(nonFiles ? { nonFiles } : {}), ...(links ? { links } : {}) };

const placeOf = (destination: string): RollBackPlace => ({
  reason: 'volume-files',
  name: `the volume at ${destination}`,
  own: `the volume at ${destination}`,
  fix: `${ROLLBACK_VOLUMES_FIELD} says only this job writes there: mount the same volume at ${destination}, and let nothing else change the files the job writes in it`,
});

/**
 * Before CRIU reopens them: every recorded file of every volume checked and
 * held (none cut yet), in the new container's mount of the same destination.
 * Throws CheckpointUnusableError (reason `volume-files`) when a volume is not
 * mounted there any more or a file cannot be rolled back, with nothing cut.
 */
export async function prepareVolumeRollBacks(
  spec: OciSpec,
  recorded: readonly VolumeFiles[],
): Promise<{ destination: string; rollBack: RollBack }[]> {
  const ready: { destination: string; rollBack: RollBack }[] = [];
  try {
    for (const r of recorded) {
      const m = bindAt(spec, r.destination);
      if (!m || isReadOnly(m))
        throw new CheckpointUnusableError(
          'volume-files',
          `the job had files open in its volume at ${r.destination} at the checkpoint, and this container has no writable volume mounted there: mount the same volume at ${r.destination} as before`,
        );
      ready.push({
        destination: r.destination,
        rollBack: await prepareRollBack(
          m.source!,
          r.files,
          placeOf(r.destination),
          closedOf(r.closed, r.closedMore, r.closedNonFiles, r.closedLinks),
        ),
      });
    }
  } catch (err) {
    await Promise.all(ready.map((p) => p.rollBack.close()));
    throw err;
  }
  return ready;
}

/**
 * A fix for CRIU's refusal of a file that grew in a volume nothing rolls
 * back ("File results/out.csv has bad size 870 (expect 512)"): the volume
 * to name in ARCH_ROLLBACK_VOLUMES; undefined for anything else.
 */
export function grownVolumeFileFix(message: string, spec: OciSpec, named: readonly string[]): string | undefined {
  // CRIU names it relative to the container's root ("File results/out.csv has bad size").
  const criuPath = /File (\S+) has bad size/.exec(message)?.[1];
  if (!criuPath) return undefined;
  const file = path.posix.join('/', criuPath);
  const volume = (spec.mounts ?? [])
    .filter((m) => isBindMount(m) && !isReadOnly(m) && m.destination && m.destination !== '/')
    .map((m) => mountDestination(m.destination))
    .filter((d) => file.startsWith(`${d}/`))
    .sort((a, b) => b.length - a.length)[0];
  if (!volume || named.includes(volume)) return undefined;
  return (
    `${file} changed since the checkpoint in the volume at ${volume}, which ARCH does not roll back. ` +
    `Fix: if only this job writes there, set ${ROLLBACK_VOLUMES_FIELD}=${volume} on the container ` +
    `(its open files there are then cut back to their sizes at each checkpoint)`
  );
}
