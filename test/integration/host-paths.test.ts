import { execa, type ResultPromise } from 'execa';
import fs from 'node:fs';
import path from 'node:path';
import { RECORD_SUFFIX } from '../../core/host-dirs.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';

/**
 * A container's environment names host places; the node decides which it may
 * use (security issue: a container's environment must never reach the host).
 * Real containerd, runc and arch-runc. What a container writes in its shared
 * work dir is written here from the host: the work dir is bind-mounted
 * read-write, so the effect on the host is the same.
 */
let node: ArchTestNode;
let storage: string;
let outside: string;
let secret: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-host-paths-');
  // Not under the test node's allowed roots (/tmp, /run/arch-test, /var/lib/arch).
  outside = fs.mkdtempSync('/var/tmp/arch-not-allowed-');
  // A host directory no container may reach.
  secret = path.join(outside, 'secret');
  fs.mkdirSync(secret);
  fs.writeFileSync(path.join(secret, 'secret.txt'), 'host secret\n');
  node = await startArchNode('hostpaths');
});

afterAll(async () => {
  await stopAllNodes();
  fs.rmSync(storage, { recursive: true, force: true });
  fs.rmSync(outside, { recursive: true, force: true });
});

const SHARED = (root: string) => [
  'ARCH_ENABLE=1',
  `ARCH_SHAREDFS_HOST_PATH=${root}`,
  'ARCH_WORKDIR_CONTAINER_PATH=/work',
  'COUNTER_FILE=/work/count',
];

async function pidOf(id: string): Promise<number> {
  return waitFor(`${id} has a task`, async () => {
    const t = await node.containerd.task(id);
    return t && t.pid > 0 && t.status === 'RUNNING' ? t.pid : undefined;
  });
}

function errorsFor(id: string): Record<string, unknown>[] {
  return node.logLines().filter((l) => l.container === id && Number(l.level) >= 50);
}

function secretUntouched(): void {
  expect(fs.readdirSync(secret).sort()).toEqual(['secret.txt']);
}

