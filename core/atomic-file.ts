import fsp from 'node:fs/promises';

/**
 * Write a file so that a reader sees the old content or the new, never half
 * of it (a crash mid-write included): write beside it, then rename over it.
 * The temporary name carries the pid, so two writers never share one.
 */
export async function writeFileAtomic(
  file: string,
  data: string | Buffer,
  opts: { mode?: number } = {},
): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    await fsp.writeFile(tmp, data, opts.mode === undefined ? {} : { mode: opts.mode });
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}
