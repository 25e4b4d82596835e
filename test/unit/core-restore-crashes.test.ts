import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parkedLease, readLease, runningLease, writeLease, type Lease } from '../../core/lease.js';
import type { RestoreCrashes } from '../../core/restore-crash-record.js';
import { afterEnd, countPredecessor, crashLoopRefusal, endOf } from '../../core/restore-crashes.js';
import { parseRestoreCrashLimit, parseRestoreCrashWindowMs } from '../../core/settings.js';
import { EXIT_FILE, writeShimState, type ShimState } from '../../core/shim-state.js';
import { CheckpointStore } from '../../core/store.js';
import { loadTrust } from '../../core/trust.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-restore-crashes-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const CK = 'ckpt-20261206T180000Z-0a1b2c3d';
const CK2 = 'ckpt-20261206T190000Z-4e5f6a7b';
const WINDOW = 60_000;
const restoredAt = new Date('2026-12-06T18:00:00Z');
const restored: Pick<ShimState, 'restoredFrom' | 'createdAt'> = {
  restoredFrom: `/var/lib/arch/checkpoints/default/job/${CK}`,
  createdAt: restoredAt.toISOString(),
};
const after = (s: number) => new Date(restoredAt.getTime() + s * 1000);

test('a crash soon after a restore counts for that checkpoint; a run past the window clears; a fresh start changes nothing', () => {
  const one = afterEnd(undefined, restored, { crash: 'exited with code 132', at: after(2) }, 'node-a', WINDOW);
  expect(one).toEqual({
    checkpoint: CK,
    count: 1,
    last: 'exited with code 132 2 s after its restore on node-a',
    at: after(2).toISOString(),
  });
  const two = afterEnd(one, restored, { crash: 'OOM-killed', at: after(5) }, 'node-b', WINDOW);
  expect(two).toMatchObject({ checkpoint: CK, count: 2, last: 'OOM-killed 5 s after its restore on node-b' });
  // Another checkpoint's count starts over.
  const other = { ...restored, restoredFrom: `/x/${CK2}` };
  expect(afterEnd(two, other, { crash: 'exited with code 1', at: after(1) }, 'a', WINDOW)).toMatchObject({
    checkpoint: CK2,
    count: 1,
  });
  // Stopped from outside early: neither a crash nor proof that the restore holds.
  expect(afterEnd(two, restored, { at: after(3) }, 'a', WINDOW)).toBe(two);
  // Past the window, crash or not, the restore held: cleared.
  expect(afterEnd(two, restored, { crash: 'exited with code 1', at: after(61) }, 'a', WINDOW)).toBeUndefined();
  expect(afterEnd(two, restored, { at: after(3600) }, 'a', WINDOW)).toBeUndefined();
  // A fresh start's crash says nothing about the checkpoint.
  const fresh = { createdAt: restoredAt.toISOString() };
  expect(afterEnd(two, fresh, { crash: 'exited with code 1', at: after(1) }, 'a', WINDOW)).toBe(two);
});

test('how a container ended: a non-zero exit or an OOM kill is a crash; a stop from outside, a checkpoint, exit 0 are not', () => {
  const exitedAt = after(4).toISOString();
  expect(endOf(undefined, { exitStatus: 139, exitedAt })).toEqual({ crash: 'exited with code 139', at: after(4) });
  expect(endOf('OOM-killed', { exitStatus: 137, exitedAt })).toEqual({ crash: 'OOM-killed', at: after(4) });
  expect(endOf('stopped from outside', { exitStatus: 137, exitedAt })).toEqual({ at: after(4) });
  expect(endOf('checkpointed', { exitStatus: 137, exitedAt })).toEqual({ at: after(4) });
  expect(endOf('force-deleted while running', undefined).crash).toBeUndefined();
  expect(endOf(undefined, { exitStatus: 0, exitedAt })).toEqual({ at: after(4) });
  expect(endOf(undefined, undefined).crash).toBeUndefined(); // no exit recorded: counted clean, as delete does
});

