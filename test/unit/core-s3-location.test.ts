import {
  formatS3Url,
  parseAllowedBuckets,
  parseS3Url,
  requireAllowedBucket,
  validateBucket,
} from '../../core/s3-location.js';
import { checkpointDirOf, envListToMap, parseContract, type EnabledContract } from '../../core/env-contract.js';
import { loadSettings } from '../../core/settings.js';
import { inputError } from '../support/input-error.js';

const F = 'ARCH_CHECKPOINT_URL';

describe('parseS3Url', () => {
  test('bucket, bucket/prefix, nested prefixes', () => {
    expect(parseS3Url('s3://ckpts', F)).toEqual({ bucket: 'ckpts', prefix: '' });
    expect(parseS3Url('s3://ckpts/team-a', F)).toEqual({ bucket: 'ckpts', prefix: 'team-a' });
    expect(parseS3Url('s3://my.bucket-1/a/b_c/d.e', F)).toEqual({ bucket: 'my.bucket-1', prefix: 'a/b_c/d.e' });
    expect(formatS3Url(parseS3Url('s3://ckpts/a/b', F))).toBe('s3://ckpts/a/b');
  });

  test.each([
    ['http://ckpts/a', 'is not an s3:// URL'],
    ['s3:/ckpts', 'is not an s3:// URL'],
    ['ckpts/a', 'is not an s3:// URL'],
    ['s3://', 'not a valid S3 bucket name'],
    ['s3://ab', 'not a valid S3 bucket name'],
    ['s3://Upper', 'not a valid S3 bucket name'],
    ['s3://a..b', 'not a valid S3 bucket name'],
    ['s3://a.-b', 'not a valid S3 bucket name'],
    ['s3://-abc', 'not a valid S3 bucket name'],
    ['s3://abc-', 'not a valid S3 bucket name'],
    ['s3://192.168.1.1', 'not a valid S3 bucket name'],
    ['s3://user:pw@host', 'not a valid S3 bucket name'],
    [`s3://${'a'.repeat(64)}`, 'not a valid S3 bucket name'],
    ['s3://ckpts/', 'an empty prefix segment'],
    ['s3://ckpts//a', 'empty segment'],
    ['s3://ckpts/a/', 'empty segment'],
    ['s3://ckpts/../etc', 'the segment ".."'],
    ['s3://ckpts/a/./b', 'the segment "."'],
    ['s3://ckpts/a b', 'the segment "a b"'],
    ['s3://ckpts/a?x=1', 'the segment "a?x=1"'],
    ['s3://ckpts/a%2F..', 'the segment "a%2F.."'],
  ])('%s is refused (%s), naming the variable and the fix', (url, why) => {
    const e = inputError(() => parseS3Url(url, F));
    expect(e.field).toBe(F);
    expect(e.message).toContain(why);
    expect(e.fix.length).toBeGreaterThan(10);
  });

  test('bucket names: the S3 rules', () => {
    expect(validateBucket('abc', F)).toBe('abc');
    expect(validateBucket('a-b.c1', F)).toBe('a-b.c1');
    inputError(() => validateBucket('xn--abc', F));
  });
});

describe('ARCH_ALLOWED_BUCKETS', () => {
  const allowed = parseAllowedBuckets('ckpts, other/team-a  third');
  test('entries: bucket or bucket/prefix, "," or blanks between', () => {
    expect(allowed).toEqual([
      { bucket: 'ckpts', prefix: '' },
      { bucket: 'other', prefix: 'team-a' },
      { bucket: 'third', prefix: '' },
    ]);
    expect(parseAllowedBuckets(undefined)).toEqual([]);
    expect(inputError(() => parseAllowedBuckets('ok,Bad_Bucket')).field).toBe('ARCH_ALLOWED_BUCKETS');
    expect(inputError(() => parseAllowedBuckets('ok/../x')).field).toBe('ARCH_ALLOWED_BUCKETS');
  });

  test('a bucket allows every prefix in it; a bucket/prefix only that prefix and below (not a sibling that shares its start)', () => {
    expect(() => requireAllowedBucket(parseS3Url('s3://ckpts/x/y', F), allowed, F)).not.toThrow();
    expect(() => requireAllowedBucket(parseS3Url('s3://other/team-a', F), allowed, F)).not.toThrow();
    expect(() => requireAllowedBucket(parseS3Url('s3://other/team-a/sub', F), allowed, F)).not.toThrow();
    for (const url of ['s3://other', 's3://other/team-ab', 's3://other/team-b', 's3://nope/team-a']) {
      const e = inputError(() => requireAllowedBucket(parseS3Url(url, F), allowed, F));
      expect(e.field).toBe(F);
      expect(e.message).toContain('ARCH_ALLOWED_BUCKETS');
      expect(e.message).toContain('/etc/arch/arch.env');
    }
  });
});

