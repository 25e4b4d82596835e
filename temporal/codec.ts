/**
 * Encryption of everything ARCH puts in Temporal payloads (workflow inputs
 * and results, activity inputs and results, signals, heartbeats, failure
 * messages): AES-256-GCM with one key shared by every node and CLI of a
 * cluster. The Temporal server, its database and whoever can read them
 * (a published port, a backup) see only ciphertext; the Temporal UI shows
 * the data through `arch-cli codec-server`.
 *
 * The key comes from the node settings: ARCH_PAYLOAD_KEY (the key itself)
 * or ARCH_PAYLOAD_KEY_FILE (default /etc/arch/keys/payload.key, which
 * install.sh creates). A key is 32 bytes written as 64 hex digits or as
 * base64. A key file may hold more keys, one per line: the first encrypts,
 * all decrypt (rotation: put the new key first everywhere, keep the old one
 * below it until the workflows that used it are gone).
 *
 * Encryption is also what makes a payload ARCH's own: a worker with a key
 * refuses plaintext payloads (acceptPlaintext false), because anyone who
 * can reach Temporal can write those, e.g. an activity input naming an
 * arbitrary container spec. Readers (the CLI, the codec server) accept
 * plaintext, so older workflows still show.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { ArchInputError } from '../contract/errors.js';
import { keyLines, parseKeyText } from '../core/key-text.js';

export const ENCRYPTED_ENCODING = 'binary/encrypted';
export const KEY_ID_METADATA = 'encryption-key-id';
export const CIPHER_METADATA = 'encryption-cipher';
const CIPHER = 'AES-256-GCM';
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** Binds a ciphertext to this use: the same key elsewhere cannot be fed these bytes. */
const AAD = Buffer.from('arch-temporal-payload-v1');
export const DEFAULT_PAYLOAD_KEY_FILE = '/etc/arch/keys/payload.key';

const utf8 = (s: string): Uint8Array => Buffer.from(s, 'utf8');
const text = (b: Uint8Array | null | undefined): string => (b ? Buffer.from(b).toString('utf8') : '');

export interface PayloadKey {
  id: string;
  key: Buffer;
}

/** Short public name of a key: what logs, doctor and error messages show to compare nodes. */
export function keyId(key: Buffer): string {
  return createHash('sha256').update('arch-payload-key:').update(key).digest('hex').slice(0, 12);
}

export function parseKey(v: string, field: string): PayloadKey {
  const key = parseKeyText(v);
  if (!key) {
    throw new ArchInputError(
      field,
      'is not a 32-byte key (64 hex digits or base64)',
      'create one with `openssl rand -hex 32`, the same on every node and CLI of the cluster',
    );
  }
  return { id: keyId(key), key };
}

/** The keys the settings name, or none. */
export interface PayloadKeys {
  /** The first encrypts; all decrypt. Empty: no encryption configured. */
  keys: PayloadKey[];
  /** Where they came from (for logs and doctor), never the key itself. */
  source?: string;
}

/**
 * Keys from ARCH_PAYLOAD_KEY, else ARCH_PAYLOAD_KEY_FILE, else the default
 * file if it exists. A named file that cannot be read, a bad key, or a key
 * file other users can read is an error: a silent fall back to plaintext
 * would be exactly the leak this is about.
 */
export function loadPayloadKeys(vars: Record<string, string | undefined>): PayloadKeys {
  const inline = vars.ARCH_PAYLOAD_KEY;
  if (inline) return { keys: [parseKey(inline, 'ARCH_PAYLOAD_KEY')], source: 'ARCH_PAYLOAD_KEY' };
  const named = vars.ARCH_PAYLOAD_KEY_FILE;
  const file = named || DEFAULT_PAYLOAD_KEY_FILE;
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (err) {
    if (!named && (err as NodeJS.ErrnoException).code === 'ENOENT') return { keys: [] };
    throw new ArchInputError(
      'ARCH_PAYLOAD_KEY_FILE',
      `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      "point it at the cluster's payload key file (mode 0600), or run install.sh to create one",
    );
  }
  if ((st.mode & 0o004) !== 0) {
    throw new ArchInputError('ARCH_PAYLOAD_KEY_FILE', `${file} is readable by every user`, `chmod 600 ${file}`);
  }
  let body: string;
  try {
    body = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ArchInputError(
      'ARCH_PAYLOAD_KEY_FILE',
      `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      'run this as a user that may read it (root), or point ARCH_PAYLOAD_KEY_FILE elsewhere',
    );
  }
  const lines = keyLines(body);
  if (lines.length === 0)
    throw new ArchInputError(
      'ARCH_PAYLOAD_KEY_FILE',
      `${file} holds no key`,
      'write one with `openssl rand -hex 32 > FILE` (the same on every node)',
    );
  return { keys: lines.map((l, i) => parseKey(l, `ARCH_PAYLOAD_KEY_FILE (${file}, line ${i + 1})`)), source: file };
}

