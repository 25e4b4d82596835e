/**
 * The demo's job: a counter written in busybox sh, so that the demo needs
 * no compiler on the user's machine (the tests' counter is C). Its count is
 * a shell variable, i.e. process memory: after a good restore it goes on
 * from where it was; a fresh start would begin at 1 again.
 */
import fs from 'node:fs';
import path from 'node:path';
import { cachedImageArchive, layoutBusyboxRootfs, type ImageArchive } from '../../core/busybox-image.js';

/** Never a real registry host: "localhost/" makes that explicit. */
export const DEMO_IMAGE_REF = 'localhost/arch-demo/counter:1';

const COUNTER_SCRIPT = `#!/bin/sh
# ARCH demo counter: prints "count N" every 0.2 s; N lives in memory only.
n=0
trap 'echo "counter exit $n"; exit 0' TERM INT
echo "counter start pid=$$"
while :; do
  sleep 0.2
  n=$((n + 1))
  echo "count $n"
done
`;

export function demoImageArchive(cacheDir: string): Promise<ImageArchive> {
  return cachedImageArchive({
    cacheDir,
    inputs: [COUNTER_SCRIPT],
    ref: DEMO_IMAGE_REF,
    config: { cmd: ['/bin/sh', '/usr/bin/demo-counter'], createdBy: 'arch-cli demo (cli/demo/image.ts)' },
    layout: (rootfs) =>
      layoutBusyboxRootfs(rootfs, {
        applets: ['sh', 'sleep', 'echo', 'cat'],
        hostname: 'arch-demo',
        files: { '/usr/bin/demo-counter': { content: COUNTER_SCRIPT, mode: 0o755 } },
      }),
  });
}

/**
 * The last "count N" the counter printed in its log after byte `from`
 * (where the log was when the job came to this node: the same log file may
 * hold what it printed here before), or undefined.
 */
/** The counts the counter printed to its log from byte `from` on; none if the log cannot be read. */
function countsIn(logFile: string, from: number): number[] {
  let text: string;
  try {
    text = fs.readFileSync(logFile).subarray(from).toString('utf8');
  } catch {
    return [];
  }
  return [...text.matchAll(/^count (\d+)$/gm)].map((m) => Number(m[1]));
}

export function lastCount(logFile: string, from = 0): number | undefined {
  return countsIn(logFile, from).at(-1);
}

export function firstCount(logFile: string, from = 0): number | undefined {
  return countsIn(logFile, from)[0];
}

export function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

export const demoLogFile = (logDir: string, namespace: string, id: string): string =>
  path.join(logDir, namespace, `${id}.log`);
