/**
 * arch-cli: ARCH's command line. Orchestration commands talk to Temporal
 * (TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE, or --address /
 * --temporal-namespace); finalize and doctor act on this node directly.
 */
import { CommanderError, InvalidArgumentError } from 'commander';
import { ArchInputError, CheckpointUnusableError, errorMessage } from '../contract/errors.js';
import { loadSettings, type Settings } from '../core/settings.js';
import { CliError, EXIT } from './exit-codes.js';
import { buildProgram } from './program.js';
import { forgetMallocTunables } from '../core/malloc-tunables.js';

function report(err: unknown, json: boolean): number {
  let code: number = EXIT.failed;
  const message = errorMessage(err);
  let details: unknown;
  if (err instanceof CliError) {
    code = err.exitCode;
    details = err.details;
  } else if (err instanceof ArchInputError || err instanceof InvalidArgumentError) {
    code = EXIT.input;
  } else if (err instanceof CheckpointUnusableError) {
    code = EXIT.failed;
  }
  if (json && err instanceof CliError && err.resultPrinted) return code;
  if (json)
    process.stdout.write(
      `${JSON.stringify({ error: message, exitCode: code, ...(details ? { details } : {}) }, null, 2)}\n`,
    );
  else process.stderr.write(`arch-cli: ${message}\n`);
  return code;
}

async function main(argv: string[]): Promise<number> {
  forgetMallocTunables(); // what the command starts gets the environment it was given
  const json = argv.includes('--json');
  let settings: Settings;
  try {
    settings = loadSettings();
  } catch (err) {
    return report(err, json);
  }
  const { program, ctx } = await buildProgram(settings);
  try {
    await program.parseAsync(argv, { from: 'user' });
    // Commands that print a full report and still fail (finalize, doctor) set exitCode.
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (err) {
    // Thrown by our own validation inside an action: commander has not printed it.
    if (err instanceof InvalidArgumentError) return report(err, json);
    if (err instanceof CommanderError) {
      // Help and version are successes; commander already printed the usage error.
      if (
        err.exitCode === 0 ||
        err.code === 'commander.helpDisplayed' ||
        err.code === 'commander.help' ||
        err.code === 'commander.version'
      )
        return EXIT.ok;
      return EXIT.input;
    }
    return report(err, json);
  } finally {
    await ctx.close();
  }
}

// Ctrl-C while waiting on an operation: the operation goes on in Temporal.
// `dev` and `codec-server` handle their own signals (they shut down gracefully).
if (!process.argv.slice(2).some((a) => a === 'dev' || a === 'codec-server')) {
  process.once('SIGINT', () => {
    process.stderr.write('\ninterrupted; the operation continues in Temporal (arch-cli status)\n');
    process.exit(EXIT.interrupted);
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`arch-cli: ${errorMessage(err)}\n`);
    process.exit(EXIT.failed);
  },
);
