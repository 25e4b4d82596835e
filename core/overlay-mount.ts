import fsp from 'node:fs/promises';
import path from 'node:path';

/**
 * A container's writable layer, found from the overlay mounted on its rootfs
 * (/proc/self/mountinfo). Apart from core/rootfs-diff.ts, which captures and
 * applies layers, so that listing containers (`arch-cli ls --local`, the
 * finalize plan) does not load the tar library.
 */
export async function findUpperDir(mountPoint: string): Promise<string | undefined> {
  return (await findOverlayDirs(mountPoint))?.upper;
}

export interface OverlayDirs {
  upper: string;
  /**
   * The lower dirs, topmost first; undefined when the mount names them
   * relative to a directory this process cannot know (Docker does that when
   * the absolute list would be too long for the mount call).
   */
  lower: string[] | undefined;
}

/** The overlay mounted at `mountPoint` (the last mount there wins), or undefined if it is not an overlay with an upper dir. */
export async function findOverlayDirs(mountPoint: string): Promise<OverlayDirs | undefined> {
  const target = path.resolve(mountPoint);
  const lines = (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n');
  let found: OverlayDirs | undefined;
  for (const line of lines) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    if (unescapeMount(left[4] ?? '') !== target) continue;
    if (right[0] !== 'overlay') {
      found = undefined; // a later mount on the same point hides earlier ones
      continue;
    }
    const opts = (right[2] ?? '').split(',');
    const upper = opts.find((o) => o.startsWith('upperdir='));
    const lower = opts.find((o) => o.startsWith('lowerdir='));
    // "\\:" escapes a colon inside one lower dir's name.
    const lowers = lower
      ? unescapeMount(lower.slice('lowerdir='.length))
          .split(/(?<!\\):/)
          .map((d) => d.replace(/\\:/g, ':'))
      : [];
    found = upper
      ? {
          upper: unescapeMount(upper.slice('upperdir='.length)),
          lower: lowers.length && lowers.every((d) => path.isAbsolute(d)) ? lowers : undefined,
        }
      : undefined;
  }
  return found;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}