describe('the container contract with ARCH_CHECKPOINT_URL', () => {
  const settings = loadSettings({
    ARCH_CONFIG: '/dev/null',
    ARCH_ALLOWED_BUCKETS: 'ckpts/team-a',
    ARCH_S3_CACHE_PATH: '/var/lib/arch/s3-cache',
    AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:9000',
    AWS_ACCESS_KEY_ID: 'K',
    AWS_SECRET_ACCESS_KEY: 'S',
  });
  const opts = {
    allowedRoots: settings.allowedRoots,
    allowedBuckets: settings.allowedBuckets,
    s3: { client: settings.s3, cacheRoot: settings.s3CacheRoot },
  };
  const parse = (e: Record<string, string>) =>
    parseContract(envListToMap(Object.entries(e).map(([k, v]) => `${k}=${v}`)), opts);

  test('an allowed URL: mode s3, the node cache mirrors the key layout, credentials are the node’s', () => {
    const c = parse({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_URL: 's3://ckpts/team-a/x', ARCH_CHECKPOINT_ID: 'job' });
    expect(c).toMatchObject({ enabled: true, mode: 's3' });
    const e = c as Extract<EnabledContract, { mode: 's3' }>;
    expect(e.s3.loc).toEqual({ bucket: 'ckpts', prefix: 'team-a/x' });
    expect(e.s3.client).toMatchObject({ endpoint: 'http://127.0.0.1:9000', accessKeyId: 'K', forcePathStyle: true });
    expect(checkpointDirOf(e, 'default', 'c1')).toBe('/var/lib/arch/s3-cache/ckpts/team-a/x/default/job');
  });

  test('a container cannot bring its own credentials or endpoint: AWS_* in its env change nothing', () => {
    const c = parse({
      ARCH_ENABLE: '1',
      ARCH_CHECKPOINT_URL: 's3://ckpts/team-a',
      AWS_ENDPOINT_URL_S3: 'http://203.0.113.1',
      AWS_ACCESS_KEY_ID: 'mine',
    }) as Extract<EnabledContract, { mode: 's3' }>;
    expect(c.s3.client.endpoint).toBe('http://127.0.0.1:9000');
    expect(c.s3.client.accessKeyId).toBe('K');
  });

  test('a bucket the node does not allow, or the URL with a host path: refused, naming the variable', () => {
    expect(inputError(() => parse({ ARCH_ENABLE: '1', ARCH_CHECKPOINT_URL: 's3://ckpts/team-b' })).message).toMatch(
      /^ARCH_CHECKPOINT_URL: .*ARCH_ALLOWED_BUCKETS/,
    );
    expect(
      inputError(() =>
        parse({
          ARCH_ENABLE: '1',
          ARCH_CHECKPOINT_URL: 's3://ckpts/team-a',
          ARCH_CHECKPOINT_HOST_PATH: '/var/lib/arch',
        }),
      ).field,
    ).toBe('ARCH_CHECKPOINT_URL');
  });

  test("the node's ARCH_DEFAULT_CHECKPOINT_URL applies to a container that names no place, and is allowed by itself", () => {
    const s = loadSettings({ ARCH_CONFIG: '/dev/null', ARCH_DEFAULT_CHECKPOINT_URL: 's3://fleet/ckpts' });
    expect(s.allowedBuckets).toEqual([{ bucket: 'fleet', prefix: 'ckpts' }]);
    const c = parseContract(envListToMap(['ARCH_ENABLE=1']), {
      allowedRoots: s.allowedRoots,
      allowedBuckets: s.allowedBuckets,
      defaultCheckpointUrl: s.defaultCheckpointUrl!,
      s3: { client: s.s3, cacheRoot: s.s3CacheRoot },
    });
    expect(c).toMatchObject({ mode: 's3', s3: { loc: { bucket: 'fleet', prefix: 'ckpts' } } });
    // A container that names a host path keeps it.
    const local = parseContract(envListToMap(['ARCH_ENABLE=1', 'ARCH_CHECKPOINT_HOST_PATH=/var/lib/arch']), {
      allowedRoots: s.allowedRoots,
      allowedBuckets: s.allowedBuckets,
      defaultCheckpointUrl: s.defaultCheckpointUrl!,
    });
    expect(local).toMatchObject({ mode: 'local' });
  });
});