test('a host path outside ARCH_ALLOWED_ROOTS: the container starts without ARCH, the log names the setting', async () => {
  const id = 'hp-outside';
  const ck = path.join(outside, 'ck');
  await node.runCounter(id, ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${ck}`]);
  await node.waitCount(id, 3);
  const err = await waitFor('error logged', () => errorsFor(id)[0]);
  expect(err.field).toBe('ARCH_CHECKPOINT_HOST_PATH');
  expect(String(err.err)).toMatch(/is not under a root this node allows .* ARCH_ALLOWED_ROOTS/);
  expect(fs.existsSync(ck)).toBe(false);
  // Not an ARCH container: no shim state in runc's directory.
  expect(fs.existsSync(path.join(node.runcRoot('default'), id, 'arch.json'))).toBe(false);
  await node.containerd.removeContainer(id);
});

test("a symlink planted in one container's work dir never becomes another container's work dir", async () => {
  const a = 'hp-planter';
  const b = 'hp-victim';
  const shared = path.join(storage, 'shared');
  await node.runCounter(a, SHARED(shared));
  await pidOf(a);
  const workA = path.join(shared, 'work/default', a);
  expect(fs.existsSync(path.join(shared, 'work/default', `${a}${RECORD_SUFFIX}`))).toBe(true);
  // Container A prepares <its work dir>/evil/work/default/<B> -> the host's secret directory.
  fs.mkdirSync(path.join(workA, 'evil/work/default'), { recursive: true });
  fs.symlinkSync(secret, path.join(workA, 'evil/work/default', b));

  // B names a shared root inside A's work dir: refused, B starts without ARCH.
  await node.runCounter(b, SHARED(path.join(workA, 'evil')));
  const pid = await pidOf(b);
  const err = await waitFor('error logged', () => errorsFor(b)[0]);
  expect(err.field).toBe('ARCH_SHAREDFS_HOST_PATH');
  expect(String(err.err)).toMatch(/lies inside the shared work directory of container default\/hp-planter/);
  expect(fs.existsSync(`/proc/${pid}/root/work/secret.txt`)).toBe(false);
  secretUntouched();
  await node.containerd.removeContainer(b);
  await node.containerd.removeContainer(a);
});

test('a symlink anywhere below an allowed root is refused, not followed', async () => {
  const id = 'hp-linked';
  fs.mkdirSync(path.join(storage, 'real'));
  fs.symlinkSync(secret, path.join(storage, 'linked'));
  await node.runCounter(id, SHARED(path.join(storage, 'linked')));
  const pid = await pidOf(id);
  const err = await waitFor('error logged', () => errorsFor(id)[0]);
  expect(String(err.err)).toMatch(/"[^"]*\/linked" is a symlink/);
  expect(fs.existsSync(`/proc/${pid}/root/work/secret.txt`)).toBe(false);
  secretUntouched();
  await node.containerd.removeContainer(id);
});

test('a clean exit removes only what ARCH created for that container', async () => {
  // An existing directory that a container names as its checkpoint (ARCH_CHECKPOINT_ID = its name).
  const victim = path.join(storage, 'ck/default/precious');
  fs.mkdirSync(victim, { recursive: true });
  fs.writeFileSync(path.join(victim, 'keep.txt'), "not ARCH's\n");
  const id = 'hp-exit';
  await node.runCounter(id, [
    'ARCH_ENABLE=1',
    `ARCH_CHECKPOINT_HOST_PATH=${path.join(storage, 'ck')}`,
    'ARCH_CHECKPOINT_ID=precious',
    'COUNTER_INTERVAL_MS=50',
    'COUNTER_EXIT_AFTER=5',
  ]);
  await node.containerd.waitStatus(id, 'STOPPED', 30_000);
  await node.containerd.removeContainer(id);
  expect(fs.readFileSync(path.join(victim, 'keep.txt'), 'utf8')).toBe("not ARCH's\n");
  expect(
    node
      .logLines()
      .some((l) => l.container === id && /checkpoint kept: it has no ownership record/.test(String(l.msg))),
  ).toBe(true);

  // And what ARCH did create for a container goes with its clean exit.
  const own = 'hp-exit-own';
  const shared = path.join(storage, 'shared-own');
  await node.runCounter(own, [...SHARED(shared), 'COUNTER_INTERVAL_MS=50', 'COUNTER_EXIT_AFTER=5']);
  await node.containerd.waitStatus(own, 'STOPPED', 30_000);
  expect(fs.existsSync(path.join(shared, 'work/default', own, 'count'))).toBe(true);
  await node.containerd.removeContainer(own);
  expect(fs.existsSync(path.join(shared, 'work/default', own))).toBe(false);
  expect(fs.existsSync(path.join(shared, 'work/default', `${own}${RECORD_SUFFIX}`))).toBe(false);
});

test("bounded race: a directory swapped with a symlink while containers are created never mounts the symlink's target", async () => {
  const race = path.join(storage, 'race');
  fs.mkdirSync(path.join(race, 'd'), { recursive: true });
  // A writer inside the tree swaps race/s between a real directory and a symlink to the secret, as fast as it can.
  const swapper: ResultPromise = execa(
    'sh',
    [
      '-c',
      `cd '${race}' || exit 1
    i=0; while [ $i -lt 2000000 ]; do
      mv d s 2>/dev/null; mv s d 2>/dev/null; ln -s '${secret}' s 2>/dev/null; rm -f s; ln -s '${secret}' s 2>/dev/null; rm -f s; i=$((i+1))
    done`,
    ],
    { reject: false },
  );
  try {
    for (let i = 0; i < 8; i++) {
      const id = `hp-race-${i}`;
      await node.runCounter(id, SHARED(path.join(race, 's')));
      const pid = await pidOf(id);
      // Whatever /work became (a work dir in the real directory, or nothing), it is not the secret.
      expect(fs.existsSync(`/proc/${pid}/root/work/secret.txt`)).toBe(false);
      await node.containerd.removeContainer(id);
      secretUntouched();
    }
  } finally {
    swapper.kill('SIGKILL');
    await swapper;
  }
  secretUntouched();
});
