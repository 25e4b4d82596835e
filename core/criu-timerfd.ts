import path from 'node:path';
import { writeFileAtomic } from './atomic-file.js';
import { FILE_ENTRY, FILES_IMAGE, fileEntries, filesImage, MAX_FILES_IMAGE } from './criu-files-image.js';
import { readSmallFile } from './manifest.js';
import { bytesField, rewriteFields, varintField, wireFields } from './protobuf-wire.js';

/**
 * A periodic timerfd that has fired and not been read yet came back from a
 * restore disarmed: the job read the ticks that were pending, and then its
 * timer never fired again (a loop paced by it waits forever).
 *
 * The kernel does not restart a periodic timerfd when it fires: it counts
 * the expiry and restarts the timer when the file is read. Until then its
 * /proc fdinfo, which CRIU dumps, says `it_value: (0, 0)`, and a job frozen
 * for its dump (or busy elsewhere) reads it only afterwards: nearly every
 * periodic timer in a dump is in that state. CRIU restores it with
 * timerfd_settime(it_value 0), which disarms it, then sets its ticks.
 * (POSIX timers and setitimer are not hit: the kernel reports at least 1 ns
 * or 1 µs left for theirs.)
 *
 * So after a dump ARCH gives each such timer one interval to its next
 * expiry: armed, with its pending ticks, as a read would have left it. It
 * tells that state from a timer the job disarmed (it_value 0 as well) by the
 * ticks: disarming clears them, firing counts one.
 */

/** TimerfdEntry's fields (CRIU's images/timerfd.proto). */
const TFD = { ticks: 5, vsec: 7, vnsec: 8, isec: 9, insec: 10 } as const;

/** The entry of a fired, unread periodic timer with its next expiry one interval away; undefined if it is not one. */
function rearmed(tfd: Buffer): Buffer | undefined {
  const v: Record<number, number> = {};
  for (const f of wireFields(tfd)) if (f.wire === 0) v[f.no] = f.value;
  const isec = v[TFD.isec] ?? 0;
  const insec = v[TFD.insec] ?? 0;
  const fired = !v[TFD.vsec] && !v[TFD.vnsec] && (isec > 0 || insec > 0) && (v[TFD.ticks] ?? 0) > 0;
  if (!fired) return undefined;
  return rewriteFields(tfd, (f) =>
    f.no === TFD.vsec ? varintField(TFD.vsec, isec) : f.no === TFD.vnsec ? varintField(TFD.vnsec, insec) : undefined,
  );
}

/**
 * Rearm, in the files.img of the CRIU images in `criuDir`, every periodic
 * timerfd that had fired unread at the dump; the number rearmed. An image
 * that cannot be read or parsed is left as it is (0): CRIU decides about it.
 */
export async function rearmFiredTimerfds(criuDir: string): Promise<number> {
  const file = path.join(criuDir, FILES_IMAGE);
  const img = await readSmallFile(file, MAX_FILES_IMAGE).catch(() => undefined);
  const entries = img && fileEntries(img);
  if (!img || !entries) return 0;
  let count = 0;
  let changed: Buffer[];
  try {
    changed = entries.map((entry) => {
      let again: Buffer | undefined;
      for (const f of wireFields(entry)) if (f.no === FILE_ENTRY.tfd && f.wire === 2) again = rearmed(f.bytes);
      if (!again) return entry;
      count++;
      const tfd = again;
      return rewriteFields(entry, (f) => (f.no === FILE_ENTRY.tfd ? bytesField(FILE_ENTRY.tfd, tfd) : undefined));
    });
  } catch {
    return 0;
  }
  if (count) await writeFileAtomic(file, filesImage(img, changed));
  return count;
}
