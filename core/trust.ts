import { createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ArchInputError, CheckpointUnusableError, errorMessage } from '../contract/errors.js';
import { settingsVars } from './settings.js';
import { SIGNATURE_FILE } from './checkpoint-layout.js';

/**
 * Who may write a checkpoint that this node restores. Anyone who can write
 * the checkpoint store (a shared filesystem, a bucket) could otherwise change
 * a page image or the writable-layer archive and recompute every digest in
 * manifest.json: CRIU would parse their images as root and run their memory.
 * So the node that publishes a checkpoint signs the manifest's exact bytes
 * (the manifest holds every file's size and sha256: one signature covers
 * everything), and a restore accepts only a signature by a key the node's
 * administrator trusts. The trusted keys come from the node's settings,
 * never from the store.
 *
 *   ARCH_SIGNING_KEY     this node's Ed25519 private key (PEM), made by install.sh
 *   ARCH_TRUSTED_KEYS    public keys (PEM files, or directories of *.pub),
 *                        separated by ":" or ","; this node's own key is always trusted
 *   ARCH_ACCEPT_UNSIGNED =1 during an upgrade only: unsigned checkpoints of an
 *                        older ARCH are restored (with a warning each time)
 */
export const DEFAULT_SIGNING_KEY = '/etc/arch/keys/node.key';
const SIGNATURE_FORMAT = 1;

export interface Trust {
  /** This node's key, when it has a usable one (else `signerProblem` says why). */
  signer?: { keyId: string; key: KeyObject; file: string };
  signerProblem?: string;
  /** keyId -> public key and where it came from. */
  trusted: Map<string, { key: KeyObject; source: string }>;
  acceptUnsigned: boolean;
}

/** What a signature file holds: the signer's key id and an Ed25519 signature of manifest.json's bytes. */
interface SignatureFile {
  format: number;
  alg: 'ed25519';
  keyId: string;
  signature: string;
}

/** A key's id: sha256 of its public key (DER), so the same key has the same id on every node. */
export function keyIdOf(pub: KeyObject): string {
  return createHash('sha256')
    .update(pub.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 32);
}

function requireEd25519(key: KeyObject, field: string, file: string): void {
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new ArchInputError(
      field,
      `${file} is a ${key.asymmetricKeyType ?? key.type} key, not Ed25519`,
      `make one with: openssl genpkey -algorithm ed25519 -out ${DEFAULT_SIGNING_KEY}`,
    );
  }
}

/** Public keys named by one ARCH_TRUSTED_KEYS entry: a PEM file, or every *.pub in a directory. */
function readPublicKeys(entry: string): { key: KeyObject; source: string }[] {
  if (!path.isAbsolute(entry))
    throw new ArchInputError(
      'ARCH_TRUSTED_KEYS',
      `"${entry}" is a relative path`,
      'list absolute paths of public key files or directories of *.pub files, separated by ":"',
    );
  let files: string[];
  try {
    files = fs.statSync(entry).isDirectory()
      ? fs
          .readdirSync(entry)
          .filter((n) => n.endsWith('.pub'))
          .sort()
          .map((n) => path.join(entry, n))
      : [entry];
  } catch (err) {
    throw new ArchInputError(
      'ARCH_TRUSTED_KEYS',
      `cannot read ${entry}: ${errorMessage(err)}`,
      "copy the other nodes' node.pub files there, or fix the path",
    );
  }
  return files.map((file) => {
    let key: KeyObject;
    try {
      key = createPublicKey(fs.readFileSync(file));
    } catch (err) {
      throw new ArchInputError(
        'ARCH_TRUSTED_KEYS',
        `${file} is not a PEM public key (${errorMessage(err)})`,
        'list the node.pub files install.sh wrote on each node',
      );
    }
    requireEd25519(key, 'ARCH_TRUSTED_KEYS', file);
    return { key, source: file };
  });
}

/**
 * The node's signing key and trusted keys from its settings (the
 * environment over the settings file). A missing or unreadable signing key
 * is not an error here: the node still restores what trusted nodes signed,
 * and `signerProblem` says what publish and doctor report. A bad trusted
 * key is: ArchInputError naming the setting.
 */
