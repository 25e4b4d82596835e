import { execa } from 'execa';
import fs from 'node:fs';
import { checkpointContainer } from '../../core/checkpoint.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';

/**
 * A job that holds a TCP connection (as one with a database or an HTTP
 * keep-alive does) on real runc, CRIU and containerd: CRIU refuses to dump
 * an established connection unless told what to do with it, so before ARCH
 * closed them on restore such a job could not be checkpointed at all (its
 * reclaim failed). The counter's connection is to a listener of its own on
 * the container's loopback; it sends a byte each tick and connects again
 * when a send fails. (Needs CRIU >= 4.2 on Linux >= 6.16: an older CRIU
 * cannot dump any inet socket there, `arch-cli doctor` says so.)
 */
let a: ArchTestNode;
let storage: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-storage-');
  a = await startArchNode('tcp-a');
});

afterAll(async () => {
  await stopAllNodes();
  fs.rmSync(storage, { recursive: true, force: true });
});

const envOf = () => ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}/local`, 'COUNTER_TCP=1'];
const read = (f: string) => fs.readFileSync(f, 'utf8');

test('a job holding a TCP connection is checkpointed; restored, it finds the connection closed and connects again', async () => {
  const id = 'tcp-stop';
  const first = await a.runCounter(id, envOf());
  await a.waitCount(id, 5);
  expect(read(first)).toContain('tcp up\n');
  const res = await checkpointContainer(a.ctx, { namespace: 'default', id, runcRoot: a.runcRoot('default') });
  expect(res.manifest.containerId).toBe(id);
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  const atCheckpoint = a.count(id);
  // Never broken while it ran.
  expect(read(first)).not.toContain('tcp broken');
  await a.containerd.removeContainer(id);

  const second = await a.runCounter(id, envOf());
  await waitFor('the restored job connecting again', () =>
    /tcp broken\ntcp up\n/.test(read(second)) ? true : undefined,
  );
  // Restored, not started over: its count goes on from the checkpoint.
  expect(read(second)).not.toContain('counter start');
  const firstCount = Number(/count (\d+)/.exec(read(second))?.[1]);
  expect(firstCount).toBeGreaterThanOrEqual(atCheckpoint);
  await a.waitCount(id, atCheckpoint + 5);
  // Connected again once, and the new connection holds: the container's own loopback is up again
  // (runc restores its network namespace empty, lo down), with 127.0.0.1.
  expect(read(second).match(/tcp broken/g)).toHaveLength(1);
  const pid = (await a.containerd.task(id))!.pid;
  const lo = await execa('nsenter', [`--net=/proc/${pid}/ns/net`, 'ip', '-o', 'addr', 'show', 'dev', 'lo']);
  expect(lo.stdout).toContain('inet 127.0.0.1/8');
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
  await a.containerd.removeContainer(id);
});

test('a periodic checkpoint leaves a running job its TCP connection', async () => {
  const id = 'tcp-periodic';
  const out = await a.runCounter(id, envOf());
  await a.waitCount(id, 5);
  await checkpointContainer(a.ctx, {
    namespace: 'default',
    id,
    runcRoot: a.runcRoot('default'),
    leaveRunning: true,
  });
  const after = a.count(id);
  await a.waitCount(id, after + 10);
  expect(read(out)).not.toContain('tcp broken');
  expect(read(out).match(/tcp up/g)).toHaveLength(1);
  await a.containerd.removeContainer(id);
});

/**
 * The host network namespace's firewall as text: a checkpoint or restore of a job on the host's network
 * must leave it as it found it (CRIU's network lock is for namespaces it dumps, not the node's).
 */
async function hostFirewall(): Promise<string> {
  const nft = await execa('nft', ['list', 'ruleset'], { reject: false });
  const ipt = await execa('iptables-save', [], { reject: false });
  return `${nft.stdout}\n${ipt.stdout.replace(/^#.*$/gm, '')}`;
}

test("a job on the host's network (hostNetwork, docker --network host) holding a TCP connection: checkpointed and restored, the node's firewall untouched", async () => {
  const id = 'tcp-host-net';
  const before = await hostFirewall();
  const first = await a.runCounter(id, envOf(), { netHost: true });
  await a.waitCount(id, 5);
  expect(read(first)).toContain('tcp up\n');
  await checkpointContainer(a.ctx, { namespace: 'default', id, runcRoot: a.runcRoot('default') });
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  const atCheckpoint = a.count(id);
  expect(await hostFirewall()).toBe(before);
  await a.containerd.removeContainer(id);

  // The stop left the old connection's end on the listener's port in TIME_WAIT, in the host's namespace: the
  // kernel would refuse the listener's bind for a minute (the job then started over). Removed before the restore.
  const lines = a.logLines().length;
  const second = await a.runCounter(id, envOf(), { netHost: true });
  await waitFor('the restored job connecting again', () =>
    /tcp broken\ntcp up\n/.test(read(second)) ? true : undefined,
  );
  expect(read(second)).not.toContain('counter start');
  const freed = a
    .logLines()
    .slice(lines)
    .find((l) => l.container === id && String(l.msg).startsWith('TIME_WAIT entries'));
  expect(freed).toMatchObject({ ports: [expect.any(Number)], found: expect.any(Number) });
  expect(freed!.found).toBeGreaterThan(0);
  await a.waitCount(id, atCheckpoint + 5);
  expect(await hostFirewall()).toBe(before);
  await a.containerd.taskKill(id, 'SIGKILL');
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  await a.containerd.removeContainer(id);
});
