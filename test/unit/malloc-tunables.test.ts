import { execa } from 'execa';
import fs from 'node:fs';
import {
  forgetMallocTunables,
  MALLOC_TUNABLES,
  MALLOC_TUNED_MARK,
  withMallocTunables,
} from '../../core/malloc-tunables.js';
import { launcherRuns, NODE_LAUNCHERS } from '../support/fake-front-targets.js';

/**
 * ARCH's launchers give its Node processes glibc malloc settings
 * (core/malloc-tunables.ts). The launchers run for real here, with Node
 * and runc replaced by scripts that print what they were given.
 */
const run = launcherRuns(
  'arch-malloc-',
  (name) => `echo "${name} \${GLIBC_TUNABLES-unset} \${${MALLOC_TUNED_MARK}-unset}"`,
);

test.each(NODE_LAUNCHERS)('%s gives Node the malloc settings, marked as its own', async (file, args) => {
  expect(await run(file, args)).toBe(`node ${MALLOC_TUNABLES} 1`);
});

test.each(NODE_LAUNCHERS)("%s leaves an administrator's GLIBC_TUNABLES alone", async (file, args) => {
  expect(await run(file, args, { GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' })).toBe(
    'node glibc.malloc.arena_max=2 unset',
  );
});

test("a call arch-runc passes to runc gets containerd's environment untouched", async () => {
  expect(await run('bin/arch-runc', ['--root', '/run/x', 'state', 'c1'])).toBe('runc unset unset');
});

test('glibc takes the settings as given (none is out of its range)', async () => {
  const ldso = ['/lib64/ld-linux-x86-64.so.2', '/lib/ld-linux-aarch64.so.1'].find((f) => fs.existsSync(f));
  if (!ldso) throw new Error('no glibc dynamic loader found at its usual paths');
  const out = (await execa(ldso, ['--list-tunables'], { env: { GLIBC_TUNABLES: MALLOC_TUNABLES } })).stdout;
  const value = (name: string) => out.match(new RegExp(`^${name.replace(/\./g, '\\.')}: (0x[0-9a-f]+)`, 'm'))?.[1];
  for (const setting of MALLOC_TUNABLES.split(':')) {
    const [name, want] = setting.split('=') as [string, string];
    expect([name, value(name) && Number(value(name))]).toEqual([name, Number(want)]);
  }
});

test("withMallocTunables adds them only where GLIBC_TUNABLES is unset; forgetMallocTunables takes back only a launcher's", () => {
  const added = withMallocTunables({ PATH: '/bin' });
  expect(added).toEqual({ PATH: '/bin', GLIBC_TUNABLES: MALLOC_TUNABLES, [MALLOC_TUNED_MARK]: '1' });
  forgetMallocTunables(added);
  expect(added).toEqual({ PATH: '/bin' });

  const admins = withMallocTunables({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' });
  expect(admins).toEqual({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' });
  forgetMallocTunables(admins);
  expect(admins).toEqual({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' });

  // A mark without ARCH's own value (someone else's string under it) loses only the mark.
  const other = { GLIBC_TUNABLES: 'glibc.malloc.arena_max=2', [MALLOC_TUNED_MARK]: '1' };
  forgetMallocTunables(other);
  expect(other).toEqual({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' });
});
