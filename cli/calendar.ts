/**
 * Calendars for `arch-cli schedule create --pause "<calendar>"`: a cron
 * expression ("0 22 * * 1-5") or a short form ("22:00", "mon-fri 22:00",
 * "weekends 08:30"). Everything becomes a 5-field cron string for the
 * Temporal Schedule, validated here first so a typo fails with a message
 * that says which field is wrong, before anything is created.
 */
import { ArchInputError } from '../contract/errors.js';

const FIELDS = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  {
    name: 'month',
    min: 1,
    max: 12,
    names: ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'],
  },
  { name: 'day of week', min: 0, max: 7, names: ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] },
] as const;

const DAY_WORDS: Record<string, string> = {
  daily: '*',
  everyday: '*',
  weekdays: '1-5',
  weekends: '0,6',
};

function value(tok: string, f: (typeof FIELDS)[number], calendar: string, flag: string): number {
  const names = 'names' in f ? (f.names as readonly string[]) : undefined;
  const byName = names?.indexOf(tok.toLowerCase()) ?? -1;
  const n = byName >= 0 ? byName + (f.name === 'month' ? 1 : 0) : /^\d+$/.test(tok) ? Number(tok) : NaN;
  if (!Number.isInteger(n) || n < f.min || n > f.max) {
    throw new ArchInputError(
      flag,
      `"${calendar}": ${f.name} "${tok}" is not in ${f.min}-${f.max}${names ? ` or ${names.join('/')}` : ''}`,
      'write a cron expression "MIN HOUR DAY MONTH WEEKDAY" (e.g. "0 22 * * 1-5") or "mon-fri 22:00"',
    );
  }
  return n;
}

function checkField(text: string, f: (typeof FIELDS)[number], calendar: string, flag: string): void {
  for (const part of text.split(',')) {
    const [range, step] = part.split('/');
    if (step !== undefined && !/^[1-9]\d*$/.test(step)) {
      throw new ArchInputError(
        flag,
        `"${calendar}": ${f.name} step "${step}" is not a positive number`,
        'write e.g. */15',
      );
    }
    if (range === '*') continue;
    if (!range)
      throw new ArchInputError(
        flag,
        `"${calendar}": empty ${f.name} field`,
        'write a value, a range a-b, a list a,b or *',
      );
    const [lo, hi, extra] = range.split('-');
    if (extra !== undefined)
      throw new ArchInputError(flag, `"${calendar}": ${f.name} "${range}" is not a range`, 'write a range as a-b');
    const a = value(lo!, f, calendar, flag);
    if (hi !== undefined && value(hi, f, calendar, flag) < a) {
      throw new ArchInputError(
        flag,
        `"${calendar}": ${f.name} range "${range}" runs backwards`,
        'write the smaller value first',
      );
    }
  }
}

/** Month and weekday names to numbers ("mon-fri" → "1-5"): one spelling in schedules and listings. */
function normalize(text: string, f: (typeof FIELDS)[number]): string {
  if (!('names' in f)) return text;
  const names = f.names as readonly string[];
  return text.replace(/[a-z]+/gi, (w) => {
    const i = names.indexOf(w.toLowerCase());
    return i < 0 ? w : String(i + (f.name === 'month' ? 1 : 0));
  });
}

/** A validated 5-field cron string. */
export function parseCalendar(calendar: string, flag = '--calendar'): string {
  const text = calendar.trim().replace(/\s+/g, ' ');
  const short = /^(?:([a-z,-]+) )?(\d{1,2}):(\d{2})$/i.exec(text);
  if (short) {
    const [, days, hh, mm] = short;
    let dow = '*';
    if (days) {
      dow = DAY_WORDS[days.toLowerCase()] ?? days.toLowerCase();
      if (!DAY_WORDS[days.toLowerCase()]) {
        checkField(dow, FIELDS[4], calendar, flag);
        dow = normalize(dow, FIELDS[4]);
      }
    }
    const cron = `${Number(mm)} ${Number(hh)} * * ${dow}`;
    checkField(String(Number(hh)), FIELDS[1], calendar, flag);
    checkField(String(Number(mm)), FIELDS[0], calendar, flag);
    return cron;
  }
  const parts = text.split(' ');
  if (parts.length !== 5) {
    throw new ArchInputError(
      flag,
      `"${calendar}" is neither a 5-field cron expression nor "[days] HH:MM"`,
      'write e.g. "0 22 * * 1-5", "22:00" or "mon-fri 22:00"',
    );
  }
  parts.forEach((p, i) => checkField(p, FIELDS[i]!, calendar, flag));
  return parts.map((p, i) => normalize(p, FIELDS[i]!)).join(' ');
}

export function checkTimeZone(tz: string): string {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return tz;
  } catch {
    throw new ArchInputError('--tz', `"${tz}" is not a time zone`, 'use an IANA name such as Europe/Paris or UTC');
  }
}
