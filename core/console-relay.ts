import { spawn, type ChildProcessByStdio } from 'node:child_process';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';

/**
 * The restored terminal, held back from the caller until the restore has
 * worked (shim/console-relay.c says why: a console socket serves once).
 * runc restores against `path`; `handOver` passes the terminal on to the
 * caller's console socket, `drop` forgets it, and the caller's socket is
 * then still unspent for the fresh create.
 */
export class ConsoleRelay {
  private readonly exited: Promise<{ code: number | null; stderr: string }>;
  private readonly lines: string[] = [];
  private lineWaiter?: () => void;
  private closed?: Promise<void>;

  private constructor(
    private readonly helper: ChildProcessByStdio<Writable, Readable, Readable>,
    private readonly dir: string,
    readonly path: string,
  ) {
    let stderr = '';
    helper.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    let buffered = '';
    helper.stdout.setEncoding('utf8').on('data', (d: string) => {
      buffered += d;
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        this.lines.push(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
      this.lineWaiter?.();
    });
    helper.stdin.on('error', () => undefined); // a helper that exited: its exit says why
    this.exited = new Promise((resolve) => helper.on('close', (code) => resolve({ code, stderr: stderr.trim() })));
  }

  /** Starts the helper on a socket in a fresh root-only directory (sun_path is short: a bundle's path is too long). */
  static async open(): Promise<ConsoleRelay> {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'arch-console-'));
    // '../shim/': dist/shim from dist/core and from the shim's bundle in dist/shim alike.
    const binary = fileURLToPath(new URL('../shim/arch-console-relay', import.meta.url));
    const socket = path.join(dir, 'c.sock');
    let relay: ConsoleRelay | undefined;
    try {
      const helper = spawn(binary, [socket], { stdio: ['pipe', 'pipe', 'pipe'] });
      const started = new Promise<void>((resolve, reject) => {
        helper.on('error', reject);
        helper.on('spawn', resolve);
      });
      relay = new ConsoleRelay(helper, dir, socket);
      await started;
      await relay.nextLine('ready');
      return relay;
    } catch (err) {
      await relay?.drop();
      await fsp.rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Passes the restored terminal on to the caller's console socket. */
  async handOver(callerSocket: string): Promise<void> {
    this.helper.stdin.write(`send ${callerSocket}\n`);
    try {
      await this.nextLine('sent');
    } finally {
      await this.close();
    }
  }

  /** Forgets the terminal (the restore failed), once handed over a no-op: the caller's socket is left for the fresh create. */
  async drop(): Promise<void> {
    if (!this.closed) this.helper.stdin.end('drop\n');
    await this.close();
  }

  private close(): Promise<void> {
    this.closed ??= (async () => {
      this.helper.stdin.end();
      await this.exited;
      await fsp.rm(this.dir, { recursive: true, force: true });
    })();
    return this.closed;
  }

  private async nextLine(want: string): Promise<void> {
    for (;;) {
      const line = this.lines.shift();
      if (line === want) return;
      if (line !== undefined) throw new Error(`console relay said "${line}", not "${want}"`);
      const waited = new Promise<void>((resolve) => (this.lineWaiter = resolve));
      const gone = this.exited.then(({ code, stderr }) => {
        if (this.lines.length === 0)
          throw new Error(`console relay exited (${code}) before "${want}": ${stderr || 'no message'}`);
      });
      await Promise.race([waited, gone]);
    }
  }
}
