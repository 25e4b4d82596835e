import { execa } from 'execa';
import fsp from 'node:fs/promises';
import path from 'node:path';

/**
 * The shim's V8 start-up snapshot (dist/shim/arch-runc.blob) and its stamp.
 * scripts/build-shim-snapshot.ts makes both; bin/arch-runc reads the stamp
 * (shim/arch-runc.c) before every Node start (the same fields as `stat -L
 * --printf STAT_FORMAT`), and
 * `arch-cli doctor` reports whether it still holds.
 *
 * A blob works only with the Node that built it (any other crashes on it),
 * so the stamp names that Node and records its identity, and that of
 * libnode where Node is a shared library (Debian 13):
 *   line 1  the Node (real path)
 *   line 2  its libraries, space-separated (may be empty)
 *   line 3  `stat -L --printf STAT_FORMAT` of line 1 and line 2
 */
export const STAT_FORMAT = '%d:%i:%s:%Y:%Z;';

export function snapshotFiles(archHome: string): { blob: string; stamp: string } {
  const blob = path.join(archHome, 'dist/shim/arch-runc.blob');
  return { blob, stamp: `${blob}.stamp` };
}

export interface Stamp {
  node: string;
  libs: string[];
  identity: string;
}

/** What `stat` says of these files now (throws if one is missing). */
export async function fileIdentity(files: string[]): Promise<string> {
  return String((await execa('stat', ['-L', '--printf', STAT_FORMAT, ...files])).stdout);
}

export function formatStamp(s: Stamp): string {
  return `${s.node}\n${s.libs.join(' ')}\n${s.identity}\n`;
}

/** Whether bin/arch-runc would start from the snapshot now, and why not. */
export async function snapshotState(archHome: string): Promise<{ usable: boolean; detail: string }> {
  const { blob, stamp } = snapshotFiles(archHome);
  const text = await fsp.readFile(stamp, 'utf8').catch(() => undefined);
  if (text === undefined) return { usable: false, detail: `no ${stamp}: the build made no snapshot` };
  const [node = '', libs = '', identity = ''] = text.split('\n');
  const files = [node, ...libs.split(' ').filter(Boolean)];
  const now = await fileIdentity(files).catch(() => undefined);
  if (now === undefined || now !== identity)
    return {
      usable: false,
      detail: `${node}${files.length > 1 ? ` (or ${files.slice(1).join(', ')})` : ''} changed since the build made ${blob}`,
    };
  return { usable: true, detail: `${blob}, for ${node}` };
}
