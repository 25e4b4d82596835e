/** Small argument parsers shared by arch-worker and arch-cli. */
import { InvalidArgumentError } from 'commander';
import { durationMs } from './duration.js';

/** "90s", "2m", "1h30m", "500ms", or a bare number of seconds. */
export function parseDurationMs(v: string, flag: string): number {
  const ms = durationMs(v);
  if (ms === undefined)
    throw new InvalidArgumentError(`${flag} "${v}": not a duration. Fix: write e.g. 90s, 2m, 1h30m or 500ms`);
  return ms;
}

export function parseHostPort(v: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(v.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535)
    throw new InvalidArgumentError(`${flag} "${v}": not HOST:PORT. Fix: e.g. 0.0.0.0:7244 or 127.0.0.1:0`);
  return { host: m[1] ?? m[2] ?? '0.0.0.0', port };
}
