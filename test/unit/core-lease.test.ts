import { execFileSync, spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  claimNextLease,
  leaseRefusal,
  parkedLease,
  readLease,
  runningLease,
  staleHere,
  writeLease,
} from '../../core/lease.js';
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

test('two nodes taking the same parked job at the same instant: exactly one claims its next generation, the other is refused', async () => {
  // Two processes (the two nodes' arch-runc), released at once, race for the same 40 parked jobs on a real filesystem.
  const base = path.join(dir, 'race');
  const jobs = Array.from({ length: 40 }, (_, i) => `job-${i}`);
  const trust = trustWith(keyFile('race'));
  for (const j of jobs) {
    const store = new CheckpointStore(path.join(base, j));
    await writeLease(store, parkedLease(runningLease(undefined, 'old', j, 'started'), 'old', 'checkpointed'), trust, {
      namespace: 'default',
      key: j,
    });
  }
  const go = path.join(dir, 'race-go');
  const claimer = (node: string) => `
    const fs = require('node:fs');
    (async () => {
      const { claimNextLease, readLease } = await import(${JSON.stringify(new URL('../../core/lease.js', import.meta.url).href)});
      const { CheckpointStore } = await import(${JSON.stringify(new URL('../../core/store.js', import.meta.url).href)});
      while (!fs.existsSync(${JSON.stringify(go)})) await new Promise((r) => setTimeout(r, 1));
      const out = {};
      await Promise.all(${JSON.stringify(jobs)}.map(async (j) => {
        const store = new CheckpointStore(${JSON.stringify(base)} + '/' + j);
        const prev = { format: 1, state: 'parked', node: 'old', generation: 1, at: '', reason: '', containerId: j };
        const r = await claimNextLease(store, prev, ${JSON.stringify(node)}, new Set([${JSON.stringify(node)}]), j, { namespace: 'default', key: j }, 'default/' + j);
        out[j] = r.refusal ?? 'won';
      }));
      process.stdout.write(JSON.stringify(out));
    })();`;
  const run = (node: string) =>
    new Promise<Record<string, string>>((resolve, reject) => {
      const p = spawn(process.execPath, ['-e', claimer(node)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      p.stdout.on('data', (c: Buffer) => (out += c.toString()));
      p.on('exit', (code) =>
        code === 0
          ? resolve(JSON.parse(out) as Record<string, string>)
          : reject(new Error(`claimer ${node} exited ${code}`)),
      );
    });
  const both = Promise.all([run('node-a'), run('node-b')]);
  await new Promise((r) => setTimeout(r, 300)); // both loaded and waiting
  fs.writeFileSync(go, '');
  const [a, b] = await both;
  for (const j of jobs) {
    const won = [a[j] === 'won' ? 'node-a' : undefined, b[j] === 'won' ? 'node-b' : undefined].filter(Boolean);
    expect({ j, won: won.length }).toEqual({ j, won: 1 });
    const loser = a[j] === 'won' ? b[j]! : a[j]!;
    expect(loser).toMatch(
      new RegExp(`^default/${j}: another node \\(${String(won[0])}\\) took the job at generation 2 .*Fix: `),
    );
    const claim = JSON.parse(fs.readFileSync(path.join(base, j, 'lease.claim-2'), 'utf8')) as { node: string };
    expect(claim.node).toBe(won[0]);
  }
  // A create retried on the winning node keeps its own claim; the claim is given back when the job did not start.
  const store = new CheckpointStore(path.join(base, 'job-0'));
  const prev = (await readLease(store, trust)).lease!;
  const winner = a['job-0'] === 'won' ? 'node-a' : 'node-b';
  await expect(
    claimNextLease(store, prev, winner, new Set([winner]), 'job-0', { namespace: 'default', key: 'job-0' }, 'x'),
  ).resolves.toEqual({ generation: 2 });
  await store.releaseLeaseClaim(2);
  const other = winner === 'node-a' ? 'node-b' : 'node-a';
  await expect(
    claimNextLease(store, prev, other, new Set([other]), 'job-0', { namespace: 'default', key: 'job-0' }, 'x'),
  ).resolves.toEqual({ generation: 2 });
});