/** The payload codec: encrypts with the first key, decrypts with any of them. */
export class AesGcmPayloadCodec implements PayloadCodec {
  private readonly byId: Map<string, Buffer>;
  private readonly current: PayloadKey;

  constructor(
    keys: PayloadKey[],
    private readonly opts: { acceptPlaintext: boolean } = { acceptPlaintext: true },
  ) {
    if (keys.length === 0) throw new Error('AesGcmPayloadCodec needs at least one key');
    this.current = keys[0]!;
    this.byId = new Map(keys.map((k) => [k.id, k.key]));
  }

  get keyId(): string {
    return this.current.id;
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((p) => this.encryptOne(p));
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((p) => this.decryptOne(p));
  }

  private encryptOne(p: Payload): Payload {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.current.key, iv).setAAD(AAD);
    const body = Buffer.concat([cipher.update(serialize(p)), cipher.final()]);
    return {
      metadata: {
        encoding: utf8(ENCRYPTED_ENCODING),
        [KEY_ID_METADATA]: utf8(this.current.id),
        [CIPHER_METADATA]: utf8(CIPHER),
      },
      data: Buffer.concat([iv, body, cipher.getAuthTag()]),
    };
  }

  private decryptOne(p: Payload): Payload {
    if (text(p.metadata?.encoding) !== ENCRYPTED_ENCODING) {
      if (this.opts.acceptPlaintext) return p;
      throw new Error(
        'refusing a payload that is not encrypted: this worker has a payload key, and anyone who can reach Temporal can write plaintext payloads. Fix: start workflows with arch-cli (or a client with the same key); for workflows started before the key was set, set ARCH_PAYLOAD_PLAINTEXT=1 on the workers until they are done',
      );
    }
    const id = text(p.metadata?.[KEY_ID_METADATA]);
    const key = this.byId.get(id);
    if (!key) {
      throw new Error(
        `payload encrypted with ARCH payload key ${id || '(no id)'}, but this process has ${[...this.byId.keys()].join(', ')}. Fix: every node and CLI of a cluster needs the same key: copy the key file from the node that created it (or add the old key as a second line of the key file)`,
      );
    }
    const data = Buffer.from(p.data ?? new Uint8Array());
    if (data.length < IV_BYTES + TAG_BYTES) throw new Error('encrypted payload is truncated');
    const decipher = createDecipheriv('aes-256-gcm', key, data.subarray(0, IV_BYTES)).setAAD(AAD);
    decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
    let plain: Buffer;
    try {
      plain = Buffer.concat([decipher.update(data.subarray(IV_BYTES, data.length - TAG_BYTES)), decipher.final()]);
    } catch {
      throw new Error(
        `encrypted payload (key ${id}) fails authentication: altered, or encrypted with another key of the same id`,
      );
    }
    return deserialize(plain);
  }
}

/**
 * The inner payload as JSON (metadata values and data in base64): no
 * protobuf dependency, and the same shape the codec server speaks.
 */
function serialize(p: Payload): Buffer {
  return Buffer.from(JSON.stringify(payloadToJson(p)), 'utf8');
}

function deserialize(b: Buffer): Payload {
  return payloadFromJson(JSON.parse(b.toString('utf8')) as JsonPayload);
}

/** A payload in the codec server's JSON form (proto3 JSON: bytes as base64). */
export interface JsonPayload {
  metadata?: Record<string, string>;
  data?: string;
}

export function payloadToJson(p: Payload): JsonPayload {
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(p.metadata ?? {})) if (v) metadata[k] = Buffer.from(v).toString('base64');
  return { metadata, data: Buffer.from(p.data ?? new Uint8Array()).toString('base64') };
}

export function payloadFromJson(j: JsonPayload): Payload {
  const metadata: Record<string, Uint8Array> = {};
  for (const [k, v] of Object.entries(j.metadata ?? {})) metadata[k] = Buffer.from(v, 'base64');
  return { metadata, data: Buffer.from(j.data ?? '', 'base64') };
}
