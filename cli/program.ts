/**
 * arch-cli's commands and global options (cli/main.ts runs them). Declaring
 * them loads only commander and small modules: every command imports what
 * it needs (the Temporal client above all) inside its action.
 */
import type { Command } from 'commander';
import type { Settings } from '../core/settings.js';
import { ArchCommand } from './command.js';
import { registerCodecServer } from './commands/codec-server.js';
import { registerDemo } from './commands/demo.js';
import { registerDev } from './commands/dev.js';
import { registerDrain } from './commands/drain.js';
import { registerLs } from './commands/ls.js';
import { registerMigrate } from './commands/migrate.js';
import { registerNodes } from './commands/nodes.js';
import { registerPauseResume } from './commands/pause.js';
import { registerProtect } from './commands/protect.js';
import { registerReclaim } from './commands/reclaim.js';
import { registerSchedule } from './commands/schedule.js';
import { registerStatus } from './commands/status.js';
import { registerTemporalSetup } from './commands/temporal-setup.js';
import { makeContext, type CliContext } from './context.js';
import { registerDoctor } from './doctor.js';
import { EXIT_HELP } from './exit-codes.js';
import { registerFinalize } from './finalize.js';

export async function buildProgram(settings: Settings): Promise<{ program: Command; ctx: CliContext }> {
  const program = new ArchCommand('arch-cli')
    .description('ARCH: containers that survive losing their node')
    .option('--json', 'machine-readable output (one JSON document on stdout)')
    .option('--address <host:port>', 'Temporal frontend (default $TEMPORAL_ADDRESS or localhost:7233)')
    .option('--temporal-namespace <ns>', 'Temporal namespace (default $TEMPORAL_NAMESPACE or default)')
    .addHelpText('after', `\n${EXIT_HELP}`)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  const ctx = makeContext(settings, program);
  registerMigrate(program, ctx);
  registerDrain(program, ctx);
  registerReclaim(program, ctx);
  registerPauseResume(program, ctx);
  registerSchedule(program, ctx);
  registerProtect(program, ctx);
  registerLs(program, ctx);
  registerStatus(program, ctx);
  registerNodes(program, ctx);
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
