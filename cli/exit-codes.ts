/**
 * Exit codes scripts can rely on (documented in `arch-cli --help`).
 */
export const EXIT = {
  ok: 0,
  /** The operation ran and failed (workflow failed, terminated, timed out). */
  failed: 1,
  /** Bad input: usage, unknown container, invalid name, calendar or time. Nothing was changed. */
  input: 2,
  /** Temporal unreachable, or a node without a worker. Nothing was changed. */
  unavailable: 3,
  /** A migration failed after the checkpoint and the container runs again on its source node. */
  compensated: 4,
  /** --wait gave up (--timeout) while the operation goes on. */
  waitTimeout: 5,
  interrupted: 130,
} as const;

export const EXIT_HELP = `Exit codes:
  0  success
  1  the operation failed
  2  bad input (usage, unknown container, invalid name/calendar/time): nothing changed
  3  Temporal unreachable or a node without a worker: nothing changed
  4  migration failed after the checkpoint; the container runs again on its source
  5  --wait timed out; the operation continues in Temporal`;

/** An error the CLI reports as-is with its exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
    readonly details?: unknown,
    /** The result document is already on stdout (--json prints nothing more: one document). */
    readonly resultPrinted = false,
  ) {
    super(message);
    this.name = 'CliError';
  }
}
