/**
 * arch-cli: ARCH's command line. Orchestration commands talk to Temporal
 * (TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE); finalize and doctor act on this
 * node directly.
 */
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { ArchInputError, CheckpointUnusableError, errorMessage } from '../core/errors.js';
import { loadSettings, type Settings } from '../core/settings.js';
import { registerCodecServer } from './commands/codec-server.js';
import { registerDemo } from './commands/demo.js';
import { registerDev } from './commands/dev.js';
import { registerDrain } from './commands/drain.js';
import { registerLs } from './commands/ls.js';
import { registerMigrate } from './commands/migrate.js';
import { registerPauseResume } from './commands/pause.js';
import { registerReclaim } from './commands/reclaim.js';
import { registerSchedule } from './commands/schedule.js';
import { registerStatus } from './commands/status.js';
import { registerTemporalSetup } from './commands/temporal-setup.js';
import { makeContext, type CliContext } from './context.js';
import { registerDoctor } from './doctor.js';
import { registerFinalize } from './finalize.js';
import { CliError, EXIT, EXIT_HELP } from './exit-codes.js';

export async function buildProgram(settings: Settings): Promise<{ program: Command; ctx: CliContext }> {
  const program = new Command('arch-cli')
    .description('ARCH: containers that survive losing their node')
    .option('--json', 'machine-readable output (one JSON document on stdout)')
    .option('--address <host:port>', 'Temporal frontend (default $TEMPORAL_ADDRESS or localhost:7233)')
    .option('--namespace <ns>', 'Temporal namespace (default $TEMPORAL_NAMESPACE or default)')
    .addHelpText('after', `\n${EXIT_HELP}`)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  const ctx = makeContext(settings, program);
  registerMigrate(program, ctx);
  registerDrain(program, ctx);
  registerReclaim(program, ctx);
  registerPauseResume(program, ctx);
  registerSchedule(program, ctx);
  registerLs(program, ctx);
  registerStatus(program, ctx);
  registerDev(program, ctx);
  registerDemo(program, ctx);
  registerTemporalSetup(program, ctx);
  registerCodecServer(program, ctx);
  // Node-local commands (no Temporal needed).
  registerFinalize(program);
  registerDoctor(program);
  // Subcommands inherit exitOverride so usage errors come back here as exit 2.
  for (const c of program.commands) {
    c.exitOverride();
    for (const s of c.commands) s.exitOverride();
  }
  return { program, ctx };
}

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
