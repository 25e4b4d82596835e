import { ArchInputError } from '../contract/errors.js';

/**
 * Where in object storage a container's checkpoints live:
 * ARCH_CHECKPOINT_URL=s3://bucket/prefix (or the node's
 * ARCH_DEFAULT_CHECKPOINT_URL). The URL is the container owner's input:
 * only buckets (or bucket/prefix pairs) the node lists in
 * ARCH_ALLOWED_BUCKETS may be used, and the names are checked strictly since
 * they become object keys (and, in the node's cache, path parts).
 */
export interface S3Location {
  bucket: string;
  /** '' or segments joined by '/', none empty, none '.' or '..'. */
  prefix: string;
}

export const ALLOWED_BUCKETS_SETTING = 'ARCH_ALLOWED_BUCKETS';

/** S3's rules for new buckets (3-63 chars, lower case, digits, '.', '-'; not an IP address; no '..'). */
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** Prefix segments: a conservative set that is the same in a key, a URL and a path. */
const SEGMENT_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

export function validateBucket(bucket: string, field: string): string {
  if (
    !BUCKET_RE.test(bucket) ||
    bucket.includes('..') ||
    bucket.includes('.-') ||
    bucket.includes('-.') ||
    /^\d+\.\d+\.\d+\.\d+$/.test(bucket) ||
    bucket.startsWith('xn--')
  ) {
    throw new ArchInputError(
      field,
      `"${bucket}" is not a valid S3 bucket name`,
      'use 3-63 characters: lower-case letters, digits, "-" and "." (not at either end, not "..", not an IP address)',
    );
  }
  return bucket;
}

export function validatePrefix(prefix: string, field: string): string {
  if (prefix === '') return '';
  const segs = prefix.split('/');
  const bad = segs.find((s) => !SEGMENT_RE.test(s) || s === '.' || s === '..');
  if (bad !== undefined || prefix.length > 512) {
    throw new ArchInputError(
      field,
      `prefix "${prefix}" has ${bad === '' ? 'an empty segment (a leading, trailing or doubled "/")' : `the segment "${bad ?? ''}"`}`,
      'use segments of letters, digits, ".", "_" and "-" separated by single "/" (not "." or "..", no leading or trailing "/")',
    );
  }
  return prefix;
}

/** `s3://bucket[/prefix]`: anything else (another scheme, a query, credentials in the URL) is refused. */
export function parseS3Url(url: string, field: string): S3Location {
  const m = /^s3:\/\/([^/]*)(?:\/(.*))?$/.exec(url);
  if (!m) {
    throw new ArchInputError(
      field,
      `"${url}" is not an s3:// URL`,
      'set it to s3://<bucket>/<prefix>, e.g. s3://checkpoints/team-a',
    );
  }
  const bucket = validateBucket(m[1]!, field);
  if (m[2] === '')
    throw new ArchInputError(
      field,
      `"${url}" ends in "/" (an empty prefix segment)`,
      `write s3://${bucket} or s3://${bucket}/<prefix>`,
    );
  return { bucket, prefix: validatePrefix(m[2] ?? '', field) };
}

export function formatS3Url(loc: S3Location): string {
  return `s3://${loc.bucket}${loc.prefix ? `/${loc.prefix}` : ''}`;
}

/** ARCH_ALLOWED_BUCKETS: `bucket` or `bucket/prefix` entries separated by "," or whitespace. */
export function parseAllowedBuckets(v: string | undefined): S3Location[] {
  const out: S3Location[] = [];
  for (const entry of (v ?? '').split(/[,\s]+/).filter(Boolean)) {
    const slash = entry.indexOf('/');
    const bucket = slash < 0 ? entry : entry.slice(0, slash);
    const prefix = slash < 0 ? '' : entry.slice(slash + 1);
    out.push({
      bucket: validateBucket(bucket, ALLOWED_BUCKETS_SETTING),
      prefix: validatePrefix(prefix, ALLOWED_BUCKETS_SETTING),
    });
  }
  return out;
}

/** The location, when an allowed entry covers it (its bucket, and its prefix or a prefix below it); else a clear refusal. */
export function requireAllowedBucket(loc: S3Location, allowed: readonly S3Location[], field: string): S3Location {
  const covers = (a: S3Location) =>
    a.bucket === loc.bucket && (a.prefix === '' || loc.prefix === a.prefix || loc.prefix.startsWith(`${a.prefix}/`));
  if (allowed.some(covers)) return loc;
  throw new ArchInputError(
    field,
    `${formatS3Url(loc)} is not in a bucket this node allows (${allowed.map(formatS3Url).join(', ') || 'none'})`,
    `use an allowed bucket, or have the node's administrator add "${loc.bucket}" (or "${loc.bucket}/${loc.prefix || '<prefix>'}") to ${ALLOWED_BUCKETS_SETTING} in the node settings (/etc/arch/arch.env)`,
  );
}
