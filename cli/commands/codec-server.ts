/**
 * arch-cli codec-server [--port N] [--listen HOST] [--ui-origin URL]
 *
 * The Temporal UI shows encrypted payloads as `binary/encrypted` until it is
 * given a codec endpoint: this is one, speaking the protocol of the Temporal
 * samples' `encryption` codec server (POST /decode and /encode with
 * {"payloads": [{metadata, data}]}, bytes in base64). Point the UI at it:
 * Settings → Codec Server → http://127.0.0.1:8888 (per browser), or start
 * the UI with TEMPORAL_CODEC_ENDPOINT=http://127.0.0.1:8888
 * (`temporal server start-dev --ui-codec-endpoint ...` for the dev server).
 * The browser calls it, so it only has to be reachable from the operator's
 * browser: loopback by default (anyone who reaches it can decrypt whatever
 * they have). Requests are accepted only from the UI's origin (CORS).
 */
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { settingsVars } from '../../core/settings.js';
import type { CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';

function portArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError(`"${v}" is not a port (0-65535)`);
  return n;
}

export function registerCodecServer(program: Command, ctx: CliContext): void {
  program
    .command('codec-server')
    .description(
      "serve /encode and /decode for the Temporal UI with this cluster's payload key (loopback by default), until Ctrl-C",
    )
    .option('--port <n>', 'port (0: any free one)', portArg, 8888)
    .option('--listen <host>', 'address to listen on: whoever reaches it can decrypt payloads', '127.0.0.1')
    .option('--ui-origin <url...>', 'origin(s) of the Temporal UI allowed to call it', [
      'http://localhost:8233',
      'http://127.0.0.1:8233',
    ])
    .action(async (o: { port: number; listen: string; uiOrigin: string[] }) => {
      const out = ctx.out();
      const [{ AesGcmPayloadCodec, loadPayloadKeys }, { startCodecServer }] = await Promise.all([
        import('../../temporal/codec.js'),
        import('../../temporal/codec-server.js'),
      ]);
      const { keys, source } = loadPayloadKeys(
        settingsVars({ ...process.env, ARCH_CONFIG: ctx.settings.configFile }).vars,
      );
      if (keys.length === 0)
        throw new CliError(
          "no payload key: nothing to decode. Fix: set ARCH_PAYLOAD_KEY_FILE (install.sh creates /etc/arch/keys/payload.key), the key the cluster's nodes use",
          EXIT.input,
        );
      const codec = new AesGcmPayloadCodec(keys, { acceptPlaintext: true });
      const server = await startCodecServer({
        codec,
        host: o.listen,
        port: o.port,
        origins: o.uiOrigin.map((u) => u.replace(/\/+$/, '')),
      });
      out.result(
        { url: server.url, keyId: codec.keyId, keySource: source, uiOrigins: o.uiOrigin },
        () =>
          `codec server at ${server.url} (key ${codec.keyId} from ${source}), for the UI at ${o.uiOrigin.join(', ')}.\nIn the UI: Settings → Codec Server → ${server.url}, or start the UI with TEMPORAL_CODEC_ENDPOINT=${server.url}. Ctrl-C stops.`,
      );
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await server.close();
    });
}