export function loadTrust(env: NodeJS.ProcessEnv = process.env): Trust {
  const { vars } = settingsVars(env);
  const trusted = new Map<string, { key: KeyObject; source: string }>();
  const keyFile = vars.ARCH_SIGNING_KEY || DEFAULT_SIGNING_KEY;
  let signer: Trust['signer'];
  let signerProblem: string | undefined;
  try {
    if (!path.isAbsolute(keyFile)) throw new Error(`"${keyFile}" is a relative path`);
    const key = createPrivateKey(fs.readFileSync(keyFile));
    requireEd25519(key, 'ARCH_SIGNING_KEY', keyFile);
    const pub = createPublicKey(key);
    signer = { keyId: keyIdOf(pub), key, file: keyFile };
    trusted.set(signer.keyId, { key: pub, source: `${keyFile} (this node)` });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    signerProblem =
      code === 'ENOENT'
        ? `ARCH_SIGNING_KEY: ${keyFile} does not exist. Fix: run install.sh (it creates the node key), or set ARCH_SIGNING_KEY to this node's Ed25519 private key`
        : `ARCH_SIGNING_KEY: ${keyFile} is not usable (${errorMessage(err).replace(/^ARCH_SIGNING_KEY: /, '')}). Fix: point ARCH_SIGNING_KEY at an Ed25519 private key in PEM (openssl genpkey -algorithm ed25519)`;
  }
  for (const entry of (vars.ARCH_TRUSTED_KEYS ?? '')
    .split(/[:,]/)
    .map((s) => s.trim())
    .filter(Boolean)) {
    for (const k of readPublicKeys(entry)) if (!trusted.has(keyIdOf(k.key))) trusted.set(keyIdOf(k.key), k);
  }
  const accept = (vars.ARCH_ACCEPT_UNSIGNED ?? '').toLowerCase();
  if (accept && !['0', '1', 'true', 'false', 'yes', 'no', 'on', 'off'].includes(accept)) {
    throw new ArchInputError(
      'ARCH_ACCEPT_UNSIGNED',
      `"${vars.ARCH_ACCEPT_UNSIGNED}" is not a boolean`,
      'set ARCH_ACCEPT_UNSIGNED=1 only while old unsigned checkpoints are restored after an upgrade, else leave it unset',
    );
  }
  return { signer, signerProblem, trusted, acceptUnsigned: ['1', 'true', 'yes', 'on'].includes(accept) };
}

/**
 * The keys of the node whose settings these are: a process may act for a
 * node whose settings file is not its own ARCH_CONFIG (tests, several
 * nodes on one host), and its NodeContext's settings say which file.
 */
export function trustOf(settings: { configFile: string }): Trust {
  return loadTrust({ ...process.env, ARCH_CONFIG: settings.configFile });
}

/** The signature file's text for these manifest bytes (undefined when the node has no key). */
export function signManifest(manifestBytes: Buffer, trust: Trust): string | undefined {
  if (!trust.signer) return undefined;
  const s: SignatureFile = {
    format: SIGNATURE_FORMAT,
    alg: 'ed25519',
    keyId: trust.signer.keyId,
    signature: sign(null, manifestBytes, trust.signer.key).toString('base64'),
  };
  return `${JSON.stringify(s)}\n`;
}

/**
 * Check manifest.json's bytes against its signature file's text (undefined:
 * there is none) before anything in them is believed. Returns the signer's
 * key id, or 'unsigned' when ARCH_ACCEPT_UNSIGNED let an unsigned one pass.
 * Throws CheckpointUnusableError: unsigned, signature-invalid (not our
 * format), untrusted-signer, bad-signature.
 */
export function verifyManifestSignature(manifestBytes: Buffer, sigText: string | undefined, trust: Trust): string {
  if (sigText === undefined) {
    if (trust.acceptUnsigned) return 'unsigned';
    throw new CheckpointUnusableError(
      'unsigned',
      `the checkpoint has no ${SIGNATURE_FILE}: written by an ARCH without signing, or by a node without a key, or not by ARCH at all. Fix: checkpoint again on a node with a key; during an upgrade ARCH_ACCEPT_UNSIGNED=1 restores old checkpoints`,
    );
  }
  let s: Partial<SignatureFile>;
  try {
    s = JSON.parse(sigText) as Partial<SignatureFile>;
  } catch {
    throw new CheckpointUnusableError('signature-invalid', `${SIGNATURE_FILE} is not JSON`);
  }
  if (
    !s ||
    typeof s !== 'object' ||
    s.format !== SIGNATURE_FORMAT ||
    s.alg !== 'ed25519' ||
    typeof s.keyId !== 'string' ||
    typeof s.signature !== 'string'
  ) {
    throw new CheckpointUnusableError(
      'signature-invalid',
      `${SIGNATURE_FILE} is not an ARCH signature (format ${SIGNATURE_FORMAT}, ed25519, keyId, signature)`,
    );
  }
  const k = trust.trusted.get(s.keyId);
  if (!k) {
    throw new CheckpointUnusableError(
      'untrusted-signer',
      `signed by key ${s.keyId.slice(0, 32)}, which this node does not trust. Fix: add that node's node.pub to ARCH_TRUSTED_KEYS (trusted here: ${[...trust.trusted.keys()].join(', ') || 'none'})`,
    );
  }
  const sig = Buffer.from(s.signature, 'base64');
  if (sig.length !== 64 || !verify(null, manifestBytes, k.key, sig)) {
    throw new CheckpointUnusableError(
      'bad-signature',
      `the signature by key ${s.keyId} does not match manifest.json: the manifest was changed after it was signed`,
    );
  }
  return s.keyId;
}

/** Read a checkpoint's signature file: undefined when absent. */
export async function readSignature(dir: string): Promise<string | undefined> {
  try {
    return await fs.promises.readFile(path.join(dir, SIGNATURE_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CheckpointUnusableError('signature-invalid', `${SIGNATURE_FILE}: ${errorMessage(err)}`);
  }
}
