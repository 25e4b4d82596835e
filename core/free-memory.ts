import fsp from 'node:fs/promises';

/** MemAvailable from /proc/meminfo: what a restore on this node could use. */
export async function freeMemBytes(): Promise<number> {
  const text = await fsp.readFile('/proc/meminfo', 'utf8').catch(() => '');
  const kb = /^MemAvailable:\s+(\d+) kB$/m.exec(text)?.[1];
  return kb ? Number(kb) * 1024 : 0;
}
