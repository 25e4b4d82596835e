/**
 * A stack of undo actions. Every resource a benchmark creates (node,
 * container, temp dir, cgroup) registers how to remove it right after it
 * exists; `run()` undoes everything, newest first, and never throws: a
 * failed step is reported and the rest still run.
 */
export class Cleanup {
  private readonly steps: { what: string; fn: () => unknown }[] = [];
  private running: Promise<string[]> | undefined;

  constructor(private readonly log: (msg: string) => void = () => undefined) {}

  /** Register an undo step; returns a function that runs (and forgets) just this step. */
  defer(what: string, fn: () => unknown): () => Promise<void> {
    const step = { what, fn };
    this.steps.push(step);
    return async () => {
      const i = this.steps.indexOf(step);
      if (i < 0) return;
      this.steps.splice(i, 1);
      await step.fn();
    };
  }

  get size(): number {
    return this.steps.length;
  }

  /** Run every step newest first; resolves the errors (as text). Idempotent and re-entrant. */
  run(): Promise<string[]> {
    this.running ??= (async () => {
      const errors: string[] = [];
      while (this.steps.length) {
        const step = this.steps.pop()!;
        try {
          await step.fn();
        } catch (err) {
          const msg = `cleanup "${step.what}" failed: ${err instanceof Error ? err.message : String(err)}`;
          errors.push(msg);
          this.log(msg);
        }
      }
      this.running = undefined;
      return errors;
    })();
    return this.running;
  }
}
