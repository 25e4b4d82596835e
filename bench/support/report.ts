import type { BenchResult, Row, Table } from './registry.js';

export interface RunInfo {
  startedAt: string;
  durationMs: number;
  host: Record<string, string | number>;
  options: Record<string, unknown>;
}

const fmt = (x: number | undefined, unit = ''): string => (x === undefined || !Number.isFinite(x) ? '' : `${x}${unit}`);

function mdTable(header: string[], rows: (string | number)[][]): string {
  const esc = (v: string | number) => String(v).replace(/\|/g, '\\|');
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `| ${header.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

const SUMMARY_HEADER = [
  'benchmark',
  'metric',
  'ARCH',
  'raw',
  'added (median)',
  'added p95',
  'ARCH/raw',
  'n',
  'target',
  'ok',
];

function summaryRow(bench: string, r: Row): (string | number)[] {
  const u = r.unit === 'x' ? 'x' : ` ${r.unit}`;
  return [
    bench,
    r.note ? `${r.metric} (${r.note})` : r.metric,
    fmt(r.arch, u),
    fmt(r.raw, u),
    fmt(r.added, u),
    fmt(r.addedP95, u),
    r.ratio === undefined ? '' : `${r.ratio}`,
    fmt(r.n),
    r.target ?? '',
    r.pass === undefined ? '' : r.pass ? 'yes' : 'NO',
  ];
}

/** The summary table alone (what the console shows). */
export function summaryTable(results: BenchResult[]): string {
  const rows: (string | number)[][] = [];
  for (const b of results) {
    if (b.status === 'failed')
      rows.push([b.name, `FAILED: ${b.error?.split('\n')[0] ?? ''}`, '', '', '', '', '', '', '', 'NO']);
    for (const r of b.rows) rows.push(summaryRow(b.name, r));
  }
  return mdTable(SUMMARY_HEADER, rows);
}

function table(t: Table): string {
  return `#### ${t.title}\n\n${mdTable(t.header, t.rows)}`;
}

export function resultsMarkdown(info: RunInfo, results: BenchResult[]): string {
  const parts: string[] = [];
  parts.push('# ARCH benchmark results');
  parts.push(
    [
      `Written by \`npm run bench\` (bench/run.ts) on ${info.startedAt}, ${Math.round(info.durationMs / 1000)} s in all.`,
      `Machine: ${Object.entries(info.host)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}.`,
      `Options: ${JSON.stringify(info.options)}.`,
      'ARCH and the raw tool are measured in the same run, interleaved; compare ratios and paired differences, not absolute times (the VM is noisy, and shared with other work: see the load averages).',
      'Columns: ARCH and raw are medians; "added" is the median of paired differences (passthrough) or the difference of the medians; ARCH/raw is the median of per-repetition ratios for checkpoint-restore, the ratio of the medians elsewhere.',
      'Raw samples and per-repetition phase timings are in bench/results.json.',
    ].join('\n'),
  );
  parts.push(`## Summary\n\n${summaryTable(results)}`);
  for (const b of results) {
    const sec: string[] = [`## ${b.title} (\`${b.name}\`, ${Math.round(b.durationMs / 1000)} s)`];
    if (b.status === 'failed') sec.push(`**FAILED**: \`\`\`\n${b.error ?? ''}\n\`\`\``);
    if (b.notes.length) sec.push(b.notes.map((n) => `- ${n}`).join('\n'));
    for (const t of b.tables ?? []) sec.push(table(t));
    parts.push(sec.join('\n\n'));
  }
  return `${parts.join('\n\n')}\n`;
}
