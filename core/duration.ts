/**
 * Durations as people write them ("90s", "2m", "1h30m", "500ms"): one
 * reader for the CLI's flags, the worker's options, node settings and the
 * container contract. No dependencies, so the shim can load it cheaply.
 */
const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Milliseconds, or undefined when `v` is not a duration. A bare number is
 * seconds unless `requireUnit` (a container's variable: "2" is ambiguous there).
 */
export function durationMs(v: string, { requireUnit = false }: { requireUnit?: boolean } = {}): number | undefined {
  const s = v.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return requireUnit ? undefined : Math.round(Number(s) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let pos = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s))) {
    total += Number(m[1]) * UNITS[m[2]!]!;
    pos = re.lastIndex;
  }
  if (pos !== s.length || s.length === 0) return undefined;
  return Math.round(total);
}

/** "45 s", "10 min", "1 h 30 min": how ls and the logs say an interval. */
export function formatDurationMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${+(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  const min = Math.round(ms / 60_000);
  if (min < 60) return `${min} min`;
  const h = Math.floor(min / 60);
  return min % 60 ? `${h} h ${min % 60} min` : `${h} h`;
}
