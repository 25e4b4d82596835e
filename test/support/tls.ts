import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';

export interface TestPki {
  /** CA certificate (PEM file) that signed `cert`. */
  ca: string;
  /** Certificate for 127.0.0.1 (the tests' advertised transfer host) and its key. */
  cert: string;
  key: string;
  /** A CA that signed nothing here. */
  otherCa: string;
}

/** A throwaway CA and a 127.0.0.1 certificate it signs, made with openssl in `dir`. */
export async function makeTestPki(dir: string): Promise<TestPki> {
  fs.mkdirSync(dir, { recursive: true });
  const ssl = (args: string[]) => execa('openssl', args, { cwd: dir });
  for (const name of ['ca', 'other-ca']) {
    await ssl([
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.pem`,
      '-days',
      '2',
      '-subj',
      `/CN=arch-test-${name}`,
    ]);
  }
  await ssl([
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'node.key',
    '-out',
    'node.csr',
    '-subj',
    '/CN=arch-test-node',
  ]);
  fs.writeFileSync(path.join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  await ssl([
    'x509',
    '-req',
    '-in',
    'node.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'node.pem',
    '-days',
    '2',
    '-extfile',
    'san.ext',
  ]);
  const at = (f: string) => path.join(dir, f);
  return { ca: at('ca.pem'), cert: at('node.pem'), key: at('node.key'), otherCa: at('other-ca.pem') };
}
