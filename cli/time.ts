/** "--deadline 2m" (from now) or an ISO time. */
import { ArchInputError } from '../contract/errors.js';
import { parseDurationMs } from '../core/option-parsers.js';

export function parseDeadline(v: string, flag = '--deadline', now = Date.now()): string {
  if (/^\d{4}-\d{2}-\d{2}T/.test(v)) {
    const t = Date.parse(v);
    if (Number.isNaN(t))
      throw new ArchInputError(
        flag,
        `"${v}" is not a valid ISO time`,
        'write e.g. 2026-01-01T12:00:00Z or a duration such as 2m',
      );
    return new Date(t).toISOString();
  }
  try {
    return new Date(now + parseDurationMs(v, flag)).toISOString();
  } catch {
    throw new ArchInputError(
      flag,
      `"${v}" is neither a duration nor an ISO time`,
      'write e.g. 2m, 90s or 2026-01-01T12:00:00Z',
    );
  }
}
