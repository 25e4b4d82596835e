/**
 * The HTTP endpoint behind `arch-cli codec-server` (cli/commands/codec-server.ts
 * says what it is for): POST /decode and /encode for the Temporal UI, CORS
 * limited to the UI's origins. A module of its own so that arch-cli loads
 * node:http and the codec only when this command runs.
 */
import http from 'node:http';
import { AesGcmPayloadCodec, payloadFromJson, payloadToJson, type JsonPayload } from './codec.js';

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
