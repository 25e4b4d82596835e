/**
 * arch-cli dev: the embedded default. Uses the Temporal server at
 * TEMPORAL_ADDRESS if one answers; otherwise starts the installed Temporal
 * CLI dev server there with a persistent SQLite file and ARCH's search
 * attributes. Then runs this node's worker in the foreground until Ctrl-C.
 */
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import type { DevServer } from '../../temporal/dev-server.js';
import { addWorkerOptions, workerOptionsFrom, type WorkerFlags } from '../../worker/options.js';
import type { CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';

interface DevFlags extends WorkerFlags {
  db: string;
  uiPort?: string;
  worker: boolean;
  keepServer?: boolean;
}

function defaultDb(): string {
  return process.getuid?.() === 0
    ? '/var/lib/arch/temporal-dev.sqlite'
    : path.join(os.homedir(), '.local/share/arch/temporal-dev.sqlite');
}

function splitAddress(address: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(address);
  if (!m) throw new CliError(`TEMPORAL_ADDRESS "${address}" is not HOST:PORT`, EXIT.input);
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

const LOCAL = new Set(['localhost', '127.0.0.1', '::1', '0.0.0.0']);

export function registerDev(program: Command, ctx: CliContext): void {
  const cmd = program
    .command('dev')
    .description(
      "run a local Temporal dev server (if none answers at TEMPORAL_ADDRESS) and this node's worker, until Ctrl-C",
    )
    .option('--db <file>', 'SQLite file of the dev server (workflows survive restarts)', defaultDb())
    .option('--ui-port <port>', 'Temporal UI port (default: frontend port + 1000)')
    .option('--no-worker', 'only the server')
    .option('--keep-server', 'leave the dev server running when this exits');
  // The Temporal namespace is the global --temporal-namespace; -n/--namespace are containerd's, as for arch-worker.
  addWorkerOptions(cmd, ctx.settings, { transferListen: '127.0.0.1:0' });
  cmd.action(async (o: DevFlags) => {
    const out = ctx.out();
    const [
      { Connection },
      { connectionOptions, isReachable },
      { startDevServer },
      { ensureSearchAttributes },
      { startNodeWorker },
      { Containerd },
      { targetFrom },
    ] = await Promise.all([
      import('@temporalio/client'),
      import('../../temporal/connection.js'),
      import('../../temporal/dev-server.js'),
      import('../../temporal/register.js'),
      import('../../worker/run.js'),
      import('../../core/containerd.js'),
      import('../connect.js'),
    ]);
    const target = targetFrom(ctx.settings, ctx.globals());
    let server: DevServer | undefined;
    let uiUrl: string | undefined;
    if (await isReachable(target)) {
      out.info(`Temporal answers at ${target.address}: using it`);
    } else {
      const { host, port } = splitAddress(target.address);
      if (!LOCAL.has(host))
        throw new CliError(
          `Temporal at ${target.address} does not answer, and it is not local: cannot start a dev server there. Fix: start it, or unset TEMPORAL_ADDRESS`,
          EXIT.unavailable,
        );
      const uiPort = o.uiPort ? Number(o.uiPort) : port + 1000;
      out.info(`starting the Temporal dev server on ${target.address} (state in ${o.db})`);
      server = await startDevServer({
        temporalCli: ctx.settings.temporalCli,
        ip: host === 'localhost' ? '127.0.0.1' : host,
        port,
        uiPort,
        dbFile: o.db,
        namespace: target.namespace,
        logFile: path.join(path.dirname(o.db), 'temporal-dev.log'),
        detached: !!o.keepServer,
      });
      uiUrl = server.uiUrl;
    }
    const connection = await Connection.connect(connectionOptions(target));
    const sa = await ensureSearchAttributes(connection, target.namespace);
    await connection.close();
    out.info(`search attributes: ${sa.added.length ? `registered ${sa.added.join(', ')}` : 'already registered'}`);
    if (uiUrl) out.info(`Temporal UI: ${uiUrl}`);
    if (!o.worker) {
      out.result(
        { address: target.address, namespace: target.namespace, uiUrl, startedServer: !!server, pid: server?.pid },
        () => `Temporal dev server at ${target.address}${uiUrl ? `, UI ${uiUrl}` : ''}; Ctrl-C stops it`,
      );
      if (server)
        await new Promise<void>((resolve) => {
          process.once('SIGINT', resolve);
          process.once('SIGTERM', resolve);
        });
    } else {
      // The worker starts anyway (containerd may come up later), but say it now rather than at the first migration.
      if (!(await new Containerd({ address: o.containerdAddress, ctr: o.ctr }).ping().catch(() => false))) {
        out.info(
          `warning: containerd does not answer at ${o.containerdAddress}. Fix: start it (systemctl start containerd, or run \`containerd &\`), or pass --containerd-address`,
        );
      }
      const worker = await startNodeWorker(
        workerOptionsFrom(o, { ...ctx.settings, temporalAddress: target.address, temporalNamespace: target.namespace }),
      );
      out.result(
        {
          address: target.address,
          namespace: target.namespace,
          uiUrl,
          startedServer: !!server,
          node: worker.node,
          transferUrl: worker.transferUrl,
        },
        () =>
          `ARCH dev: Temporal ${target.address}${uiUrl ? ` (UI ${uiUrl})` : ''}, worker for node ${worker.node}. Ctrl-C stops.`,
      );
      await worker.done;
    }
    if (server && !o.keepServer) await server.stop();
  });
}