test('the limit: reached for the same checkpoint only; 0 always restores', () => {
  const crashes: RestoreCrashes = { checkpoint: CK, count: 3, last: 'exited with code 132 1 s after …', at: 'x' };
  const refusal = crashLoopRefusal(crashes, CK, 3);
  expect(refusal).toMatch(/^the job crashed soon after each of its last 3 restores \(last: exited with code 132/);
  expect(refusal).toMatch(new RegExp(`starting fresh instead of restoring ${CK} again`));
  expect(refusal).toMatch(/Fix: .*ARCH_RESTORE_CRASH_LIMIT \(0: always restore\)/);
  expect(crashLoopRefusal({ ...crashes, count: 2 }, CK, 3)).toBeUndefined();
  expect(crashLoopRefusal(crashes, CK2, 3)).toBeUndefined(); // a newer checkpoint is not held against
  expect(crashLoopRefusal(crashes, CK, 0)).toBeUndefined();
  expect(crashLoopRefusal(undefined, CK, 1)).toBeUndefined();
});

test('the settings: a limit and a window, with errors that name the field and the fix', () => {
  expect(parseRestoreCrashLimit(undefined)).toBe(3);
  expect(parseRestoreCrashLimit('0')).toBe(0);
  expect(parseRestoreCrashLimit('5')).toBe(5);
  expect(() => parseRestoreCrashLimit('-1')).toThrow(/ARCH_RESTORE_CRASH_LIMIT.*"-1".*whole number/);
  expect(parseRestoreCrashWindowMs(undefined)).toBe(60_000);
  expect(parseRestoreCrashWindowMs('5m')).toBe(300_000);
  expect(() => parseRestoreCrashWindowMs('soon')).toThrow(/ARCH_RESTORE_CRASH_WINDOW.*"soon".*e\.g\. 60s/);
  expect(() => parseRestoreCrashWindowMs('10ms')).toThrow(/ARCH_RESTORE_CRASH_WINDOW/);
});

test('the count rides in the signed lease: kept by a new owner and a park, dropped when malformed', async () => {
  const keyFile = path.join(dir, 'node.key');
  fs.writeFileSync(keyFile, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const trust = loadTrust({
    ARCH_CONFIG: path.join(dir, 'none.env'),
    ARCH_SIGNING_KEY: keyFile,
    ARCH_TRUSTED_KEYS: '',
  });
  const store = new CheckpointStore(path.join(dir, 'ck/default/job'), {
    root: dir,
    field: 'ARCH_CHECKPOINT_HOST_PATH',
  });
  const owner = { namespace: 'default', key: 'job' };
  const crashes: RestoreCrashes = {
    checkpoint: CK,
    count: 2,
    last: 'exited with code 132 1 s after its restore on a',
    at: 't',
  };
  const parked: Lease = {
    ...parkedLease(runningLease(undefined, 'a', 'job', 'restored'), 'a', 'exited with code 132'),
    restoreCrashes: crashes,
  };
  await writeLease(store, parked, trust, owner);
  const read = (await readLease(store, trust)).lease!;
  expect(read.restoreCrashes).toEqual(crashes);
  // The next owner carries it on (it is about the checkpoint, not the node).
  expect(runningLease(read, 'b', 'job2', 'restored').restoreCrashes).toEqual(crashes);
  // A count of the wrong shape (a name that is not a checkpoint's) is dropped; the lease still counts.
  await writeLease(store, { ...parked, restoreCrashes: { ...crashes, checkpoint: '../../etc' } }, trust, owner);
  const odd = (await readLease(store, trust)).lease!;
  expect(odd.restoreCrashes).toBeUndefined();
  expect(odd.generation).toBe(parked.generation);
});

test('a crashed predecessor still in the runc root (a Kubernetes restart) is counted by the next create', async () => {
  const root = path.join(dir, 'runc-root');
  const state = (id: string, extra: Partial<ShimState>): ShimState => ({
    namespace: 'k8s.io',
    id,
    checkpointDir: `/var/lib/arch/checkpoints/k8s.io/job`,
    checkpointed: false,
    createdAt: restoredAt.toISOString(),
    ...extra,
  });
  const predecessor = async (id: string, s: ShimState, exit?: object) => {
    fs.mkdirSync(path.join(root, id), { recursive: true });
    await writeShimState(root, s);
    if (exit) fs.writeFileSync(path.join(root, id, EXIT_FILE), JSON.stringify(exit));
  };
  const mine = new Set(['node-a']);
  const lease = (containerId: string, restoreCrashes?: RestoreCrashes): Lease => ({
    ...runningLease(undefined, 'node-a', containerId, 'restored'),
    ...(restoreCrashes ? { restoreCrashes } : {}),
  });

  await predecessor('attempt0', state('attempt0', { restoredFrom: `/x/${CK}` }), {
    exitStatus: 132,
    exitedAt: after(1).toISOString(),
  });
  const counted = await countPredecessor(root, lease('attempt0'), 'attempt1', mine, WINDOW);
  expect(counted).toMatchObject({
    checkpoint: CK,
    count: 1,
    last: 'exited with code 132 1 s after its restore on node-a',
  });
  // Counted once more on top of what the lease had.
  expect(await countPredecessor(root, lease('attempt0', counted), 'attempt1', mine, WINDOW)).toMatchObject({
    count: 2,
  });

  // Not counted: the lease is the creating container's own, another node's, parked, or the exit not known yet.
  expect(await countPredecessor(root, lease('attempt1', counted), 'attempt1', mine, WINDOW)).toBe(counted);
  expect(await countPredecessor(root, lease('attempt0'), 'attempt1', new Set(['node-b']), WINDOW)).toBeUndefined();
  expect(
    await countPredecessor(root, { ...lease('attempt0'), state: 'parked' }, 'attempt1', mine, WINDOW),
  ).toBeUndefined();
  await predecessor('noexit', state('noexit', { restoredFrom: `/x/${CK}` }));
  expect(await countPredecessor(root, lease('noexit', counted), 'attempt1', mine, WINDOW)).toBe(counted);
  // A name from storage that is no container id is never made a path.
  expect(await countPredecessor(root, lease('../..', counted), 'attempt1', mine, WINDOW)).toBe(counted);
  // Killed from outside (a drain, kubelet): not a crash, the count stays.
  await predecessor('killed', state('killed', { restoredFrom: `/x/${CK}` }), {
    exitStatus: 137,
    exitedAt: after(2).toISOString(),
  });
  fs.writeFileSync(path.join(root, 'killed', 'arch.killed'), '');
  expect(await countPredecessor(root, lease('killed', counted), 'attempt1', mine, WINDOW)).toBe(counted);
});
