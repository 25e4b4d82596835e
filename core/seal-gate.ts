import { execa } from 'execa';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Holds CRIU's restore of a sealed checkpoint until its page images are
 * decrypted, so that the decryption runs while runc and CRIU start (runc,
 * CRIU's swrk, namespaces, mounts) instead of before them. CRIU opens the
 * page images only after its post-setup-namespaces action; at that action
 * bin/arch-criu-gate (named as an `action-script` in the restore's CRIU
 * configuration) reads a verdict from the FIFO `arch-gate` in the image
 * directory: "ok" lets CRIU go on, anything else (a chunk that failed
 * authentication, or EOF because this process died) makes CRIU abort the
 * restore. The FIFO is held open here for reading and writing from the
 * start, so the script's open never waits for this process, and its read
 * ends when this process ends.
 */
export const GATE_FILE = 'arch-gate';
const ARCH_HOME = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const GATE_SCRIPT = path.join(ARCH_HOME, 'bin/arch-criu-gate');

export class SealGate {
  private fd: number | undefined;
  private said = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** The script, when this installation has it (an older copy of ARCH may not: then no gate). */
  static async script(): Promise<string | undefined> {
    if (/\s/.test(GATE_SCRIPT)) return undefined; // a CRIU configuration line cannot name it
    return fsp.access(GATE_SCRIPT, fs.constants.X_OK).then(
      () => GATE_SCRIPT,
      () => undefined,
    );
  }

  /** A closed gate in `imageDir` (the restore's CRIU image directory, root-only scratch). */
  static async close(imageDir: string): Promise<SealGate> {
    const fifo = path.join(imageDir, GATE_FILE);
    await execa('mkfifo', ['-m', '600', fifo]);
    const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
    fs.writeFileSync(`${fifo}.pid`, `${process.pid}\n`, { mode: 0o600, flag: 'wx' });
    return new SealGate(fd);
  }

  /** Let CRIU go on (true) or make it abort (false). Once; later calls do nothing. */
  open(pass: boolean): void {
    if (this.fd === undefined || this.said) return;
    this.said = true;
    try {
      fs.writeSync(this.fd, pass ? 'ok\n' : 'no\n');
    } catch {
      // nobody can read it any more: CRIU is gone
    }
  }

  /** After runc is done with the restore (either way). */
  release(): void {
    if (this.fd === undefined) return;
    fs.closeSync(this.fd);
    this.fd = undefined;
  }
}
