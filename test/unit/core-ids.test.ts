import {
  MAX_CONTAINER_ID_LENGTH,
  MAX_NAMESPACE_LENGTH,
  parseContainerRef,
  validateContainerId,
  validateNamespace,
} from '../../contract/ids.js';
import { inputError } from '../support/input-error.js';

describe('validateNamespace', () => {
  test.each(['default', 'k8s.io', 'moby', 'a', 'a-b_c.d', 'A1', 'x'.repeat(MAX_NAMESPACE_LENGTH)])(
    'accepts %p',
    (ns) => {
      expect(validateNamespace(ns)).toBe(ns);
    },
  );

  test.each([
    ['..'],
    ['.'],
    ['a/b'],
    ['/abs'],
    ['a/../b'],
    ['..hidden'],
    ['a..b'],
    ['a.'],
    ['-a'],
    ['a b'],
    ['a\0b'],
    ['a\nb'],
    ['default\n'],
    ['x'.repeat(MAX_NAMESPACE_LENGTH + 1)],
  ])('refuses %j, naming the field and the fix', (ns) => {
    const err = inputError(() => validateNamespace(ns, 'namespace (from runc --root)'));
    expect(err.field).toBe('namespace (from runc --root)');
    expect(err.message).toMatch(/^namespace \(from runc --root\): .*not a valid containerd namespace/);
    expect(err.fix).toMatch(/letters, digits/);
    expect(err.fix).toContain(String(MAX_NAMESPACE_LENGTH));
  });

  test('empty namespace: its own message', () => {
    const err = inputError(() => validateNamespace(''));
    expect(err.field).toBe('namespace');
    expect(err.message).toContain('is empty');
  });

  test('control characters are not echoed raw into logs, long values are shortened', () => {
    const err = inputError(() => validateNamespace(`a\0\n${'b'.repeat(500)}`));
    expect(err.message).not.toMatch(/[\0\n]/);
    expect(err.message.length).toBeLessThan(400);
  });
});

describe('validateContainerId', () => {
  test.each(['job-1', 'a', 'A_b+c-d.e', '..x', 'x..', 'a.b', '0', 'x'.repeat(MAX_CONTAINER_ID_LENGTH)])(
    'accepts %p',
    (id) => {
      expect(validateContainerId(id)).toBe(id);
    },
  );

  test.each([
    ['.'],
    ['..'],
    ['a/b'],
    ['../etc'],
    ['/'],
    ['a\0'],
    ['a\n'],
    ['a b'],
    ['a:b'],
    ['é'],
    ['x'.repeat(MAX_CONTAINER_ID_LENGTH + 1)],
  ])('refuses %j', (id) => {
    const err = inputError(() => validateContainerId(id));
    expect(err.field).toBe('container id');
    expect(err.message).toContain('is not a valid container id');
    expect(err.fix).toContain(String(MAX_CONTAINER_ID_LENGTH));
  });

  test('empty id', () => {
    expect(inputError(() => validateContainerId('', 'id')).message).toBe(
      'id: is empty. Fix: pass the container id as runc/containerd knows it',
    );
  });
});

describe('parseContainerRef', () => {
  test('NAMESPACE/ID', () => {
    expect(parseContainerRef('k8s.io/job-1')).toEqual({ namespace: 'k8s.io', id: 'job-1' });
  });

  test('no namespace', () => {
    for (const ref of ['job-1', '/job-1']) {
      const err = inputError(() => parseContainerRef(ref));
      expect(err.field).toBe('container');
      expect(err.fix).toContain('NAMESPACE/ID');
    }
  });

  test('an id with a further slash or dots is refused, with the part named', () => {
    expect(inputError(() => parseContainerRef('default/a/b')).field).toBe('container id');
    expect(inputError(() => parseContainerRef('default/..')).field).toBe('container id');
    expect(inputError(() => parseContainerRef('../x')).field).toBe('container namespace');
  });
});
