import { execa } from 'execa';
import fs from 'node:fs';
import path from 'node:path';
import { SPEC_FILE } from '../../core/checkpoint-layout.js';
import { readSpec, type OciSpec } from '../../core/oci-spec.js';
import { realRunc } from './arch-env.js';

/**
 * A bundle for calling runc (or arch-runc) directly, as a user or a tool
 * other than containerd would: a copy of the test rootfs as a plain
 * directory, `runc spec`'s defaults, no terminal.
 */
export async function makeRuncBundle(
  dir: string,
  rootfsFrom: string,
  opts: { env?: string[]; cgroupsPath: string; args?: string[]; edit?: (spec: OciSpec) => void },
): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  await execa('cp', ['-a', rootfsFrom, path.join(dir, 'rootfs')]);
  await execa(realRunc(), ['spec', '--bundle', dir]);
  const spec = await readSpec(dir);
  spec.process = {
    ...spec.process,
    terminal: false,
    args: opts.args ?? ['/usr/bin/counter'],
    env: [...(spec.process?.env ?? []), ...(opts.env ?? [])],
  };
  spec.root = { path: 'rootfs', readonly: false };
  spec.linux = { ...spec.linux, cgroupsPath: opts.cgroupsPath };
  opts.edit?.(spec);
  fs.writeFileSync(path.join(dir, SPEC_FILE), JSON.stringify(spec, null, 1));
}
