import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { leaseRefusal, parkedLease, readLease, runningLease, staleHere, writeLease } from '../../core/lease.js';
import { livenessSettings } from '../../core/liveness-settings.js';
import { CheckpointStore } from '../../core/store.js';
import { loadTrust } from '../../core/trust.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-lease-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function keyFile(name: string): string {
  const f = path.join(dir, `${name}.key`);
  fs.writeFileSync(f, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
  return f;
}
const trustWith = (key: string) =>
  loadTrust({ ARCH_CONFIG: path.join(dir, 'none.env'), ARCH_SIGNING_KEY: key, ARCH_TRUSTED_KEYS: '' });

test('a running job is refused elsewhere, allowed on its node; a parked one anywhere but on a revoked node', () => {
  const running = runningLease(undefined, 'a', 'job', 'started');
  expect(running).toMatchObject({ state: 'running', node: 'a', generation: 1 });
  expect(leaseRefusal(running, new Set(['a']), 'default/job')).toBeUndefined();
  expect(leaseRefusal(running, new Set(['b']), 'default/job')).toMatch(
    /^default\/job: its job is recorded as running on node a \(generation 1, .*Fix: /,
  );
  const parked = parkedLease(running, 'a', 'checkpointed');
  expect(parked).toMatchObject({ state: 'parked', generation: 1 });
  expect(leaseRefusal(parked, new Set(['b']), 'x')).toBeUndefined();
  expect(leaseRefusal(parked, new Set(['a']), 'x')).toBeUndefined();
  const taken = parkedLease(running, 'b', 'node-dead', { node: 'a', generation: 1 });
  expect(taken.generation).toBe(2);
  expect(leaseRefusal(taken, new Set(['a']), 'x')).toMatch(/declared dead at generation 1 .*now generation 2/);
  expect(staleHere(taken, new Set(['a']))).toBe(true);
  const onB = runningLease(taken, 'b', 'job', 'restored');
  expect(onB).toMatchObject({ generation: 3, node: 'b' });
  expect(onB.revoked).toBeUndefined();
  expect(staleHere(onB, new Set(['a']))).toBe(true);
  expect(staleHere(onB, new Set(['b']))).toBe(false);
});

test('a lease is read back only when a trusted key signed it; a forged or altered one is not believed', async () => {
  const store = new CheckpointStore(path.join(dir, 'ck/default/job'), {
    root: dir,
    field: 'ARCH_CHECKPOINT_HOST_PATH',
  });
  const mine = trustWith(keyFile('a'));
  const lease = runningLease(undefined, 'a', 'job', 'started');
  await writeLease(store, lease, mine, { namespace: 'default', key: 'job' });
  expect((await readLease(store, mine)).lease).toEqual(lease);
  // Signed by a key this node does not trust.
  expect((await readLease(store, trustWith(keyFile('other')))).problem).toMatch(/lease not believed/);
  // Changed after signing.
  const file = path.join(store.containerDir, 'lease.json');
  fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('\\"running\\"', '\\"parked\\"'));
  expect((await readLease(store, mine)).problem).toMatch(/lease not believed/);
  fs.writeFileSync(file, 'not json');
  expect((await readLease(store, mine)).problem).toMatch(/lease not believed/);
});

test('ARCH_NODE_DEAD_AFTER / ARCH_FENCE_AFTER: defaults, and bad values name the field and the fix', () => {
  const env = (v: Record<string, string>) => ({ ARCH_CONFIG: path.join(dir, 'none.env'), ...v });
  expect(livenessSettings(env({}))).toMatchObject({ deadAfterMs: 60_000, fenceAfterMs: 30_000 });
  expect(livenessSettings(env({ ARCH_NODE_DEAD_AFTER: '10s' }))).toMatchObject({
    deadAfterMs: 10_000,
    fenceAfterMs: 5_000,
  });
  expect(() => livenessSettings(env({ ARCH_NODE_DEAD_AFTER: 'soon' }))).toThrow(
    /ARCH_NODE_DEAD_AFTER.*not a positive duration/,
  );
  expect(() => livenessSettings(env({ ARCH_NODE_DEAD_AFTER: '1s' }))).toThrow(/at least 3s/);
  expect(() => livenessSettings(env({ ARCH_NODE_DEAD_AFTER: '10s', ARCH_FENCE_AFTER: '10s' }))).toThrow(
    /ARCH_FENCE_AFTER.*not less than ARCH_NODE_DEAD_AFTER/,
  );
});

test('a lease.json planted as a symlink or a FIFO is not followed nor waited on: read as a problem, the job unleased', async () => {
  const trust = trustWith(keyFile('plant'));
  const target = path.join(dir, 'host-secret');
  fs.writeFileSync(target, '{"lease":"x"}');
  const viaLink = new CheckpointStore(path.join(dir, 'planted-link'));
  fs.mkdirSync(viaLink.containerDir, { recursive: true });
  fs.symlinkSync(target, path.join(viaLink.containerDir, 'lease.json'));
  const r1 = await readLease(viaLink, trust);
  expect(r1.lease).toBeUndefined();
  expect(r1.problem).toMatch(/cannot read the lease/);
  const viaFifo = new CheckpointStore(path.join(dir, 'planted-fifo'));
  fs.mkdirSync(viaFifo.containerDir, { recursive: true });
  execFileSync('mkfifo', [path.join(viaFifo.containerDir, 'lease.json')]);
  const r2 = await readLease(viaFifo, trust);
  expect(r2.lease).toBeUndefined();
  expect(r2.problem).toMatch(/not a regular file/);
});
