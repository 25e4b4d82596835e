import { containerDir, joinInside, requireAbsolutePath } from '../../core/paths.js';
import { inputError } from '../support/input-error.js';

describe('requireAbsolutePath', () => {
  test.each([
    ['/var/lib/arch', '/var/lib/arch'],
    ['/var/lib/arch/', '/var/lib/arch'],
    ['/var//lib/./arch', '/var/lib/arch'],
    ['/', '/'],
    ['//', '/'],
  ])('%p -> %p', (input, out) => {
    expect(requireAbsolutePath(input, 'F')).toBe(out);
  });

  test.each([['rel/path'], ['./x'], ['x'], ['']])('relative %j is refused with the field and an example fix', (v) => {
    const err = inputError(() => requireAbsolutePath(v, 'ARCH_CHECKPOINT_HOST_PATH'));
    expect(err.field).toBe('ARCH_CHECKPOINT_HOST_PATH');
    expect(err.message).toMatch(
      /^ARCH_CHECKPOINT_HOST_PATH: .* is a relative path\. Fix: set it to an absolute path, e\.g\. \/var\/lib\/arch$/,
    );
  });

  test.each([['/var/../etc'], ['/..'], ['/a/b/..']])('%j with ".." is refused', (v) => {
    const err = inputError(() => requireAbsolutePath(v, 'F'));
    expect(err.message).toContain('contains ".."');
  });

  test('"..." and "..x" are names, not parent references', () => {
    expect(requireAbsolutePath('/a/.../b', 'F')).toBe('/a/.../b');
    expect(requireAbsolutePath('/a/..x', 'F')).toBe('/a/..x');
  });

  test('NUL', () => {
    expect(inputError(() => requireAbsolutePath('/a\0b', 'F')).message).toContain('NUL');
  });
});

describe('joinInside', () => {
  test('joins below the root', () => {
    expect(joinInside('/r', 'a', 'b')).toBe('/r/a/b');
    expect(joinInside('/r', 'a/./b')).toBe('/r/a/b');
  });

  test.each([[['..']], [['a', '../..']], [['/etc']], [['a/../../x']], [['..', 'rx']]])(
    '%j escapes and is refused',
    (parts) => {
      const err = inputError(() => joinInside('/r', ...parts));
      expect(err.message).toContain('escapes /r');
    },
  );

  test('a detour that comes back inside is inside', () => {
    expect(joinInside('/r', '..', 'r', 'x')).toBe('/r/x');
  });

  test('a name that merely starts with ".." stays inside', () => {
    expect(joinInside('/r', '..x')).toBe('/r/..x');
    expect(joinInside('/r', 'ns', '..job')).toBe('/r/ns/..job');
  });
});

describe('containerDir', () => {
  test('ROOT/NS/ID', () => {
    expect(containerDir('/var/lib/arch', 'default', 'job-1')).toBe('/var/lib/arch/default/job-1');
    expect(containerDir('/var/lib/arch', 'k8s.io', '..job')).toBe('/var/lib/arch/k8s.io/..job');
  });

  test.each([
    ['..', 'job'],
    ['a/b', 'job'],
    ['default', '..'],
    ['default', '../../etc'],
    ['default', 'a/b'],
    ['default', 'x'.repeat(129)],
    ['n'.repeat(77), 'job'],
    ['default', 'a\0'],
  ])('namespace %j / id %j never becomes a path', (ns, id) => {
    const err = inputError(() => containerDir('/var/lib/arch', ns, id));
    expect(err.field).toMatch(/^(namespace|container id)$/);
  });
});
