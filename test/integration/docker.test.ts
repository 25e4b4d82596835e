import { execa } from 'execa';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor } from '../support/arch-node.js';
import { damagePageImage, filesHolding, readManifest } from '../support/checkpoint-copies.js';
import { cleanupStaleNodes } from '../support/containerd-node.js';
import { dockerInstalled, startDockerNode, type DockerNode } from '../support/docker-node.js';
import { REPO_ROOT } from '../support/images.js';
import { startExitRecorder } from '../../worker/exits.js';
import { createNodeContext } from '../../core/context.js';
import { capabilitiesCheck } from '../../core/doctor.js';

/**
 * Docker as a client of ARCH (issue 13): a real dockerd (Debian's docker.io)
 * on a test node's own containerd, with arch-runc as its runtime "arch"
 * (daemon.json). ARCH finds Docker's runc root (<exec-root>/runtime-runc)
 * through that daemon.json, without ARCH_RUNC_ROOT naming it.
 *
 * The counter writes its count and a line per fresh start to a bind-mounted
 * host directory (/out), so the writable layer stays what the checkpoint
 * recorded unless a test changes it: a restored counter goes on from its
 * checkpoint, a fresh one adds a second "start" line.
 */
const ARCH_CLI = path.join(REPO_ROOT, 'bin/arch-cli');
let dk: DockerNode;
let work: string;

beforeAll(async () => {
  if (!dockerInstalled())
    throw new Error('Docker (docker.io) is not installed: run scripts/install-test-clients.sh docker');
  await cleanupStaleNodes();
  work = fs.mkdtempSync('/tmp/arch-docker-');
  dk = await startDockerNode('dk');
});

