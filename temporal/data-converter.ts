/**
 * How ARCH's clients and workers convert payloads: the default JSON
 * converter, failure messages inside encoded attributes
 * (contract/failure-converter.ts), and the AES-GCM codec when a key is configured.
 *
 * No key: payloads stay plain, so a single-host setup (Temporal on
 * loopback: `arch-cli dev`, docker-compose on this host) keeps working and
 * says so loudly (worker log, `arch-cli doctor`). A Temporal server
 * elsewhere gets the container environments and transfer tokens only
 * encrypted: without a key ARCH refuses to talk to it, unless the operator
 * writes down that plaintext is acceptable (ARCH_PAYLOAD_PLAINTEXT=1).
 *
 * With a key, workers execute only encrypted payloads (codec.ts says why);
 * ARCH_PAYLOAD_PLAINTEXT=1 lets them also take plaintext ones, for the
 * workflows that were started before the key was set.
 */
import { fileURLToPath } from 'node:url';
import { defaultPayloadConverter, type LoadedDataConverter, type Payload, type PayloadCodec } from '@temporalio/common';
import { ArchInputError } from '../contract/errors.js';
import { AesGcmPayloadCodec, loadPayloadKeys } from './codec.js';
import { failureConverter } from '../contract/failure-converter.js';

export const FAILURE_CONVERTER_PATH = fileURLToPath(new URL('../contract/failure-converter.js', import.meta.url));

export interface PayloadProtection {
  codec?: AesGcmPayloadCodec;
  /** Where the key came from (file or variable name); never the key. */
  source?: string;
  /** No key: why plaintext is allowed (Temporal on loopback, or ARCH_PAYLOAD_PLAINTEXT=1). */
  plaintextBecause?: string;
}

const LOOPBACK = /^(localhost|127(?:\.\d{1,3}){3}|\[?::1\]?)$/i;

/** The host part of HOST:PORT (IPv6 in brackets). */
export function hostOf(address: string): string {
  const m = /^(?:\[([^\]]+)\]|([^:]*))(?::\d+)?$/.exec(address.trim());
  return (m?.[1] ?? m?.[2] ?? address).toLowerCase();
}

export function isLoopbackAddress(address: string): boolean {
  return LOOPBACK.test(hostOf(address));
}

const isTrue = (v: string | undefined): boolean => ['1', 'true', 'yes', 'on'].includes((v ?? '').toLowerCase());

/**
 * The codec the settings ask for, or plaintext where that is allowed.
 * Throws ArchInputError when the key is unusable, or when there is none and
 * Temporal is not on this host.
 */
export function payloadProtection(
  vars: Record<string, string | undefined>,
  temporalAddress: string,
  role: 'reader' | 'worker' = 'reader',
): PayloadProtection {
  const { keys, source } = loadPayloadKeys(vars);
  if (keys.length > 0)
    return {
      codec: new AesGcmPayloadCodec(keys, {
        acceptPlaintext: role === 'reader' || isTrue(vars.ARCH_PAYLOAD_PLAINTEXT),
      }),
      source,
    };
  if (isTrue(vars.ARCH_PAYLOAD_PLAINTEXT)) return { plaintextBecause: 'ARCH_PAYLOAD_PLAINTEXT=1' };
  if (isLoopbackAddress(temporalAddress)) return { plaintextBecause: `Temporal at ${temporalAddress} is on this host` };
  throw new ArchInputError(
    'ARCH_PAYLOAD_KEY_FILE',
    `no payload key, and Temporal at ${temporalAddress} is not on this host: container environments and transfer tokens would be stored there in plaintext`,
    "copy the cluster's key to /etc/arch/keys/payload.key (mode 0600; install.sh creates one on the first node) or set ARCH_PAYLOAD_KEY_FILE, the same key on every node and CLI; or set ARCH_PAYLOAD_PLAINTEXT=1 to accept plaintext",
  );
}

/** One line for logs: what protects payloads. */
export function describeProtection(p: PayloadProtection): string {
  return p.codec
    ? `payloads encrypted (AES-256-GCM, key ${p.codec.keyId} from ${p.source})`
    : `payloads NOT encrypted (${p.plaintextBecause}): container environments and transfer tokens are readable by anyone who can read Temporal. Fix: set ARCH_PAYLOAD_KEY_FILE (install.sh creates /etc/arch/keys/payload.key), the same key on every node and CLI`;
}

const codecsOf = (p: PayloadProtection): PayloadCodec[] => (p.codec ? [p.codec] : []);

/** For `new Client({ dataConverter })`: a loaded converter, nothing to require(). */
export function clientDataConverter(p: PayloadProtection): LoadedDataConverter {
  return { payloadConverter: defaultPayloadConverter, failureConverter, payloadCodecs: codecsOf(p) };
}

/**
 * For Worker.create: the failure converter goes by path (the SDK loads it
 * for activities); the workflow bundle was built with the same path.
 */
export function workerDataConverter(p: PayloadProtection): {
  payloadCodecs: PayloadCodec[];
  failureConverterPath: string;
} {
  return { payloadCodecs: codecsOf(p), failureConverterPath: FAILURE_CONVERTER_PATH };
}

/** Decode raw payloads (e.g. heartbeat details from describe()) with a client's codecs, innermost last. */
export async function decodePayloads(codecs: PayloadCodec[], payloads: Payload[]): Promise<Payload[]> {
  let out = payloads;
  for (const c of [...codecs].reverse()) out = await c.decode(out);
  return out;
}
