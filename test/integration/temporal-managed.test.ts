import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { EXIT } from '../../cli/exit-codes.js';
import { startArchNode, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { CRI_NAMESPACE, startCriNode, type CriTestNode } from '../support/cri-node.js';
import { REPO_ROOT } from '../support/images.js';
import { startTemporal, startWorker, stopAllTemporal, type TestTemporal } from '../support/temporal.js';

/**
 * A container the kubelet created (through containerd's CRI plugin, driven
 * by the real crictl) is Kubernetes' to place: `arch-cli migrate` on the
 * real stack (dev server, a worker per node) refuses it before anything
 * stops, names Kubernetes and the way to move it, and takes no checkpoint;
 * the job keeps running. `arch-cli ls --local` shows its manager.
 */
let temporal: TestTemporal;
let cri: CriTestNode;
let plain: ArchTestNode;
let work: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  work = fs.mkdtempSync('/tmp/arch-managed-');
  temporal = await startTemporal({ dir: work });
  cri = await startCriNode('mgd-cri');
  plain = await startArchNode('mgd-plain');
  for (const n of [cri, plain])
    await startWorker(n, { temporal, archConfig: n.archConfig, dir: path.join(work, `worker-${n.name}`) });
}, 180_000);

afterEach(() => cri?.removeAllPods());

afterAll(async () => {
  await stopAllTemporal();
  await stopAllNodes();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

async function archCli(args: string[]) {
  const r = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), args, {
    env: { ...temporal.env, ARCH_CONFIG: cri.archConfig, ARCH_LOG_FILE: path.join(work, 'cli.log') },
    reject: false,
    timeout: 120_000,
  });
  return { code: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}

async function runcState(id: string): Promise<{ status: string; pid: number }> {
  const r = await execa(cri.ctx.settings.runc, ['--root', cri.runcRoot(CRI_NAMESPACE), 'state', id]);
  const { status, pid } = JSON.parse(String(r.stdout)) as { status: string; pid: number };
  return { status, pid };
}

test('migrate refuses a Kubernetes (CRI) container: exit 2, names the manager and the fix; still running, no checkpoint', async () => {
  const storage = path.join(work, 'ck');
  const pod = await cri.runPod('job', 'container');
  const id = await cri.startCounter(pod, {
    name: 'job',
    attempt: 0,
    env: { ARCH_ENABLE: '1', ARCH_CHECKPOINT_HOST_PATH: storage, ARCH_CHECKPOINT_ID: 'job' },
  });

  const ls = JSON.parse((await archCli(['ls', '--local', '--json', '-n', CRI_NAMESPACE])).stdout) as {
    containers: { id: string; manager?: string }[];
  };
  expect(ls.containers.find((c) => c.id === id)?.manager).toBe('kubernetes');

  const before = await runcState(id);
  expect(before.status).toBe('running');
  const r = await archCli(['migrate', `${CRI_NAMESPACE}/${id}`, '--from', cri.name, '--to', plain.name, '--wait']);
  expect({ code: r.code, stderr: r.stderr }).toEqual({
    code: EXIT.input,
    stderr: expect.stringMatching(
      /is managed by Kubernetes: .*Fix: .*ARCH_CHECKPOINT_ID.*drain the node or delete the pod/s,
    ),
  });

  expect(await cri.containerState(id)).toBe('CONTAINER_RUNNING');
  // The same process still runs on the same node: nothing stopped it, nothing was created on the target.
  expect(await runcState(id)).toEqual({ status: 'running', pid: before.pid });
  expect(
    await plain.containerd
      .withNamespace(CRI_NAMESPACE)
      .listContainers()
      .catch(() => []),
  ).not.toContain(id);
  // No checkpoint was written: the store holds only what the create wrote (the job's ownership record and lease).
  const stored = fs.existsSync(storage) ? (fs.readdirSync(storage, { recursive: true }) as string[]) : [];
  expect(stored.filter((p) => /(^|\/)(current|ckpt-[^/]*)$/.test(p))).toEqual([]);
  await cri.removePod(pod);
});
