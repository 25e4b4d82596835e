import { execa } from 'execa';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readLogLines } from '../support/arch-env.js';
import { ARCH_RUNC_BIN } from '../support/arch-node.js';
import { REPO_ROOT } from '../support/images.js';
import { SPEC_FILE } from '../../core/checkpoint-layout.js';

/**
 * The environment wins over the settings file, in arch-runc's front
 * too (shim/arch-runc.c): containerd's environment (e.g. ARCH_LOG_FILE set on the service) is
 * what the node's administrator said last. The front once sourced the file,
 * which overwrote such variables before Node read them.
 */
let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-shim-settings-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test('ARCH_LOG_FILE and ARCH_RUNC from the environment beat the settings file', async () => {
  const bundle = path.join(dir, 'bundle');
  fs.mkdirSync(bundle);
  // An invalid contract: arch-runc logs why and hands the create to the real runc.
  fs.writeFileSync(path.join(bundle, SPEC_FILE), JSON.stringify({ process: { env: ['ARCH_ENABLE=yes'] } }));
  const conf = path.join(dir, 'arch.env');
  fs.writeFileSync(
    conf,
    [`ARCH_LOG_FILE=${dir}/from-file.log`, 'ARCH_RUNC="/bin/false"', `export ARCH_HOME='${REPO_ROOT}'`, ''].join('\n'),
  );
  const r = await execa(ARCH_RUNC_BIN, ['--root', path.join(dir, 'root'), 'create', '--bundle', bundle, 'st-1'], {
    env: { ARCH_CONFIG: conf, ARCH_LOG_FILE: path.join(dir, 'from-env.log'), ARCH_RUNC: '/bin/true' },
    reject: false,
  });
  expect(r.exitCode).toBe(0); // /bin/true from the environment, not /bin/false from the file
  expect(fs.existsSync(path.join(dir, 'from-file.log'))).toBe(false);
  expect(
    readLogLines(path.join(dir, 'from-env.log')).some((l) => l.field === 'ARCH_ENABLE' && l.container === 'st-1'),
  ).toBe(true);
});

test("without them in the environment, the file's values are used (quoted or not, with export)", async () => {
  const bundle = path.join(dir, 'bundle');
  const conf = path.join(dir, 'arch2.env');
  fs.writeFileSync(
    conf,
    [`  ARCH_LOG_FILE=${dir}/file2.log`, "ARCH_RUNC='/bin/true'", `export ARCH_HOME="${REPO_ROOT}"`].join('\n'),
  );
  const env: NodeJS.ProcessEnv = { ...process.env, ARCH_CONFIG: conf };
  delete env.ARCH_LOG_FILE;
  delete env.ARCH_RUNC;
  delete env.ARCH_HOME;
  const r = await execa(ARCH_RUNC_BIN, ['--root', path.join(dir, 'root'), 'create', '--bundle', bundle, 'st-2'], {
    env,
    extendEnv: false,
    reject: false,
  });
  expect(r.exitCode).toBe(0);
  expect(readLogLines(path.join(dir, 'file2.log')).some((l) => l.container === 'st-2')).toBe(true);
});
