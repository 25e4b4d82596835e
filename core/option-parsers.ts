/** Small argument parsers shared by arch-worker and arch-cli. */
import { InvalidArgumentError } from 'commander';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "90s", "2m", "1h30m", "500ms", or a bare number of seconds. */
export function parseDurationMs(v: string, flag: string): number {
  const s = v.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.round(Number(s) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let pos = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s))) {
    total += Number(m[1]) * UNITS[m[2]!]!;
    pos = re.lastIndex;
  }
  if (pos !== s.length || s.length === 0)
    throw new InvalidArgumentError(`${flag} "${v}": not a duration. Fix: write e.g. 90s, 2m, 1h30m or 500ms`);
  return Math.round(total);
}

export function parseHostPort(v: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(v.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535)
    throw new InvalidArgumentError(`${flag} "${v}": not HOST:PORT. Fix: e.g. 0.0.0.0:7244 or 127.0.0.1:0`);
  return { host: m[1] ?? m[2] ?? '0.0.0.0', port };
}
