/**
 * Output: one JSON document on stdout with --json (for scripts), readable
 * text otherwise; progress and diagnostics go to stderr so stdout stays clean.
 */
export interface Out {
  json: boolean;
  /** The result: JSON document, or text lines. */
  result(data: unknown, human: () => string): void;
  /** Progress / diagnostics on stderr (suppressed with --json unless verbose). */
  info(line: string): void;
  isTTY: boolean;
}

export function makeOut(json: boolean): Out {
  return {
    json,
    isTTY: !!process.stderr.isTTY,
    result(data, human) {
      if (json) process.stdout.write(`${JSON.stringify(data, null, 2)}\n`);
      else process.stdout.write(`${human()}\n`);
    },
    info(line) {
      if (!json) process.stderr.write(`${line}\n`);
    },
  };
}

export function table(rows: string[][], header: string[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : (c ?? '').padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function bytes(n: number | undefined): string {
  if (n === undefined) return '-';
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

export function ms(n: number | undefined): string {
  if (n === undefined) return '-';
  return n < 1000 ? `${n} ms` : `${(n / 1000).toFixed(1)} s`;
}

/**
 * Text a container had a hand in (an error that quotes its environment, a
 * name from the store) as one printable line: control characters shown as
 * \xNN, so none reaches the operator's terminal as an escape sequence.
 */
export function printable(s: string): string {
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
