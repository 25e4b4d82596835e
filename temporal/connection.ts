/**
 * How every ARCH process reaches Temporal: TEMPORAL_ADDRESS /
 * TEMPORAL_NAMESPACE (defaults localhost:7233 / default, from Settings), the
 * same variables the Temporal CLI reads, plus optional TLS / API key for a
 * real cluster or Temporal Cloud, and the payload codec (data-converter.ts).
 *
 * mTLS: TEMPORAL_TLS_CERT + TEMPORAL_TLS_KEY (client certificate and key),
 * TEMPORAL_TLS_CA (the CA that signed the server's certificate, when it is
 * not a public one), TEMPORAL_TLS_SERVER_NAME; the Temporal CLI's names
 * (TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_CLIENT_KEY_PATH,
 * TEMPORAL_TLS_SERVER_CA_CERT_PATH) work too. Read like every ARCH setting:
 * the settings file, the environment over it.
 */
import { Client, Connection, type ConnectionOptions } from '@temporalio/client';
import { ArchInputError } from '../contract/errors.js';
import { readPemFile } from '../core/pem-file.js';
import { settingsVars, type Settings } from '../core/settings.js';
import { clientDataConverter, payloadProtection, type PayloadProtection } from './data-converter.js';

export interface TemporalTarget {
  address: string;
  namespace: string;
  /** TLS on when TEMPORAL_TLS=1, a client certificate or CA is given, or an API key is set. */
  tls?: { clientCertPath?: string; clientKeyPath?: string; caPath?: string; serverName?: string } | boolean;
  apiKey?: string;
}

const first = (vars: Record<string, string | undefined>, ...names: string[]): string | undefined => {
  for (const n of names) if (vars[n]) return vars[n];
  return undefined;
};

export function temporalTarget(
  settings: Pick<Settings, 'temporalAddress' | 'temporalNamespace'>,
  env: NodeJS.ProcessEnv = process.env,
): TemporalTarget {
  const { vars } = settingsVars(env);
  const apiKey = vars.TEMPORAL_API_KEY || undefined;
  const certPath = first(vars, 'TEMPORAL_TLS_CERT', 'TEMPORAL_TLS_CLIENT_CERT_PATH');
  const keyPath = first(vars, 'TEMPORAL_TLS_KEY', 'TEMPORAL_TLS_CLIENT_KEY_PATH');
  const caPath = first(vars, 'TEMPORAL_TLS_CA', 'TEMPORAL_TLS_SERVER_CA_CERT_PATH');
  const serverName = vars.TEMPORAL_TLS_SERVER_NAME || undefined;
  if (!certPath !== !keyPath) {
    const [set, unset] = certPath
      ? ['TEMPORAL_TLS_CERT', 'TEMPORAL_TLS_KEY']
      : ['TEMPORAL_TLS_KEY', 'TEMPORAL_TLS_CERT'];
    throw new ArchInputError(
      unset,
      `is not set but ${set} is`,
      'set both (the client certificate and its private key, PEM files) or neither',
    );
  }
  const tlsOn =
    ['1', 'true', 'yes'].includes((vars.TEMPORAL_TLS ?? '').toLowerCase()) || !!certPath || !!caPath || !!apiKey;
  return {
    address: settings.temporalAddress,
    namespace: settings.temporalNamespace,
    tls: tlsOn
      ? certPath || caPath || serverName
        ? { clientCertPath: certPath, clientKeyPath: keyPath, caPath, serverName }
        : true
      : false,
    apiKey,
  };
}

/** The payload codec for this target (throws where plaintext is refused: data-converter.ts). */
export function targetPayloads(
  t: TemporalTarget,
  env: NodeJS.ProcessEnv = process.env,
  role: 'reader' | 'worker' = 'reader',
): PayloadProtection {
  return payloadProtection(settingsVars(env).vars, t.address, role);
}

/** Options shared by the client Connection and the worker's NativeConnection. */
export function connectionOptions(t: TemporalTarget): {
  address: string;
  tls: ConnectionOptions['tls'];
  apiKey?: string;
} {
  let tls: ConnectionOptions['tls'] = false;
  if (t.tls === true) tls = true;
  else if (t.tls && typeof t.tls === 'object') {
    tls = {
      serverNameOverride: t.tls.serverName,
      serverRootCACertificate: t.tls.caPath ? readPemFile(t.tls.caPath, 'TEMPORAL_TLS_CA') : undefined,
      clientCertPair:
        t.tls.clientCertPath && t.tls.clientKeyPath
          ? {
              crt: readPemFile(t.tls.clientCertPath, 'TEMPORAL_TLS_CERT'),
              key: readPemFile(t.tls.clientKeyPath, 'TEMPORAL_TLS_KEY'),
            }
          : undefined,
    };
  }
  return { address: t.address, tls, ...(t.apiKey ? { apiKey: t.apiKey } : {}) };
}

/** A client that encrypts and decrypts payloads as the settings say (`payloads` defaults to targetPayloads(t)). */
export async function connectClient(
  t: TemporalTarget,
  opts: { connectTimeoutMs?: number; payloads?: PayloadProtection } = {},
): Promise<Client> {
  const payloads = opts.payloads ?? targetPayloads(t);
  const connection = await Connection.connect({
    ...connectionOptions(t),
    connectTimeout: opts.connectTimeoutMs ?? 5000,
  });
  return new Client({ connection, namespace: t.namespace, dataConverter: clientDataConverter(payloads) });
}

/** True when a Temporal frontend answers at the address within timeoutMs. */
export async function isReachable(t: TemporalTarget, timeoutMs = 1500): Promise<boolean> {
  let connection: Connection | undefined;
  try {
    connection = await Connection.connect({ ...connectionOptions(t), connectTimeout: timeoutMs });
    await connection.withDeadline(Date.now() + timeoutMs, () => connection!.workflowService.getSystemInfo({}));
    return true;
  } catch {
    return false;
  } finally {
    await connection?.close().catch(() => undefined);
  }
}
