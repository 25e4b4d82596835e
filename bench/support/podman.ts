import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { buildTestImageArchive, COUNTER_FILES, REPO_ROOT, TEST_IMAGE_REF } from '../../test/support/images.js';
import type { Cleanup } from './cleanup.js';

/**
 * Debian's podman beside ARCH (issue 12's size target): the same counter
 * image (loaded from the test image archive: no registry), the same job,
 * `podman container checkpoint --export --compress zstd`. Podman keeps its
 * own storage under the bench's work directory, runs the real runc, and
 * finds ARCH's private CRIU first on PATH. The rlimits are the ones this
 * sandbox accepts (machines.md).
 */
const CHECKPOINT_TIMEOUT_MS = 90_000;

export interface Podman {
  /** Run a MEM_MB counter, checkpoint it to an export; the export's size and the checkpoint's wall time. */
  exportCheckpoint(id: string, memMb: number): Promise<{ bytes: number; ms: number }>;
}

/** Podman ready to use, installed first when absent (scripts/install-test-clients.sh podman); else why not. */
export async function startPodman(
  workDir: string,
  runDir: string,
  criu: string,
  runc: string,
  cleanup: Cleanup,
): Promise<Podman | string> {
  if ((await execa('sh', ['-c', 'command -v podman'], { reject: false })).exitCode !== 0) {
    const r = await execa('bash', [path.join(REPO_ROOT, 'scripts/install-test-clients.sh'), 'podman'], {
      reject: false,
      all: true,
    });
    if (r.exitCode !== 0) return `podman could not be installed (${r.all?.trim().split('\n').pop() ?? r.exitCode})`;
  }
  const root = path.join(workDir, 'podman-root');
  const base = [
    '--root',
    root,
    '--runroot',
    path.join(runDir, 'podman-run'),
    '--cgroup-manager',
    'cgroupfs',
    '--events-backend',
    'file',
    '--runtime',
    runc,
  ];
  // CRIU without breakpoints (CRIU_FAULT=130), as the bench's own runc runs it: with them, the dump
  // hangs on this VM's kernel (criu waits for a task to trap). runc does not pass that variable on
  // to CRIU, so a `criu` first on PATH sets it.
  const bin = path.join(workDir, 'podman-bin');
  fs.mkdirSync(bin, { recursive: true });
  fs.writeFileSync(path.join(bin, 'criu'), `#!/bin/sh\nCRIU_FAULT=130 exec '${criu}' "$@"\n`, { mode: 0o755 });
  const env = { PATH: `${bin}:${process.env.PATH ?? ''}` };
  const podman = (args: string[], timeout = 60_000) => execa('podman', [...base, ...args], { env, timeout });
  try {
    await podman(['load', '-i', (await buildTestImageArchive()).archive]);
  } catch (err) {
    return `podman load failed: ${(err as Error).message.split('\n')[0]}`;
  }
  cleanup.defer('podman storage', async () => {
    await podman(['rm', '-a', '-f']).catch(() => undefined);
    await podman(['system', 'reset', '-f']).catch(() => undefined);
    fs.rmSync(root, { recursive: true, force: true });
  });
  return {
    async exportCheckpoint(id, memMb) {
      const out = path.join(workDir, `${id}.tar.zst`);
      await podman([
        'run',
        '-d',
        '--name',
        id,
        '--network',
        'none',
        '--ulimit',
        'nofile=10000:10000',
        '--ulimit',
        'nproc=4096:4096',
        '-e',
        `COUNTER_MEM_MB=${memMb}`,
        TEST_IMAGE_REF,
      ]);
      try {
        const until = Date.now() + 60_000;
        for (;;) {
          const c = await podman(['exec', id, 'cat', COUNTER_FILES.count]).catch(() => undefined);
          if (c && Number(c.stdout.trim()) >= 2) break;
          if (Date.now() > until) throw new Error(`podman ${id}: the counter did not tick`);
          await new Promise((r) => setTimeout(r, 200));
        }
        const t0 = Date.now();
        await podman(['container', 'checkpoint', '--export', out, '--compress', 'zstd', id], CHECKPOINT_TIMEOUT_MS);
        const ms = Date.now() - t0;
        return { bytes: fs.statSync(out).size, ms };
      } finally {
        await podman(['rm', '-f', id]).catch(() => undefined);
        fs.rmSync(out, { force: true });
      }
    },
  };
}
