import { execa } from 'execa';
import fs from 'node:fs';
import path from 'node:path';
import { Containerd } from '../../core/containerd.js';
import { readLogLines } from '../support/arch-env.js';
import { waitFor } from '../support/arch-node.js';
import { COUNTER_FILES, ensureTestImage, REPO_ROOT } from '../support/images.js';
import { ensureSystemContainerd, type SystemContainerd } from '../support/system-containerd.js';

/**
 * README's quick start, literally: the installed node (/etc/arch/arch.env
 * written by install.sh, containerd on its default socket and runc root),
 * `ctr run --runc-binary arch-runc`, `arch-cli finalize`, delete, `ctr run`
 * again → the job continues. Nothing here overrides ARCH's settings.
 */
const NS = 'arch-quickstart';
const ID = 'job-1';
let sys: SystemContainerd;
let cd: Containerd;
let storage: string;

beforeAll(async () => {
  // Under /var/lib/arch: the installed node allows checkpoints there only (ARCH_ALLOWED_ROOTS' default).
  fs.mkdirSync('/var/lib/arch', { recursive: true });
  storage = fs.mkdtempSync('/var/lib/arch/qs-');
  sys = await ensureSystemContainerd(path.join(storage, 'containerd.log'));
  cd = new Containerd({ address: sys.address, namespace: NS });
  await cd.removeContainer(ID).catch(() => undefined);
});

afterAll(async () => {
  await cd?.removeContainer(ID).catch(() => undefined);
  await sys?.stop();
  fs.rmSync(storage, { recursive: true, force: true });
});

function countOf(): number {
  const bundle = `/run/containerd/io.containerd.runtime.v2.task/${NS}/${ID}`;
  return Number(fs.readFileSync(path.join(bundle, 'rootfs', COUNTER_FILES.count), 'utf8'));
}

test('install → ctr run with arch-runc → finalize → re-create continues', async () => {
  const image = await ensureTestImage(cd);
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/ck`];
  const arch = { runcBinary: path.join(REPO_ROOT, 'bin/arch-runc'), env, image, id: ID, detach: true as const };
  await cd.run({ ...arch, logFile: path.join(storage, 'out1') });
  await waitFor('count >= 5', () => (countOf() >= 5 ? true : undefined));

  // The installed node's settings and keys, not the test run's (test/support/arch-env.ts sets ARCH_SIGNING_KEY).
  const installed: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(installed)) if (k.startsWith('ARCH_') && k !== 'ARCH_CI_RUN_ID') delete installed[k];
  const fin = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), ['finalize', '-n', NS, '--deadline', '60s'], {
    reject: false,
    env: installed,
    extendEnv: false,
  });
  expect(fin.stderr).toBe('');
  expect(fin.exitCode).toBe(0);
  expect(String(fin.stdout)).toMatch(new RegExp(`ok\\s+${NS}/${ID}`));
  await cd.waitStatus(ID, 'STOPPED', 15_000);
  const atCheckpoint = countOf();
  await cd.removeContainer(ID);

  const out2 = path.join(storage, 'out2');
  await cd.run({ ...arch, logFile: out2 });
  await waitFor('count continues', () => (countOf() > atCheckpoint + 3 ? true : undefined));
  expect(Number(/count (\d+)/.exec(fs.readFileSync(out2, 'utf8'))?.[1])).toBeGreaterThanOrEqual(atCheckpoint);
  // The installed settings send the shim's log to ARCH_LOG_FILE.
  const logFile =
    /^ARCH_LOG_FILE=(.*)$/m.exec(fs.readFileSync('/etc/arch/arch.env', 'utf8'))?.[1] ?? '/var/log/arch/arch.log';
  expect(
    readLogLines(logFile).some((l) => l.msg === 'restored from checkpoint' && l.namespace === NS && l.container === ID),
  ).toBe(true);
});
