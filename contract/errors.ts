/**
 * Errors a user can act on. Every input problem names the field that is wrong
 * and the fix, so logs and CLI output can say exactly what to change.
 */
export class ArchInputError extends Error {
  readonly field: string;
  readonly fix: string;
  constructor(field: string, problem: string, fix: string) {
    super(`${field}: ${problem}. Fix: ${fix}`);
    this.name = 'ArchInputError';
    this.field = field;
    this.fix = fix;
  }
}

/** A checkpoint that cannot be used (missing, corrupt, from a newer format...). */
export class CheckpointUnusableError extends Error {
  readonly reason: string;
  constructor(reason: string, detail: string) {
    super(`checkpoint unusable (${reason}): ${detail}`);
    this.name = 'CheckpointUnusableError';
    this.reason = reason;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
