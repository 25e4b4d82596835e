/**
 * How every ARCH process reaches Temporal: TEMPORAL_ADDRESS /
 * TEMPORAL_NAMESPACE (defaults localhost:7233 / default, from Settings), the
 * same variables the Temporal CLI reads, plus optional TLS / API key for a
 * real cluster or Temporal Cloud.
 */
import fs from 'node:fs';
import { Client, Connection, type ConnectionOptions } from '@temporalio/client';
import type { Settings } from '../settings.js';

export interface TemporalTarget {
  address: string;
  namespace: string;
  /** TLS on when TEMPORAL_TLS=1, a client certificate is given, or an API key is set. */
  tls?: { clientCertPath?: string; clientKeyPath?: string; serverName?: string } | boolean;
  apiKey?: string;
}

export function temporalTarget(settings: Pick<Settings, 'temporalAddress' | 'temporalNamespace'>, env: NodeJS.ProcessEnv = process.env): TemporalTarget {
  const apiKey = env.TEMPORAL_API_KEY || undefined;
  const certPath = env.TEMPORAL_TLS_CLIENT_CERT_PATH || env.TEMPORAL_TLS_CERT || undefined;
  const keyPath = env.TEMPORAL_TLS_CLIENT_KEY_PATH || env.TEMPORAL_TLS_KEY || undefined;
  const tlsOn = ['1', 'true', 'yes'].includes((env.TEMPORAL_TLS ?? '').toLowerCase()) || !!certPath || !!apiKey;
  return {
    address: settings.temporalAddress,
    namespace: settings.temporalNamespace,
    tls: tlsOn ? (certPath ? { clientCertPath: certPath, clientKeyPath: keyPath, serverName: env.TEMPORAL_TLS_SERVER_NAME || undefined } : true) : false,
    apiKey,
  };
}

/** Options shared by the client Connection and the worker's NativeConnection. */
export function connectionOptions(t: TemporalTarget): { address: string; tls: ConnectionOptions['tls']; apiKey?: string } {
  let tls: ConnectionOptions['tls'] = false;
  if (t.tls === true) tls = true;
  else if (t.tls && typeof t.tls === 'object') {
    tls = {
      serverNameOverride: t.tls.serverName,
      clientCertPair: t.tls.clientCertPath && t.tls.clientKeyPath
        ? { crt: fs.readFileSync(t.tls.clientCertPath), key: fs.readFileSync(t.tls.clientKeyPath) }
        : undefined,
    };
  }
  return { address: t.address, tls, ...(t.apiKey ? { apiKey: t.apiKey } : {}) };
}

export async function connectClient(t: TemporalTarget, opts: { connectTimeoutMs?: number } = {}): Promise<Client> {
  const connection = await Connection.connect({ ...connectionOptions(t), connectTimeout: opts.connectTimeoutMs ?? 5000 });
  return new Client({ connection, namespace: t.namespace });
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