afterAll(async () => {
  await dk?.stop();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

interface Job {
  name: string;
  out: string;
}

/**
 * docker run the counter with arch-runc; ARCH_ENABLE unless `plain`. Its
 * count in a bind-mounted host directory (`out`, else a new one), or with `shared`, in its shared
 * work dir (ARCH_SHAREDFS_HOST_PATH=<work>/shared, at /work).
 */
async function runJob(
  name: string,
  extra: string[] = [],
  opts: {
    plain?: boolean;
    job?: string;
    command?: string[];
    shared?: boolean;
    out?: string;
    startFiles?: boolean;
  } = {},
): Promise<Job> {
  const job = opts.job ?? name;
  const shared = path.join(work, 'shared');
  const out = opts.out ?? (opts.shared ? path.join(shared, 'work', 'moby', job) : path.join(work, name));
  if (!opts.shared) fs.mkdirSync(out, { recursive: true });
  const arch = opts.plain
    ? []
    : [
        '-e',
        'ARCH_ENABLE=1',
        ...(opts.shared
          ? ['-e', `ARCH_SHAREDFS_HOST_PATH=${shared}`, '-e', 'ARCH_WORKDIR_CONTAINER_PATH=/work']
          : ['-e', `ARCH_CHECKPOINT_HOST_PATH=${path.join(work, 'ck')}`]),
        '-e',
        `ARCH_CHECKPOINT_ID=${job}`,
      ];
  await dk.docker([
    'run',
    '-d',
    '--name',
    name,
    '--runtime',
    'arch',
    ...(opts.shared ? ['-e', 'COUNTER_FILE=/work/count'] : ['-v', `${out}:/out`, '-e', 'COUNTER_FILE=/out/count']),
    ...(opts.startFiles === false ? [] : ['-e', 'COUNTER_START_FILES=1']),
    ...arch,
    ...extra,
    dk.image,
    ...(opts.command ?? []),
  ]);
  return { name, out };
}

const count = (j: Job): number => Number(fs.readFileSync(path.join(j.out, 'count'), 'utf8').trim() || 0);
const starts = (j: Job): number =>
  fs.readFileSync(path.join(j.out, 'starts'), 'utf8').split('\n').filter(Boolean).length;
const waitCount = (j: Job, atLeast: number) =>
  waitFor(`${j.name} count >= ${atLeast}`, () => {
    try {
      const c = count(j);
      return c >= atLeast ? c : undefined;
    } catch {
      return undefined;
    }
  });
const state = async (j: Job) => (await dk.docker(['inspect', '-f', '{{.State.Status}}', j.name])).stdout.trim();
const idOf = async (j: Job) => (await dk.docker(['inspect', '-f', '{{.Id}}', j.name])).stdout.trim();

/** `arch-cli finalize --json` of Docker's containers; a failed item fails it unless `mayFail`. */
async function finalize(extra: string[] = [], mayFail = false) {
  // Only Docker's namespace: the machine's own containerd root is searched too, and may hold other tests' containers.
  const r = await execa(ARCH_CLI, ['finalize', '--deadline', '60s', '-n', 'moby', '--json', ...extra], {
    env: { ARCH_CONFIG: dk.node.archConfig },
    reject: false,
  });
  if (r.exitCode !== 0 && !mayFail) throw new Error(`finalize failed: ${r.stdout} ${r.stderr}`);
  return JSON.parse(String(r.stdout)) as {
    ok: boolean;
    items: { id: string; status: string; error?: string }[];
    runcRoots: { base: string; source: string; exists: boolean }[];
  };
}

const logsFor = (id: string) => dk.node.logLines().filter((l) => l.container === id);
const restoredLines = (id: string) => logsFor(id).filter((l) => l.msg === 'restored from checkpoint');
/** Checkpoint and stop `j` (finalize), then remove it; its count then. */
async function checkpointAndRemove(j: Job): Promise<number> {
  expect((await finalize()).items).toContainEqual(
    expect.objectContaining({ id: await idOf(j), status: 'checkpointed' }),
  );
  await waitFor(`${j.name} exited after its checkpoint`, async () =>
    (await state(j)) === 'exited' ? true : undefined,
  );
  const at = count(j);
  await dk.docker(['rm', j.name]);
  return at;
}

/** `j` started fresh (its count reset to 0 before it was created) and runs: its log line saying why. */
async function freshReason(j: Job) {
  const id = await idOf(j);
  const line = await waitFor(`${j.name} started fresh`, () =>
    logsFor(id).find((l) => l.msg === 'checkpoint not restored; starting the container fresh'),
  );
  await waitCount(j, 3); // it runs: a fresh counter counts from 1
  expect(await state(j)).toBe('running');
  expect(restoredLines(id)).toHaveLength(0);
  return line;
}

/** Restored once; a failure shows what ARCH logged for the container (why it started fresh, if it did). */
async function expectRestoredOnce(j: Job): Promise<void> {
  const log = logsFor(await idOf(j));
  expect({ restored: log.filter((l) => l.msg === 'restored from checkpoint').length, log }).toMatchObject({
    restored: 1,
  });
}

test("run -> arch-cli finalize -> rm -> run again: restored, the count goes on; Docker's runc root found by itself", async () => {
  const a = await runJob('job-rerun');
  await waitCount(a, 5);
  const report = await finalize();
  // Found through ARCH_DOCKER_CONFIG's exec-root: ARCH_RUNC_ROOT names only the node's containerd root.
  expect(report.runcRoots).toContainEqual(expect.objectContaining({ base: dk.runcRootBase, exists: true }));
  expect(report.items).toEqual([expect.objectContaining({ id: await idOf(a), status: 'checkpointed' })]);
  await waitFor('exit after checkpoint', async () => ((await state(a)) === 'exited' ? true : undefined));
  const atCheckpoint = count(a);
  await dk.docker(['rm', a.name]);

  const b = await runJob('job-rerun-2', [], { job: 'job-rerun' });
  fs.writeFileSync(path.join(b.out, 'count'), '0\n');
  fs.copyFileSync(path.join(a.out, 'starts'), path.join(b.out, 'starts'));
  // The restored counter goes on from its checkpoint in memory; a fresh one would start at 1.
  const c = await waitCount(b, atCheckpoint + 3);
  expect(c).toBeGreaterThan(atCheckpoint);
  await expectRestoredOnce(b);
  // What the restored job prints reaches `docker logs` of the new container; it did not start again.
  const printed = (await dk.docker(['logs', b.name])).stdout;
  expect(printed).toMatch(new RegExp(`^count ${atCheckpoint + 2}$`, 'm'));
  expect(printed).not.toMatch(/counter start/);
  // Its files from before the checkpoint came along (new, changed and deleted files of the layer).
  expect((await dk.docker(['exec', b.name, 'cat', '/etc/to-modify.txt'])).stdout).toBe('modified by counter');
  expect((await dk.docker(['exec', b.name, 'ls', '/etc'], { reject: false })).stdout).not.toContain('to-delete.txt');
  await dk.docker(['rm', '-f', b.name]);
});

test('docker stop / docker start of the same container restores its checkpoint', async () => {
  const j = await runJob('job-stopstart');
  await waitCount(j, 5);
  await finalize(['--leave-running']);
  const id = await idOf(j);
  expect(fs.readdirSync(path.join(work, 'ck', 'moby'))).toContain('job-stopstart');
  await waitCount(j, count(j) + 3); // runs on past its checkpoint (its memory only: the layer stays)
  await dk.docker(['stop', j.name]);
  await dk.docker(['start', j.name]);
  // Restored, or started fresh with a reason (which the failure then shows).
  const outcome = await waitFor('the same container restored or started fresh', () =>
    logsFor(id).find(
      (l) => l.msg === 'restored from checkpoint' || l.msg === 'checkpoint not restored; starting the container fresh',
    ),
  );
  expect(outcome).toMatchObject({ msg: 'restored from checkpoint' });
  expect(restoredLines(id)).toHaveLength(1);
  expect(starts(j)).toBe(1);
  const c = count(j);
  await waitCount(j, c + 3);
  expect(logsFor(id).find((l) => l.msg === 'checkpoint not restored; starting the container fresh')).toBeUndefined();
  await dk.docker(['rm', '-f', j.name]);
});

test('a restart policy after dockerd restarts (live-restore off) restores the same container', async () => {
  const j = await runJob('job-policy', ['--restart=always']);
  await waitCount(j, 5);
  await finalize(['--leave-running']);
  const id = await idOf(j);
  await dk.restartDaemon(); // as after a reboot: dockerd stops its containers, then starts the "always" ones
  await waitFor('restore by the restart policy', () => (restoredLines(id).length === 1 ? true : undefined), 60_000);
  expect(await state(j)).toBe('running');
  expect(starts(j)).toBe(1);
  const c = count(j);
  await waitCount(j, c + 3);
  await dk.docker(['rm', '-f', j.name]);
});

test('a container whose writable layer changed after the checkpoint starts fresh, and the log says why', async () => {
  const j = await runJob('job-changed');
  await waitCount(j, 5);
  await finalize(['--leave-running']);
  const id = await idOf(j);
  await dk.docker(['exec', j.name, 'sh', '-c', 'echo later > /etc/written-after-checkpoint']);
  await dk.docker(['stop', j.name]);
  await dk.docker(['start', j.name]);
  const fresh = await waitFor('fresh start', () =>
    logsFor(id).find((l) => l.msg === 'checkpoint not restored; starting the container fresh'),
  );
  expect(fresh.reason).toBe('rootfs-changed');
  expect(String(fresh.err)).toContain('"etc/written-after-checkpoint" was created after the checkpoint');
  await waitFor('second start line', () => (starts(j) === 2 ? true : undefined));
  expect(restoredLines(id)).toHaveLength(0);
  // Its files are its own: the fresh start kept the layer as it was (nothing cleared, nothing extracted).
  expect((await dk.docker(['exec', j.name, 'cat', '/etc/written-after-checkpoint'])).stdout).toBe('later');
  // arch-cli ls shows the failed restore.
  const ls = await execa(ARCH_CLI, ['ls', '--local', '--namespace', 'moby'], {
    env: { ARCH_CONFIG: dk.node.archConfig },
    reject: false,
  });
  expect(String(ls.stdout)).toContain('FAILED (rootfs-changed)');
  await dk.docker(['rm', '-f', j.name]);
});

/**
 * A job whose image (or pod) runs it as a user that is not root: the shared
 * work dir ARCH makes belongs to that user, so the job can write in it
 * (before, ARCH made it root's, mode 0755, and the job's first write failed
 * with "Permission denied"). Its checkpoint restores where ARCH runs with
 * CAP_SYS_RESOURCE (CRIU needs it to read the limits of another user's
 * process); where it does not (these VMs), the checkpoint fails saying so,
 * and the job runs on.
 */
test('a job running as a non-root user writes its shared work dir, and its checkpoint restores or names the missing capability', async () => {
  const run = () => runJob('job-user', ['--user', '1000:1000'], { shared: true });
  const j = await run();
  await waitCount(j, 5);
  expect(fs.statSync(j.out)).toMatchObject({ uid: 1000, gid: 1000 });
  expect(fs.statSync(path.join(j.out, 'count'))).toMatchObject({ uid: 1000 });
  const id = await idOf(j);
  const report = await finalize([], true);
  if (capabilitiesCheck().ok) {
    expect(report.items).toEqual([expect.objectContaining({ id, status: 'checkpointed' })]);
    await waitFor('exit after checkpoint', async () => ((await state(j)) === 'exited' ? true : undefined));
    const atCheckpoint = count(j);
    await dk.docker(['rm', j.name]);
    await run();
    await waitCount(j, atCheckpoint + 3);
    await expectRestoredOnce(j);
    expect(starts(j)).toBe(1);
  } else {
    expect(report.items).toEqual([expect.objectContaining({ id, status: 'failed' })]);
    expect(report.items[0]!.error).toMatch(
      /CRIU runs without CAP_SYS_RESOURCE here, so it cannot checkpoint processes that run as a non-root user/,
    );
    expect(await state(j)).toBe('running');
    await waitCount(j, count(j) + 2); // runs on
  }
  await dk.docker(['rm', '-f', j.name]);
});

/**
 * The job writes its progress to a file it holds open in its volume (/out),
 * is checkpointed left running (as periodic protection does), writes on,
 * and crashes (killed from outside: not a stop Docker asked for, so its
 * restart policy starts the same container again). Its layer is unchanged
 * and the volume is named in ARCH_ROLLBACK_VOLUMES: the progress file is cut
 * back to the checkpoint and the job goes on from there, every line once.
 */
test('a crash under a restart policy: the file the job writes in its volume is cut back and it goes on', async () => {
  // The node's worker records exit codes (a crash keeps the checkpoint; without it an exit counts as clean),
  // in every runc root its settings lead to: Docker's too, named in the settings once dockerd was up.
  const node = createNodeContext('test-exits', { ...process.env, ARCH_CONFIG: dk.node.archConfig });
  const exits = await startExitRecorder({ containerd: dk.node.containerd, settings: node.settings, log: node.log });
  try {
    await crashUnderRestartPolicy();
  } finally {
    await exits.stop();
  }
});

async function crashUnderRestartPolicy(): Promise<void> {
  const j = await runJob('job-crash-volume', ['--restart=on-failure', '-e', 'ARCH_ROLLBACK_VOLUMES=/out'], {
    command: [
      '/bin/sh',
      '-c',
      'exec 3>/out/progress; (i=0; while :; do i=$((i+1)); echo line $i >&3; sleep 0.1; done) & exec /usr/bin/counter',
    ],
  });
  const progress = () => fs.readFileSync(path.join(j.out, 'progress'), 'utf8');
  await waitCount(j, 5);
  await finalize(['--leave-running']);
  const id = await idOf(j);
  await waitCount(j, count(j) + 3); // it went on writing past its checkpoint
  const pid = Number((await dk.docker(['inspect', '-f', '{{.State.Pid}}', j.name])).stdout.trim());
  process.kill(pid, 'SIGKILL');
  await waitFor('restore by the restart policy', () => (restoredLines(id).length === 1 ? true : undefined), 60_000);
  const cut = logsFor(id).find((l) => l.volume === '/out' && Array.isArray(l.files));
  expect(cut?.files).toEqual([{ path: 'progress', from: expect.any(Number), to: expect.any(Number) }]);
  const lost = (cut!.files as { from: number }[])[0]!.from;
  await waitFor('the restored job wrote past the crashed one', () => (progress().length > lost ? true : undefined));
  const lines = progress().trim().split('\n');
  expect(lines).toEqual(lines.map((_, i) => `line ${i + 1}`));
  expect(starts(j)).toBe(1);
  await dk.docker(['rm', '-f', j.name]);
}

test("docker checkpoint create + docker start --checkpoint (runc restore passed through with the node's CRIU)", async () => {
  const j = await runJob('plain-cp', [], { plain: true });
  await waitCount(j, 5);
  await dk.docker(['checkpoint', 'create', j.name, 'cp1'], { timeoutMs: 120_000 });
  expect(await state(j)).toBe('exited');
  const atCheckpoint = count(j);
  // Docker 20.10 sometimes fails its own upload of the checkpoint to containerd's content store
  // ("commit failed: content sha256:...: already exists", moby/moby#42900): asked again then.
  for (let attempt = 1; ; attempt++) {
    const r = await dk.docker(['start', '--checkpoint', 'cp1', j.name], { timeoutMs: 120_000, reject: false });
    if (r.exitCode === 0) break;
    if (attempt === 3 || !/failed to upload checkpoint to containerd: .*already exists/.test(r.stderr))
      throw new Error(`docker start --checkpoint failed: ${r.stderr}\n${dk.logTail(15)}`);
  }
  await waitCount(j, atCheckpoint + 3);
  expect(starts(j)).toBe(1); // restored, not started over
  await dk.docker(['rm', '-f', j.name]);
});

test('docker run -t: a job with a terminal is restored into a container with one; one whose terminal setting differs starts fresh, says why, and runs', async () => {
  const a = await runJob('job-tty', ['-t']);
  await waitCount(a, 5);
  const atCheckpoint = await checkpointAndRemove(a);
  const b = await runJob('job-tty-2', ['-t'], { job: 'job-tty' });
  fs.writeFileSync(path.join(b.out, 'count'), '0\n');
  expect(await waitCount(b, atCheckpoint + 3)).toBeGreaterThan(atCheckpoint);
  await expectRestoredOnce(b);
  // What it prints after its restore comes through the terminal handed over to Docker (a tty ends lines with \r\n).
  expect((await dk.docker(['logs', b.name])).stdout).toMatch(new RegExp(`^count ${atCheckpoint + 2}\r?$`, 'm'));

  // Checkpointed with a terminal, created without one: CRIU cannot rebuild its session on pipes.
  await checkpointAndRemove(b);
  const c = await runJob('job-tty-3', [], { job: 'job-tty' });
  const noTerminal = await freshReason(c);
  expect(noTerminal).toMatchObject({ reason: 'terminal' });
  expect(String(noTerminal.err)).toContain('checkpointed with a terminal (docker run -t');

  // Checkpointed without a terminal, created with one: a restore would spend the terminal's console
  // socket and leave the fresh start without it (the container did not start at all).
  await checkpointAndRemove(c);
  const d = await runJob('job-tty-4', ['-t'], { job: 'job-tty' });
  const withTerminal = await freshReason(d);
  expect(withTerminal).toMatchObject({ reason: 'terminal' });
  expect(String(withTerminal.err)).toContain('checkpointed without a terminal');

  // A damaged page image of a job with a terminal: found while CRIU restores, after runc has been
  // given a console socket; the terminal goes to Docker only after a restore that worked
  // (core/console-relay.ts), so the fresh start still has Docker's.
  await checkpointAndRemove(d);
  damagePageImage(path.join(work, 'ck', 'moby', 'job-tty', 'current'));
  const e = await runJob('job-tty-5', ['-t'], { job: 'job-tty' });
  expect(await freshReason(e)).toMatchObject({ reason: 'corrupt' });
  await dk.docker(['rm', '-f', e.name]);

  // A restore CRIU itself refuses, after runc has started: a file the job holds open on a volume grew
  // since its checkpoint ("has bad size"). runc has had the terminal's console socket by then; the
  // fresh start must still get one.
  const held = ['sh', '-c', 'exec 3<>/out/held; exec /usr/bin/counter'];
  const f = await runJob('job-tty-held', ['-t'], { command: held });
  await waitCount(f, 5);
  await checkpointAndRemove(f);
  fs.appendFileSync(path.join(f.out, 'held'), 'written by another run after the checkpoint\n');
  fs.writeFileSync(path.join(f.out, 'count'), '0\n');
  const g = await runJob('job-tty-held-2', ['-t'], { command: held, job: 'job-tty-held', out: f.out });
  const refused = await freshReason(g);
  expect(refused).toMatchObject({ reason: 'restore-failed' });
  expect(String(refused.err)).toMatch(/bad size/);
  await dk.docker(['rm', '-f', g.name]);
});

test('docker run --init (docker-init, a symlink on the host, bound in as PID 1): restored, the count goes on', async () => {
  const a = await runJob('job-init', ['--init']);
  await waitCount(a, 5);
  expect((await finalize()).items).toContainEqual(
    expect.objectContaining({ id: await idOf(a), status: 'checkpointed' }),
  );
  await waitFor('exit after checkpoint', async () => ((await state(a)) === 'exited' ? true : undefined));
  const atCheckpoint = count(a);
  await dk.docker(['rm', a.name]);

  const b = await runJob('job-init-2', ['--init'], { job: 'job-init' });
  fs.writeFileSync(path.join(b.out, 'count'), '0\n');
  expect(await waitCount(b, atCheckpoint + 3)).toBeGreaterThan(atCheckpoint);
  await expectRestoredOnce(b);
  // PID 1 is still Docker's init, with the counter its child.
  expect((await dk.docker(['exec', b.name, 'cat', '/proc/1/cmdline'])).stdout).toContain('docker-init');
  await dk.docker(['rm', '-f', b.name]);
});

test('a job that fits its memory limit but its restore does not: it starts fresh, and the reason names the limit', async () => {
  // 128 MiB of the counter's memory runs under 130 MiB; its restore needs a few MiB more (CRIU's restorer).
  const tight = ['--memory', '130m', '-e', 'COUNTER_MEM_MB=128'];
  const a = await runJob('job-mem', tight);
  await waitCount(a, 3);
  await checkpointAndRemove(a);
  fs.writeFileSync(path.join(a.out, 'count'), '0\n');
  const b = await runJob('job-mem-2', tight, { job: 'job-mem', out: a.out });
  const fresh = await freshReason(b); // it runs under the same limit
  expect(fresh).toMatchObject({ reason: 'memory-limit' });
  expect(String(fresh.err)).toMatch(/memory limit \(130 MiB\).*Fix: give the container 16 MiB or more/);
  await dk.docker(['rm', '-f', b.name]);
});

test('a job near its pids limit, whose restore needs more: it starts fresh, and the reason names the limit and the count', async () => {
  // sh and the counter: 2 processes; a restore under Docker needs up to 4 more (core/restore-limits.ts).
  const opts = { command: ['sh', '-c', '/usr/bin/counter & wait'] };
  const a = await runJob('job-pids', ['--pids-limit', '4'], opts);
  await waitCount(a, 3);
  await checkpointAndRemove(a);
  fs.writeFileSync(path.join(a.out, 'count'), '0\n');
  const b = await runJob('job-pids-2', ['--pids-limit', '4'], { ...opts, job: 'job-pids', out: a.out });
  const fresh = await freshReason(b); // it runs under the same limit
  expect(fresh).toMatchObject({ reason: 'pids-limit' });
  expect(String(fresh.err)).toMatch(/pids limit \(4\).*the job has 2 processes and threads.*raise the limit to 6/);
  await dk.docker(['rm', '-f', b.name]);

  // With enough, it restores.
  const c = await runJob('job-pids-3', ['--pids-limit', '8'], opts);
  await waitCount(c, 3);
  const at = await checkpointAndRemove(c);
  const d = await runJob('job-pids-4', ['--pids-limit', '8'], { ...opts, job: 'job-pids-3', out: c.out });
  await waitCount(d, at + 3);
  await expectRestoredOnce(d);
  await dk.docker(['rm', '-f', d.name]);
});

/**
 * A Docker container's own tmpfs mounts (`--tmpfs`, and its /dev/shm, where
 * POSIX shared memory lives) are not bind mounts from the host: CRIU keeps
 * their files in the checkpoint, as a tar archive through `gzip`. ARCH gives
 * CRIU its own gzip (shim/criu-gzip.c), which stores instead of compressing
 * (gzip's 30 MB/s made 128 MiB of tmpfs files cost 4 s of a frozen
 * checkpoint): the job's text is there as it is, and still the gzip format.
 */
const TMPFS_TEXT = 'arch tmpfs line, kept as it is\n';

/**
 * The job on a read-only root (as `--read-only --tmpfs` jobs run) with no capabilities, a 4 MiB text file and
 * 8 MiB of random data in its --tmpfs, a text in its /dev/shm; what it has there.
 */
async function tmpfsJob(name: string, command?: string[]) {
  const extra = [
    ...['--read-only', '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges'],
    ...['--tmpfs', '/scratch', '-e', 'COUNTER_OUT=/scratch/results'],
  ];
  const j = await runJob(name, extra, { command, startFiles: false });
  await waitCount(j, 3);
  const held = async () =>
    (
      await dk.docker([
        'exec',
        j.name,
        'sh',
        '-c',
        'md5sum /scratch/text /scratch/data /dev/shm/note && cat /dev/shm/note',
      ])
    ).stdout;
  await dk.docker([
    'exec',
    j.name,
    'sh',
    '-c',
    `yes '${TMPFS_TEXT.trim()}' | head -c 4194304 > /scratch/text && head -c 8388608 /dev/urandom > /scratch/data && echo "shm note $$" > /dev/shm/note`,
  ]);
  return { j, extra, held: await held(), readHeld: held };
}

/** After the restore: the files as they were, and the results the job wrote into its tmpfs, every count once. */
async function expectTmpfsBack(t: Awaited<ReturnType<typeof tmpfsJob>>) {
  await expectRestoredOnce(t.j);
  expect(starts(t.j)).toBe(1);
  expect(await t.readHeld()).toBe(t.held);
  const results = (await dk.docker(['exec', t.j.name, 'cat', '/scratch/results'])).stdout.trim().split('\n');
  expect(results.map(Number)).toEqual(results.map((_, i) => i + 1));
}

test("files in the container's own tmpfs mounts (--tmpfs, /dev/shm) come back; CRIU archives them through ARCH's gzip", async () => {
  const t = await tmpfsJob('job-tmpfs');
  const at = await checkpointAndRemove(t.j);
  const stored = path.join(work, 'ck', 'moby', 'job-tmpfs');
  // Stored deflate blocks: the text is in the checkpoint as it is (gzip -6 would have made 4 MiB of it a few KiB).
  expect(filesHolding(stored, TMPFS_TEXT.repeat(64)).map((f) => path.basename(f))).toEqual([
    expect.stringMatching(/^tmpfs-dev-\d+\.tar\.gz\.img$/),
  ]);
  await runJob(t.j.name, t.extra, { startFiles: false });
  await waitCount(t.j, at + 3);
  await expectTmpfsBack(t);
  await dk.docker(['rm', '-f', t.j.name]);
});

/**
 * With a store key, the files of the container's tmpfs mounts and the data
 * in its pipes are encrypted like its memory (before, CRIU's tmpfs archive and
 * pipe buffers were stored in the clear beside the encrypted page images), in
 * store format 1 (sealed files) and 2 (sealed chunks). With the first test,
 * this also shows the text is not hidden by compression: stored unencrypted,
 * it is there as it is.
 */
test.each(['1', '2'])(
  'with a store key, tmpfs files and pipe buffers are encrypted in the store, and come back: store format %s',
  async (format) => {
    const key = path.join(work, 'store.key');
    fs.writeFileSync(key, `${crypto.randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const settings = fs.readFileSync(dk.node.archConfig, 'utf8');
    fs.appendFileSync(dk.node.archConfig, `ARCH_STORE_KEY_FILE=${key}\nARCH_STORE_FORMAT=${format}\n`);
    try {
      // A line waits in a pipe that nobody reads: CRIU keeps it in pipes-data.img. The shell computes it, so
      // that the command (in the checkpoint's config.json, not encrypted) does not hold it.
      const [a, b] = [crypto.randomInt(1e6, 2e6), crypto.randomInt(1e6, 2e6)];
      const piped = `arch pipe line ${a * b}`;
      const command = [
        '/bin/sh',
        '-c',
        `(echo "arch pipe line $((${a} * ${b}))"; exec sleep 1000000) | (exec sleep 1000000) & /usr/bin/counter & wait`,
      ];
      const t = await tmpfsJob(`job-tmpfs-sealed-${format}`, command);
      const at = await checkpointAndRemove(t.j);
      const stored = path.join(work, 'ck', 'moby', t.j.name); // its checkpoints, and its chunks in format 2
      // The manifest lists them as encrypted: sealed files (format 1), chunks under the store key (format 2).
      const m = readManifest(path.join(stored, 'current'));
      const encrypted = format === '1' ? m.seal?.files : m.chunked?.keyId ? m.chunked.files : [];
      expect((encrypted ?? []).map((f) => f.path)).toEqual(
        expect.arrayContaining([expect.stringMatching(/^criu\/tmpfs-dev-\d+\.tar\.gz\.img$/), 'criu/pipes-data.img']),
      );
      expect(filesHolding(stored, TMPFS_TEXT)).toEqual([]);
      expect(filesHolding(stored, 'shm note')).toEqual([]);
      expect(filesHolding(stored, piped)).toEqual([]);
      await runJob(t.j.name, t.extra, { command, startFiles: false });
      await waitCount(t.j, at + 3);
      await expectTmpfsBack(t);
      await dk.docker(['rm', '-f', t.j.name]);
    } finally {
      fs.writeFileSync(dk.node.archConfig, settings);
    }
  },
);
