import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { EXIT } from '../../cli/exit-codes.js';
import type { DrainContainerResult } from '../../contract/types.js';
import { readShimState } from '../../core/shim-state.js';
import { startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { CRI_NAMESPACE, startCriNode, type CriTestNode, type Pod } from '../support/cri-node.js';
import { addDocker, dockerInstalled, DOCKER_NODE_SETTINGS, type DockerNode } from '../support/docker-node.js';
import { REPO_ROOT } from '../support/images.js';
import { startTemporal, startWorker, stopAllTemporal, type TestTemporal } from '../support/temporal.js';

/**
 * Issue 16 on the real stack: ONE node carries a Kubernetes container (the
 * CRI plugin driven by the real crictl), a Docker container (a real dockerd
 * on the node's containerd) and a plain ctr container, its worker managing
 * every namespace (k8s.io, moby, default); a plain node beside it is the
 * drain's target. `arch-cli migrate` refuses the Docker container and leaves
 * it running; a drain checkpoints all three, moves only the ctr one, and
 * leaves the other two stopped on the node with nothing of them on the
 * target; their orchestrators creating them again on the node restores them.
 */
let temporal: TestTemporal;
let cri: CriTestNode;
let dk: DockerNode | undefined;
let target: ArchTestNode;
let work: string;
let storage: string;

beforeAll(async () => {
  if (!dockerInstalled())
    throw new Error('Docker (docker.io) is not installed: run scripts/install-test-clients.sh docker');
  await cleanupStaleNodes();
  work = fs.mkdtempSync('/tmp/arch-managed-drain-');
  storage = path.join(work, 'storage');
  temporal = await startTemporal({ dir: work });
  cri = await startCriNode('mgd3-all', { ...DOCKER_NODE_SETTINGS });
  // Before the worker starts: it adds Docker's daemon.json to the node's settings.
  dk = await addDocker(cri);
  target = await startArchNode('mgd3-to');
  for (const n of [cri, target])
    await startWorker(n, { temporal, archConfig: n.archConfig, dir: path.join(work, `worker-${n.name}`) });
}, 240_000);

afterAll(async () => {
  await stopAllTemporal();
  // Docker's containers and daemon first; its stop() stops the CRI node (pods included).
  await dk?.stop();
  await stopAllNodes();
  if (work) fs.rmSync(work, { recursive: true, force: true });
}, 180_000);

async function archCli(args: string[]) {
  const r = await execa(path.join(REPO_ROOT, 'bin/arch-cli'), args, {
    env: { ...temporal.env, ARCH_CONFIG: cri.archConfig, ARCH_LOG_FILE: path.join(work, 'cli.log') },
    reject: false,
    timeout: 180_000,
  });
  return { code: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** A count file on the host that outlives the container: the CRI job's shared work dir, Docker's bind mount. */
function counterAt(file: string) {
  const count = () => Number(fs.readFileSync(file, 'utf8').trim() || 0);
  const starts = () =>
    fs
      .readFileSync(path.join(path.dirname(file), 'starts'), 'utf8')
      .split('\n')
      .filter(Boolean).length;
  const waitCount = (atLeast: number) =>
    waitFor(`${file} >= ${atLeast}`, () => {
      try {
        const c = count();
        return c >= atLeast ? c : undefined;
      } catch {
        return undefined;
      }
    });
  return { count, starts, waitCount };
}

const criEnv = {
  ARCH_ENABLE: '1',
  ARCH_CHECKPOINT_ID: 'kube-job',
  ARCH_SHAREDFS_HOST_PATH: '',
  ARCH_WORKDIR_CONTAINER_PATH: '/work',
  COUNTER_FILE: '/work/count',
};

test('drain: the ctr container moves, the Docker and Kubernetes ones are checkpointed and left to their managers; migrate refuses Docker; docker start / crictl attempt 1 restore them', async () => {
  const docker = dk!;
  // Kubernetes: a pod with the counter, its count in the job's shared work dir.
  const env = { ...criEnv, ARCH_SHAREDFS_HOST_PATH: storage };
  const pod: Pod = await cri.runPod('kube', 'container');
  const kubeId = await cri.startCounter(pod, { name: 'job', attempt: 0, env });
  const kube = counterAt(path.join(storage, 'work', CRI_NAMESPACE, 'kube-job', 'count'));

  // Docker: the counter with arch-runc as its runtime, its count in a bind-mounted host dir.
  const dockerOut = path.join(work, 'docker-out');
  fs.mkdirSync(dockerOut, { recursive: true });
  await docker.docker([
    'run',
    '-d',
    '--name',
    'dock-job',
    '--runtime',
    'arch',
    '-v',
    `${dockerOut}:/out`,
    '-e',
    'COUNTER_FILE=/out/count',
    '-e',
    'ARCH_ENABLE=1',
    '-e',
    `ARCH_CHECKPOINT_HOST_PATH=${storage}`,
    '-e',
    'ARCH_CHECKPOINT_ID=dock-job',
    docker.image,
  ]);
  const dockId = (await docker.docker(['inspect', '-f', '{{.Id}}', 'dock-job'])).stdout.trim();
  const dock = counterAt(path.join(dockerOut, 'count'));
  const dockState = async () => (await docker.docker(['inspect', '-f', '{{.State.Status}}', 'dock-job'])).stdout.trim();
  const dockPid = async () => (await docker.docker(['inspect', '-f', '{{.State.Pid}}', 'dock-job'])).stdout.trim();

  // Plain ctr: containerd's own, in "default".
  await cri.runCounter('plain-job', ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${storage}`]);
  await Promise.all([kube.waitCount(3), dock.waitCount(3), cri.waitCount('plain-job', 3)]);

  // migrate of the Docker container: refused before anything stops, Docker named with the fix.
  const pidBefore = await dockPid();
  const refused = await archCli(['migrate', `moby/${dockId}`, '--from', cri.name, '--to', target.name, '--wait']);
  expect({ code: refused.code, stderr: refused.stderr }).toEqual({
    code: EXIT.input,
    stderr: expect.stringMatching(/is managed by Docker: .*Fix: /s),
  });
  expect({ state: await dockState(), pid: await dockPid() }).toEqual({ state: 'running', pid: pidBefore });
  // Nothing checkpointed (its create took the job's lease, nothing more).
  const mobyStore = path.join(storage, 'moby');
  expect(
    fs.existsSync(mobyStore) &&
      fs.readdirSync(mobyStore).some((d) => fs.existsSync(path.join(mobyStore, d, 'current'))),
  ).toBe(false);

  const drained = await archCli(['drain', cri.name, '--to', target.name, '--wait', '--json']);
  const result = JSON.parse(drained.stdout) as { containers: DrainContainerResult[] };
  const outcome = (ns: string, id: string) => {
    const c = result.containers.find((x) => x.namespace === ns && x.id === id);
    return c && { outcome: c.outcome, manager: c.manager };
  };
  expect({
    code: drained.code,
    plain: outcome('default', 'plain-job')?.outcome,
    kube: outcome(CRI_NAMESPACE, kubeId),
    dock: outcome('moby', dockId),
  }).toEqual({
    code: EXIT.ok,
    plain: 'migrated',
    kube: { outcome: 'left-to-manager', manager: 'kubernetes' },
    dock: { outcome: 'left-to-manager', manager: 'docker' },
  });

  // The ctr container runs on the target and its count goes on.
  const plainAt = target.count('plain-job');
  expect(plainAt).toBeGreaterThan(3);
  await target.waitCount('plain-job', plainAt + 3);

  // The managed ones are stopped on the drained node, and nothing of them exists on the target.
  await waitFor('kube job exited', async () =>
    (await cri.containerState(kubeId)) === 'CONTAINER_EXITED' ? true : undefined,
  );
  await waitFor('docker job exited', async () => ((await dockState()) === 'exited' ? true : undefined));
  const onTarget = async (ns: string) =>
    target.containerd
      .withNamespace(ns)
      .listContainers()
      .catch(() => [] as string[]);
  expect({ kube: await onTarget(CRI_NAMESPACE), moby: await onTarget('moby') }).toEqual({
    kube: expect.not.arrayContaining([kubeId]),
    moby: expect.not.arrayContaining([dockId]),
  });
  expect(fs.existsSync(target.runcRoot('moby')) ? fs.readdirSync(target.runcRoot('moby')) : []).toEqual([]);
  expect(fs.existsSync(target.runcRoot(CRI_NAMESPACE)) ? fs.readdirSync(target.runcRoot(CRI_NAMESPACE)) : []).toEqual(
    [],
  );
  const kubeAt = kube.count();
  const dockAt = dock.count();

  // Docker creates its container again: `docker start` of the same one restores it.
  await docker.docker(['start', 'dock-job']);
  const restored = (id: string) =>
    cri.logLines().filter((l) => l.container === id && l.msg === 'restored from checkpoint');
  await waitFor('docker job restored', () => (restored(dockId).length === 1 ? true : undefined));
  await dock.waitCount(dockAt + 3);
  expect(dock.starts()).toBe(1);

  // The kubelet's way: attempt 1 of the container in the same pod restores it.
  const kubeId1 = await cri.startCounter(pod, { name: 'job', attempt: 1, env });
  const state = await readShimState(cri.runcRoot(CRI_NAMESPACE), kubeId1);
  expect(!!state?.restoredFrom).toBe(true);
  await kube.waitCount(kubeAt + 3);
  expect(kube.starts()).toBe(1);

  await docker.docker(['rm', '-f', 'dock-job']);
  await cri.removePod(pod);
}, 300_000);
