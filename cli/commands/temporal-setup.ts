/**
 * arch-cli temporal-setup: register ARCH's search attributes on the Temporal
 * at TEMPORAL_ADDRESS (a real cluster; the dev server gets them at start).
 * Idempotent. --print only prints the equivalent Temporal CLI commands.
 */
import type { Connection } from '@temporalio/client';
import type { Command } from 'commander';
import type { CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';

export function registerTemporalSetup(program: Command, ctx: CliContext): void {
  program
    .command('temporal-setup')
    .description(
      "register ARCH's search attributes (ArchContainer, ArchNamespace, ArchSourceNode, ArchTargetNode, ArchOperation, ArchPhase) on the Temporal server",
    )
    .option('--print', 'print the `temporal operator search-attribute create` commands instead')
    .action(async (o: { print?: boolean }) => {
      const out = ctx.out();
      const [{ ensureSearchAttributes, searchAttributeCreateCommands }, { targetFrom }] = await Promise.all([
        import('../../temporal/register.js'),
        import('../connect.js'),
      ]);
      const t = targetFrom(ctx.settings, ctx.globals());
      if (o.print) {
        const cmds = searchAttributeCreateCommands(t.namespace);
        out.result(cmds, () => cmds.join('\n'));
        return;
      }
      const client = await ctx.client();
      let r;
      try {
        r = await ensureSearchAttributes(
          client.connection as unknown as Pick<Connection, 'operatorService'>,
          t.namespace,
        );
      } catch (err) {
        throw new CliError(
          `registering search attributes on ${t.address} (namespace ${t.namespace}) failed: ${(err as Error).message}. Fix: run the commands of \`arch-cli temporal-setup --print\` with an admin's credentials`,
          EXIT.failed,
        );
      }
      out.result({ address: t.address, namespace: t.namespace, ...r }, () =>
        r.added.length
          ? `registered ${r.added.join(', ')} on ${t.address} (${t.namespace})`
          : `all ARCH search attributes already registered on ${t.address} (${t.namespace})`,
      );
    });
}
