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
import http from 'node:http';
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { settingsVars } from '../../core/settings.js';
import {
  loadPayloadKeys,
  AesGcmPayloadCodec,
  payloadFromJson,
  payloadToJson,
  type JsonPayload,
} from '../../temporal/codec.js';
import type { CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';

const MAX_BODY = 16 << 20;

export interface CodecServer {
  url: string;
  close(): Promise<void>;
}

/** Start the endpoint; `origins` are the UI origins allowed to call it. */
export async function startCodecServer(o: {
  codec: AesGcmPayloadCodec;
  host: string;
  port: number;
  origins: string[];
}): Promise<CodecServer> {
  const server = http.createServer((req, res) => {
    const origin = req.headers.origin;
    // Browsers send Origin on cross-origin calls; a caller without one (curl) is not a browser page.
    const allowed = origin === undefined || o.origins.includes(origin) || o.origins.includes('*');
    if (origin !== undefined && allowed) {
      res.setHeader('access-control-allow-origin', origin);
      res.setHeader('access-control-allow-credentials', 'true');
      res.setHeader('vary', 'origin');
    }
    if (req.method === 'OPTIONS') {
      res.setHeader('access-control-allow-methods', 'POST, OPTIONS');
      res.setHeader('access-control-allow-headers', 'content-type, x-namespace, authorization');
      res.writeHead(allowed ? 204 : 403).end();
      return;
    }
    if (!allowed)
      return void res
        .writeHead(403, { 'content-type': 'text/plain' })
        .end(`origin ${origin} is not allowed (arch-cli codec-server --ui-origin)\n`);
    const op = req.url?.split('?')[0];
    if (req.method !== 'POST' || (op !== '/decode' && op !== '/encode')) return void res.writeHead(404).end();
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) req.destroy();
      else chunks.push(c);
    });
    req.on('end', () => {
      void (async () => {
        let body: { payloads?: JsonPayload[] };
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { payloads?: JsonPayload[] };
          if (!Array.isArray(body.payloads)) throw new Error('no "payloads" array');
        } catch (err) {
          return void res
            .writeHead(400, { 'content-type': 'text/plain' })
            .end(`bad request: ${(err as Error).message}\n`);
        }
        try {
          const payloads = body.payloads.map(payloadFromJson);
          const out = op === '/decode' ? await o.codec.decode(payloads) : await o.codec.encode(payloads);
          res
            .writeHead(200, { 'content-type': 'application/json' })
            .end(JSON.stringify({ payloads: out.map(payloadToJson) }));
        } catch (err) {
          res.writeHead(400, { 'content-type': 'text/plain' }).end(`${(err as Error).message}\n`);
        }
      })();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : o.port;
  return {
    url: `http://${o.host.includes(':') ? `[${o.host}]` : o.host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

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
