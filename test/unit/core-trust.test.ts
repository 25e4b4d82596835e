import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ArchInputError } from '../../contract/errors.js';
import { assertSameOwner } from '../../core/owner.js';
import { applyDiff, validateDiffArchive } from '../../core/rootfs-diff.js';
import { loadTrust, signManifest, verifyManifestSignature } from '../../core/trust.js';
import { craftTar } from '../support/crafted-tar.js';
import { checkpointUnusable } from '../support/input-error.js';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-trust-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A node's key pair as install.sh writes it: DIR/node.key and DIR/node.pub. */
function nodeKeys(name: string): { key: string; pub: string } {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519');
  fs.writeFileSync(path.join(dir, 'node.key'), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'node.pub'), publicKey.export({ type: 'spki', format: 'pem' }));
  return { key: path.join(dir, 'node.key'), pub: path.join(dir, 'node.pub') };
}

const env = (vars: Record<string, string>) => ({ ARCH_CONFIG: '/dev/null', ...vars });
const manifest = Buffer.from('{"formatVersion":1}');

test('a node trusts its own key; another node trusts it only once its node.pub is listed (file or directory)', async () => {
  const a = nodeKeys('a');
  const b = nodeKeys('b');
  const ta = loadTrust(env({ ARCH_SIGNING_KEY: a.key }));
  const sig = signManifest(manifest, ta)!;
  expect(verifyManifestSignature(manifest, sig, ta)).toBe(ta.signer!.keyId);
  const tb = loadTrust(env({ ARCH_SIGNING_KEY: b.key }));
  expect((await checkpointUnusable(() => verifyManifestSignature(manifest, sig, tb))).reason).toBe('untrusted-signer');
  expect(
    verifyManifestSignature(manifest, sig, loadTrust(env({ ARCH_SIGNING_KEY: b.key, ARCH_TRUSTED_KEYS: a.pub }))),
  ).toBe(ta.signer!.keyId);
  const keysDir = path.join(tmp, 'cluster');
  fs.mkdirSync(keysDir);
  fs.copyFileSync(a.pub, path.join(keysDir, 'a.pub'));
  expect(
    verifyManifestSignature(manifest, sig, loadTrust(env({ ARCH_SIGNING_KEY: b.key, ARCH_TRUSTED_KEYS: keysDir }))),
  ).toBe(ta.signer!.keyId);
});

test('unsigned, changed or malformed: refused with the reason; ARCH_ACCEPT_UNSIGNED lets only the unsigned pass', async () => {
  const a = nodeKeys('c');
  const t = loadTrust(env({ ARCH_SIGNING_KEY: a.key }));
  const sig = signManifest(manifest, t)!;
  expect((await checkpointUnusable(() => verifyManifestSignature(manifest, undefined, t))).reason).toBe('unsigned');
  expect(
    (await checkpointUnusable(() => verifyManifestSignature(Buffer.from('{"formatVersion":2}'), sig, t))).reason,
  ).toBe('bad-signature');
  expect((await checkpointUnusable(() => verifyManifestSignature(manifest, 'not json', t))).reason).toBe(
    'signature-invalid',
  );
  const accepting = loadTrust(env({ ARCH_SIGNING_KEY: a.key, ARCH_ACCEPT_UNSIGNED: '1' }));
  expect(verifyManifestSignature(manifest, undefined, accepting)).toBe('unsigned');
  expect((await checkpointUnusable(() => verifyManifestSignature(Buffer.from('x'), sig, accepting))).reason).toBe(
    'bad-signature',
  );
});

test('no signing key: nothing is signed and the problem names the setting and the fix; a bad trusted key is an input error', () => {
  const t = loadTrust(env({ ARCH_SIGNING_KEY: path.join(tmp, 'absent.key') }));
  expect(t.signer).toBeUndefined();
  expect(t.signerProblem).toMatch(/^ARCH_SIGNING_KEY: .*absent\.key does not exist\. Fix: run install\.sh/);
  expect(signManifest(manifest, t)).toBeUndefined();
  fs.writeFileSync(path.join(tmp, 'junk.pub'), 'junk');
  expect(() => loadTrust(env({ ARCH_TRUSTED_KEYS: path.join(tmp, 'junk.pub') }))).toThrow(ArchInputError);
  expect(() => loadTrust(env({ ARCH_TRUSTED_KEYS: 'relative.pub' }))).toThrow(
    /ARCH_TRUSTED_KEYS: "relative.pub" is a relative path/,
  );
});

test('owner: pod namespace and image must match; an old manifest without one passes only when accepted', async () => {
  const owner = { podNamespace: 'team-a', image: 'img@sha256:aa' };
  expect(() => assertSameOwner(owner, { ...owner }, false)).not.toThrow();
  expect(
    (await checkpointUnusable(() => assertSameOwner(owner, { ...owner, podNamespace: 'team-b' }, false))).reason,
  ).toBe('identity');
  expect(
    (await checkpointUnusable(() => assertSameOwner(owner, { ...owner, image: 'img@sha256:bb' }, false))).reason,
  ).toBe('identity');
  expect((await checkpointUnusable(() => assertSameOwner(owner, { ...owner, image: null }, false))).reason).toBe(
    'identity',
  );
  expect((await checkpointUnusable(() => assertSameOwner(undefined, owner, false))).reason).toBe('identity');
  expect(() => assertSameOwner(undefined, owner, true)).not.toThrow();
});

test('archive: declared sizes above rootfs.bytes and GNU sparse entries are refused before anything is extracted', async () => {
  const file = path.join(tmp, 'a.tar');
  fs.writeFileSync(
    file,
    craftTar([
      { name: 'a', type: '0', data: 'x'.repeat(100) },
      { name: 'b', type: '0', data: 'y'.repeat(100) },
    ]),
  );
  await expect(validateDiffArchive(file, 200)).resolves.toBeUndefined();
  const err = await checkpointUnusable(validateDiffArchive(file, 150));
  expect(err.reason).toBe('archive-size');
  expect(err.message).toContain('entry "b" brings the archive\'s declared content to 200 bytes, more than the 150');
  // A GNU sparse entry (type S) claiming 1 GiB: refused if node-tar ever reports one, and never
  // extracted meanwhile (node-tar 7 skips the type).
  const sparse = craftTar([{ name: 's', type: '0', data: 'z' }]);
  sparse.write('S', 156, 1, 'ascii');
  sparse.write(`${(1024 ** 3).toString(8).padStart(11, '0')}\0`, 124, 12, 'ascii');
  sparse.fill(' ', 148, 156);
  let sum = 0;
  for (const b of sparse.subarray(0, 512)) sum += b;
  sparse.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  const ck = path.join(tmp, 'sparse-ck');
  const upper = path.join(tmp, 'sparse-upper');
  fs.mkdirSync(ck);
  fs.mkdirSync(upper);
  fs.writeFileSync(path.join(ck, 'rootfs-diff.tar'), sparse);
  fs.writeFileSync(path.join(ck, 'deleted.files'), '{"whiteouts":[],"opaque":[]}');
  await applyDiff(ck, upper, 1000).catch((err: unknown) => expect((err as Error).message).toMatch(/sparse|archive/));
  expect(fs.readdirSync(upper)).toEqual([]);
});
