import { execa } from 'execa';
import fs from 'node:fs';
import path from 'node:path';
import { realRunc } from './arch-env.js';

/** The parts of `runc spec`'s config.json that tests change. */
export interface RuncSpec {
  process: { terminal: boolean; args: string[]; env: string[] };
  root: { path: string; readonly: boolean };
  linux: { cgroupsPath?: string; namespaces: { type: string; path?: string }[] };
}

/**
 * A bundle for calling runc (or arch-runc) directly, as a user or a tool
 * other than containerd would: a copy of the test rootfs as a plain
 * directory, `runc spec`'s defaults, no terminal.
 */
export async function makeRuncBundle(
  dir: string,
  rootfsFrom: string,
  opts: { env?: string[]; cgroupsPath: string; args?: string[]; edit?: (spec: RuncSpec) => void },
): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  await execa('cp', ['-a', rootfsFrom, path.join(dir, 'rootfs')]);
  await execa(realRunc(), ['spec', '--bundle', dir]);
  const spec = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as RuncSpec;
  spec.process.terminal = false;
  spec.process.args = opts.args ?? ['/usr/bin/counter'];
  spec.process.env = [...spec.process.env, ...(opts.env ?? [])];
  spec.root = { path: 'rootfs', readonly: false };
  spec.linux.cgroupsPath = opts.cgroupsPath;
  opts.edit?.(spec);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(spec, null, 1));
}
