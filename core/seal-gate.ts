import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCommand } from './run-command.js';

/**
 * Holds CRIU's restore of a sealed checkpoint until its page images are
 * decrypted (of a store-format-2 checkpoint: until they are assembled from
 * their checked chunks), so that this runs while runc and CRIU start (runc,
 * CRIU's swrk, namespaces, mounts) instead of before them. CRIU opens the
 * page images only after its post-setup-namespaces action; at that action
 * bin/arch-criu-gate (named as an `action-script` in the restore's CRIU
 * configuration) waits for a verdict beside the FIFO `arch-gate` in the
 * image directory: `arch-gate.ok` lets CRIU go on; `arch-gate.no` (a chunk
 * failed authentication or its digest, the restore is abandoned), or no verdict when the
 * FIFO reaches EOF (this process died), makes CRIU abort the restore. The
 * FIFO is held open here for reading and writing from the start, so the
 * script's open never waits for this process, its read ends when this
 * process writes the wake-up line or ends, and no other process holds it
 * (O_CLOEXEC: runc and CRIU do not inherit it).
 */
export const GATE_FILE = 'arch-gate';
const ARCH_HOME = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const GATE_SCRIPT = path.join(ARCH_HOME, 'bin/arch-criu-gate');

export class SealGate {
  private fd: number | undefined;
  private said = false;

  private constructor(
    fd: number,
    private readonly fifo: string,
  ) {
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
    await runCommand('mkfifo', ['-m', '600', fifo]);
    const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
    fs.writeFileSync(`${fifo}.pid`, `${process.pid}\n`, { mode: 0o600, flag: 'wx' });
    return new SealGate(fd, fifo);
  }

  /** Let CRIU go on (true) or make it abort (false). Once; later calls do nothing. */
  open(pass: boolean): void {
    if (this.fd === undefined || this.said) return;
    this.said = true;
    fs.writeFileSync(`${this.fifo}.${pass ? 'ok' : 'no'}`, '', { mode: 0o600 });
    fs.writeSync(this.fd, '\n'); // wake a script waiting in its read (the pipe never fills: one line per gate)
  }

  /** After runc is done with the restore (either way). */
  release(): void {
    if (this.fd === undefined) return;
    fs.closeSync(this.fd);
    this.fd = undefined;
  }
}
