import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { createNodeContext } from '../../core/context.js';
import { CheckpointStore } from '../../core/store.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { ARCH_RUNC_BIN, startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { ensureImage, PYTHON_IMAGE } from '../support/images.js';

/**
 * A node lost after a periodic checkpoint (the job went on writing, then
 * died with the node): the job is restored from that checkpoint, and the
 * files it holds open in its shared work dir must agree with it. On real
 * runc, CRIU and containerd; the loss is a SIGKILL of the container after
 * a checkpoint that left it running, as a dead node leaves it.
 */
let a: ArchTestNode;
let storage: string;
let shared: string;

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-storage-');
  shared = path.join(storage, 'shared');
  a = await startArchNode('wdf-a');
});

afterAll(async () => {
  await stopAllNodes();
  fs.rmSync(storage, { recursive: true, force: true });
});

const envOf = (append: boolean) => [
  'ARCH_ENABLE=1',
  `ARCH_SHAREDFS_HOST_PATH=${shared}`,
  'ARCH_WORKDIR_CONTAINER_PATH=/work',
  'COUNTER_OUT=/work/out.txt',
  ...(append ? ['COUNTER_OUT_APPEND=1'] : []),
];

const outOf = (id: string) => path.join(shared, 'work/default', id, 'out.txt');
const linesOf = (file: string) => fs.readFileSync(file, 'utf8').split('\n').slice(0, -1).map(Number);
/** The first value the counter printed to this stdout file: 1 after a fresh start, more after a restore. */
const firstCount = (stdout: string) =>
  waitFor('a count on stdout', () => {
    const m = /count (\d+)/.exec(fs.readFileSync(stdout, 'utf8'));
    return m ? Number(m[1]) : undefined;
  });

/** Run, checkpoint leaving it running, let it write on, then lose it. Returns the size recorded at the checkpoint. */
async function runCheckpointAndLose(id: string, append: boolean, rotate = false): Promise<number> {
  await a.runCounter(id, envOf(append));
  await a.waitCount(id, 8);
  const res = await checkpointContainer(a.ctx, {
    namespace: 'default',
    id,
    runcRoot: a.runcRoot('default'),
    leaveRunning: true,
  });
  const recorded = res.manifest.workFiles;
  expect(recorded).toEqual([
    {
      path: 'out.txt',
      size: expect.any(Number),
      ino: expect.any(String),
      append,
      // A small results file is kept too (made again if it is gone at the restore); a log is not.
      ...(append ? {} : { kept: 0, mode: expect.any(Number), uid: 0, gid: 0 }),
    },
  ]);
  const size = recorded![0]!.size;
  // The lines up to the checkpoint, whole: the job was stopped between two writes.
  const atCheckpoint = fs.readFileSync(outOf(id), 'utf8').slice(0, size);
  expect(atCheckpoint.endsWith('\n')).toBe(true);
  // The job goes on writing after the checkpoint, then the node is lost.
  await waitFor('lines written after the checkpoint', () =>
    fs.statSync(outOf(id)).size > size + 20 ? true : undefined,
  );
  // The log rotated after the checkpoint (logrotate's default: renamed, the job writes on into it).
  if (rotate) fs.renameSync(outOf(id), `${outOf(id)}.1`);
  await a.containerd.taskKill(id, 'SIGKILL');
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  await a.containerd.removeContainer(id);
  expect(fs.statSync(rotate ? `${outOf(id)}.1` : outOf(id)).size).toBeGreaterThan(size);
  return size;
}

test.each([
  ['a results file (opened O_TRUNC, CRIU checks its size)', false],
  ['a log (O_APPEND)', true],
])(
  'node lost after a periodic checkpoint: %s in the work dir is cut back, and the job continues from the checkpoint',
  async (_what, append) => {
    const id = `wdf-${append ? 'append' : 'trunc'}`;
    const size = await runCheckpointAndLose(id, append);
    const lostLines = linesOf(outOf(id)).length;

    const stdout = await a.runCounter(id, envOf(append));
    await expectOutContinued(id, stdout, size, lostLines);
  },
);

test('node lost after a periodic checkpoint: a log (O_APPEND) rotated after it is put back under its name and cut back, and the job continues', async () => {
  const id = 'wdf-rotated';
  const size = await runCheckpointAndLose(id, true, true);
  const lostLines = linesOf(`${outOf(id)}.1`).length;
  // Before, the restore was refused ("out.txt" … is gone from its work directory) and the job started over.
  const stdout = await a.runCounter(id, envOf(true));
  const back = await waitFor('the put-back line', () =>
    a.logLines().find((l) => l.container === id && Array.isArray(l.putBack)),
  );
  expect(back.putBack).toEqual([{ path: 'out.txt', from: 0, to: expect.any(Number) }]);
  // The rotated name is the lost run's: set aside (the same file, a second name of it).
  const aside = a.logLines().find((l) => l.container === id && Array.isArray(l.setAside));
  expect(aside?.setAside).toEqual(['out.txt.1']);
  await expectOutContinued(id, stdout, size, lostLines);
});

/**
 * expectContinued for the work dir's out.txt, recorded at `size` bytes: the
 * restored job goes on from the lines it had written at the checkpoint (the
 * cut keeps them as they are).
 */
async function expectOutContinued(id: string, stdout: string, size: number, lostLines: number): Promise<void> {
  const atCheckpoint = size && fs.readFileSync(outOf(id), 'utf8').slice(0, size).split('\n').length - 1;
  await expectContinued({
    id,
    stdout,
    file: outOf(id),
    size,
    lostLines,
    countAbove: atCheckpoint,
    cutLine: (l) => Array.isArray(l.files),
  });
}

/**
 * Restored (not started over: its first count is past `countAbove`) with
 * `file` cut back to `size` (the log line `cutLine` picks says so), then
 * writing on past what the lost run had written: every value once, in
 * order, from 1. The container is removed after.
 */
async function expectContinued(o: {
  id: string;
  stdout: string;
  file: string;
  size: number;
  lostLines: number;
  countAbove: number;
  cutLine: (l: Record<string, unknown>) => boolean;
}): Promise<void> {
  await a.containerd.waitStatus(o.id, 'RUNNING', 15_000);
  const cut = a.logLines().find((l) => l.container === o.id && o.cutLine(l));
  expect(cut?.files).toEqual([{ path: path.basename(o.file), from: expect.any(Number), to: o.size }]);
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === o.id)).toBe(true);
  expect(await firstCount(o.stdout)).toBeGreaterThan(o.countAbove);
  expect(fs.readFileSync(o.stdout, 'utf8')).not.toContain('counter start');
  await waitFor('the restored job past the lost run', () =>
    linesOf(o.file).length > o.lostLines + 3 ? true : undefined,
  );
  const lines = linesOf(o.file);
  expect(lines).toEqual(lines.map((_, i) => i + 1));
  await a.containerd.removeContainer(o.id);
}

/** The checkpoints' second names of the job's files (core/closed-files.ts) removed, as if let go. */
const removeSecondNames = (id: string) => {
  const dir = path.dirname(outOf(id));
  for (const n of fs.readdirSync(dir))
    if (n.startsWith('.arch-checkpoint-files-')) fs.rmSync(path.join(dir, n), { recursive: true });
};

test('a work file replaced since the checkpoint: the recorded one back under its name, the new one set aside, and the job continues', async () => {
  const id = 'wdf-replaced';
  const size = await runCheckpointAndLose(id, false);
  const lostLines = linesOf(outOf(id)).length;
  // Written beside and renamed over it, as editors and jobs do: a new inode, whatever the filesystem reuses.
  fs.writeFileSync(`${outOf(id)}.new`, 'x'.repeat(size + 100));
  fs.renameSync(`${outOf(id)}.new`, outOf(id));

  const stdout = await a.runCounter(id, envOf(false));
  await a.containerd.waitStatus(id, 'RUNNING', 15_000);
  const aside = await waitFor('the set-aside line', () =>
    a.logLines().find((l) => l.container === id && Array.isArray(l.setAside)),
  );
  expect(aside.setAside).toEqual(['out.txt']);
  expect(fs.readFileSync(path.join(path.dirname(outOf(id)), String(aside.to), 'out.txt'), 'utf8')).toBe(
    'x'.repeat(size + 100),
  );
  expect(a.logLines().find((l) => l.container === id && Array.isArray(l.putBack))?.putBack).toEqual([
    { path: 'out.txt', from: 0, to: expect.any(Number) },
  ]);
  await expectOutContinued(id, stdout, size, lostLines);
});

test('a work file replaced since the checkpoint, its second name gone: no restore, a reason naming it, nothing cut', async () => {
  const id = 'wdf-replaced-unlinked';
  const size = await runCheckpointAndLose(id, false);
  fs.writeFileSync(`${outOf(id)}.new`, 'x'.repeat(size + 100));
  fs.renameSync(`${outOf(id)}.new`, outOf(id));
  removeSecondNames(id);

  const stdout = await a.runCounter(id, envOf(false));
  await a.containerd.waitStatus(id, 'RUNNING', 15_000);
  const refused = a.logLines().find((l) => l.container === id && l.reason === 'work-files');
  expect(refused?.msg).toBe('checkpoint not restored; starting the container fresh');
  expect(String(refused?.err)).toContain(
    '"out.txt" in the work directory is another file than the one the job had open',
  );
  expect(a.logLines().some((l) => l.container === id && Array.isArray(l.files))).toBe(false);
  expect(await firstCount(stdout)).toBe(1);
  await a.containerd.removeContainer(id);
});

test('a symlink planted at a work file name: not followed, its target is not cut (the link set aside, the file put back)', async () => {
  const id = 'wdf-symlink';
  const size = await runCheckpointAndLose(id, false);
  // What the job's owner could point at: a host file outside the work dir.
  const victim = path.join(storage, 'victim.txt');
  fs.writeFileSync(victim, 'y'.repeat(size + 100));
  fs.rmSync(outOf(id));
  fs.symlinkSync(victim, outOf(id));

  await a.runCounter(id, envOf(false));
  await a.containerd.waitStatus(id, 'RUNNING', 15_000);
  const aside = await waitFor('the set-aside line', () =>
    a.logLines().find((l) => l.container === id && Array.isArray(l.setAside)),
  );
  expect(aside.setAside).toEqual(['out.txt']);
  expect(fs.readlinkSync(path.join(path.dirname(outOf(id)), String(aside.to), 'out.txt'))).toBe(victim);
  expect(fs.lstatSync(outOf(id)).isFile()).toBe(true);
  expect(fs.readFileSync(victim, 'utf8')).toBe('y'.repeat(size + 100));
  await a.containerd.taskKill(id, 'SIGKILL');
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  await a.containerd.removeContainer(id);
});

test('a symlink planted at a work file name, its second name gone: refused, not followed, its target is not cut', async () => {
  const id = 'wdf-symlink-unlinked';
  const size = await runCheckpointAndLose(id, false);
  const victim = path.join(storage, 'victim-2.txt');
  fs.writeFileSync(victim, 'y'.repeat(size + 100));
  fs.rmSync(outOf(id));
  fs.symlinkSync(victim, outOf(id));
  removeSecondNames(id);

  await a.runCounter(id, envOf(false));
  // Started fresh (the counter itself then fails to open /work/out.txt: the link's target is not in the container).
  const refused = await waitFor('the refusal', () =>
    a.logLines().find((l) => l.container === id && l.reason === 'work-files'),
  );
  expect(refused.msg).toBe('checkpoint not restored; starting the container fresh');
  expect(String(refused.err)).toContain(
    '"out.txt", open in the job at the checkpoint, is a symlink now in its work directory',
  );
  expect(fs.readFileSync(victim, 'utf8')).toBe('y'.repeat(size + 100));
  await a.containerd.removeContainer(id);
});

test('a checkpoint that stops the job records its work files too, and they restore uncut', async () => {
  const id = 'wdf-stop';
  await a.runCounter(id, envOf(false));
  await a.waitCount(id, 5);
  const res = await checkpointContainer(a.ctx, { namespace: 'default', id, runcRoot: a.runcRoot('default') });
  await a.containerd.waitStatus(id, 'STOPPED', 15_000);
  expect(res.manifest.workFiles).toEqual([
    {
      path: 'out.txt',
      size: fs.statSync(outOf(id)).size,
      ino: String(fs.statSync(outOf(id)).ino),
      append: false,
      kept: 0,
      mode: 0o644,
      uid: 0,
      gid: 0,
    },
  ]);
  const before = linesOf(outOf(id)).length;
  await a.containerd.removeContainer(id);
  const stdout = await a.runCounter(id, envOf(false));
  await waitFor('restored', () => (linesOf(outOf(id)).length > before + 2 ? true : undefined));
  expect(a.logLines().some((l) => l.msg === 'restored from checkpoint' && l.container === id)).toBe(true);
  expect(a.logLines().some((l) => l.container === id && Array.isArray(l.files))).toBe(false);
  expect(await firstCount(stdout)).toBeGreaterThanOrEqual(before);
  const lines = linesOf(outOf(id));
  expect(lines).toEqual(lines.map((_, i) => i + 1));
  await a.containerd.removeContainer(id);
  expect(await new CheckpointStore(path.join(shared, 'checkpoint/default', id)).current()).toBeTruthy();
});

/**
 * The same loss with the results file in a volume of the container (a
 * Kubernetes persistent volume, a Docker volume: here a host directory bound
 * in, which outlives the container as those do) instead of ARCH's work dir.
 */
describe('a volume the container names in ARCH_ROLLBACK_VOLUMES', () => {
  let volume: string;
  beforeAll(() => {
    volume = path.join(storage, 'pv');
  });
  const results = (id: string) => path.join(volume, id, 'out.txt');
  const run = (id: string, rollback: boolean) => {
    fs.mkdirSync(path.join(volume, id), { recursive: true });
    return a.runCounter(
      id,
      [
        'ARCH_ENABLE=1',
        `ARCH_CHECKPOINT_HOST_PATH=${path.join(storage, 'ck')}`,
        'COUNTER_OUT=/results/out.txt',
        ...(rollback ? ['ARCH_ROLLBACK_VOLUMES=/results'] : []),
      ],
      { mounts: [{ type: 'bind', src: path.join(volume, id), dst: '/results', options: ['rbind', 'rw'] }] },
    );
  };
  /** Checkpointed left running, written on past it, lost; the size recorded for out.txt. */
  const checkpointAndLose = async (id: string, rollback: boolean): Promise<number> => {
    await run(id, rollback);
    await a.waitCount(id, 8);
    const res = await checkpointContainer(a.ctx, {
      namespace: 'default',
      id,
      runcRoot: a.runcRoot('default'),
      leaveRunning: true,
    });
    const recorded = res.manifest.volumeFiles;
    const size = fs.statSync(results(id)).size;
    if (rollback) {
      expect(recorded).toEqual([
        {
          destination: '/results',
          files: [
            {
              path: 'out.txt',
              size: expect.any(Number),
              ino: expect.any(String),
              append: false,
              ...{ kept: 0, mode: expect.any(Number), uid: 0, gid: 0 },
            },
          ],
          // Every other file and directory of the volume (none here): what is not among them at the restore is set aside.
          closed: [],
          closedNonFiles: [],
          // Where the volume's files have second names (put back if the lost run deletes or renames one).
          closedLinks: expect.stringMatching(/^\.arch-checkpoint-files-/),
        },
      ]);
    } else expect(recorded).toBeUndefined();
    await waitFor('lines written after the checkpoint', () =>
      fs.statSync(results(id)).size > size + 20 ? true : undefined,
    );
    await a.containerd.taskKill(id, 'SIGKILL');
    await a.containerd.waitStatus(id, 'STOPPED', 15_000);
    await a.containerd.removeContainer(id);
    return recorded?.[0]?.files[0]?.size ?? size;
  };

  test('named: the results file is cut back to the checkpoint and the job continues, every line once', async () => {
    const id = 'vol-rollback';
    const size = await checkpointAndLose(id, true);
    const lostLines = linesOf(results(id)).length;
    const stdout = await run(id, true);
    await expectContinued({
      id,
      stdout,
      file: results(id),
      size,
      lostLines,
      countAbove: 1,
      cutLine: (l) => l.volume === '/results',
    });
  });

  test('not named: CRIU refuses the grown file, the job starts fresh, and the reason names the setting to set', async () => {
    const id = 'vol-not-named';
    await checkpointAndLose(id, false);
    const stdout = await run(id, false);
    await a.containerd.waitStatus(id, 'RUNNING', 15_000);
    const fresh = a
      .logLines()
      .find((l) => l.container === id && l.msg === 'checkpoint not restored; starting the container fresh');
    expect(fresh?.reason).toBe('restore-failed');
    expect(String(fresh?.err)).toContain(
      '/results/out.txt changed since the checkpoint in the volume at /results, which ARCH does not roll back. ' +
        'Fix: if only this job writes there, set ARCH_ROLLBACK_VOLUMES=/results on the container',
    );
    expect(await firstCount(stdout)).toBe(1);
    await a.containerd.removeContainer(id);
  });
});

/**
 * A job that keeps its progress in a SQLite database in its work dir, the
 * connection held open (test/support/python-job.py, mode sqlite): a row per
 * step, the file growing and its pages changing in place. Cut back to its
 * size at the checkpoint, the database was malformed; its contents are kept
 * with the checkpoint and written back whole.
 */
describe('a Python job in its work dir: a database it rewrites in place, a results file it opens and closes', () => {
  let image: string;
  beforeAll(async () => {
    image = await ensureImage(a.containerd, PYTHON_IMAGE);
  }, 300_000);
  // storage is made in the file's beforeAll: read when a test runs.
  const env = (job: string[]) => [
    'ARCH_ENABLE=1',
    `ARCH_SHAREDFS_HOST_PATH=${path.join(storage, 'db-shared')}`,
    'ARCH_WORKDIR_CONTAINER_PATH=/work',
    'PYJOB_STATE=/work',
    ...job,
  ];
  const SQLITE_JOB = ['PYJOB_MODE=sqlite'];
  const pyLines = (out: string) => fs.readFileSync(out, 'utf8').split('\n').filter(Boolean);
  const lastStep = (out: string) => Number(/^pyjob (\d+) /.exec(pyLines(out).at(-1) ?? '')?.[1] ?? 0);
  const run = async (id: string, job = SQLITE_JOB) => {
    const logFile = path.join(a.dir, `${id}-${Date.now()}.out`);
    await a.containerd.run({ image, id, env: env(job), logFile, runcBinary: ARCH_RUNC_BIN, detach: true });
    return logFile;
  };
  /** Checkpointed left running at step `at`, run on 6 more steps (the database grows), lost. */
  const checkpointAndLose = async (id: string, ctx = a.ctx, job = SQLITE_JOB) => {
    const out = await run(id, job);
    await waitFor('step 4', () => (lastStep(out) >= 4 ? true : undefined), 60_000);
    const res = await checkpointContainer(ctx, {
      namespace: 'default',
      id,
      runcRoot: a.runcRoot('default'),
      leaveRunning: true,
    });
    const at = lastStep(out);
    await waitFor('6 steps more', () => (lastStep(out) >= at + 6 ? true : undefined), 60_000);
    await a.containerd.taskKill(id, 'SIGKILL');
    await a.containerd.waitStatus(id, 'STOPPED', 15_000);
    await a.containerd.removeContainer(id);
    return { res, at };
  };
  const remove = async (id: string) => {
    await a.containerd.taskKill(id, 'SIGKILL').catch(() => undefined);
    await a.containerd.waitStatus(id, 'STOPPED', 15_000).catch(() => undefined);
    await a.containerd.removeContainer(id).catch(() => undefined);
  };

  /** The node's settings file with `extra` lines while `body` runs (arch-runc reads it at every call), and a context reading it. */
  const withSettings = async (extra: Record<string, string>, body: (ctx: typeof a.ctx) => Promise<void>) => {
    const before = fs.readFileSync(a.archConfig, 'utf8');
    fs.appendFileSync(
      a.archConfig,
      Object.entries(extra)
        .map(([k, v]) => `${k}=${v}\n`)
        .join(''),
    );
    try {
      await body(createNodeContext('test', { ...process.env, ARCH_CONFIG: a.archConfig }));
    } finally {
      fs.writeFileSync(a.archConfig, before);
    }
  };
  const storeKey = () => {
    const file = path.join(storage, 'store.key');
    if (!fs.existsSync(file)) fs.writeFileSync(file, `${crypto.randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    return file;
  };
  /** Files of a checkpoint directory that hold these bytes in plaintext. */
  const filesHolding = (dir: string, bytes: Buffer): string[] =>
    fs
      .readdirSync(dir, { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile() && fs.readFileSync(path.join(e.parentPath, e.name)).includes(bytes))
      .map((e) => path.relative(dir, path.join(e.parentPath, e.name)));
  const SQLITE_MAGIC = Buffer.from('SQLite format 3\0');

  test.each([
    ['whole files (format 1)', false, false],
    ['encrypted (ARCH_STORE_KEY_FILE)', true, false],
    ['chunked (ARCH_STORE_FORMAT=2)', false, true],
  ])(
    'node lost after a periodic checkpoint, store %s: the database comes back as it was then, and the job goes on from it',
    async (_store, sealed, chunked) => {
      const id = `wdf-sqlite${sealed ? '-sealed' : ''}${chunked ? '-chunked' : ''}`;
      const settings = {
        ...(sealed ? { ARCH_STORE_KEY_FILE: storeKey() } : {}),
        ...(chunked ? { ARCH_STORE_FORMAT: '2' } : {}),
      };
      await withSettings(settings, async (ctx) => {
        try {
          const { res, at } = await checkpointAndLose(id, ctx);
          // What the lost run made after the checkpoint (its SQLite journal too, when it was killed in a
          // transaction: played back by the restored job's SQLite, it broke the database): set aside.
          const workDir = path.join(storage, 'db-shared/work/default', id);
          fs.mkdirSync(path.join(workDir, 'results'), { recursive: true });
          fs.writeFileSync(path.join(workDir, 'results/after-checkpoint.csv'), 'lost run\n');
          const db = res.manifest.workFiles?.find((f) => f.path === 'progress.db');
          expect(db).toMatchObject({ inPlace: { mtimeNs: expect.stringMatching(/^\d+$/) }, kept: expect.any(Number) });
          // The database's pages are the job's data: in kept-files.bin in the clear, sealed with the rest when
          // the store is encrypted (format 2 keeps them in chunks outside the checkpoint's directory).
          if (!chunked) expect(filesHolding(res.dir, SQLITE_MAGIC).includes('kept-files.bin')).toBe(!sealed);
          if (sealed) expect(filesHolding(res.dir, SQLITE_MAGIC)).toEqual([]);
          const out = await run(id);
          await waitFor('5 steps after the restore', () => (pyLines(out).length >= 5 ? true : undefined), 60_000);
          const after = pyLines(out);
          // Restored (no fresh start), from the checkpoint, and every step's database check passed:
          // as many rows as steps, the last one this step's total, PRAGMA quick_check ok.
          const failed = after.filter((l) => / FAIL|^pyjob start/.test(l));
          if (failed.length)
            throw new Error(
              `after the restore:\n${after.slice(0, 8).join('\n')}\nARCH log:\n${JSON.stringify(
                a
                  .logLines()
                  .filter((l) => l.container === id)
                  .slice(-6),
                null,
                1,
              )}`,
            );
          const first = Number(/^pyjob (\d+) /.exec(after[0]!)?.[1]);
          expect(first).toBeGreaterThan(1);
          expect(first).toBeLessThanOrEqual(at + 1);
          const written = a.logLines().find((l) => l.container === id && Array.isArray(l.rewritten));
          // With its rollback journal when the checkpoint caught a transaction (made again: the lost run deleted it).
          expect(written?.rewritten).toEqual(
            expect.arrayContaining([{ path: 'progress.db', from: expect.any(Number), to: db!.size }]),
          );
          const aside = a.logLines().find((l) => l.container === id && Array.isArray(l.setAside));
          // The directory was made after the checkpoint too: moved whole.
          expect(aside?.setAside).toEqual(expect.arrayContaining(['results']));
          expect(fs.existsSync(path.join(workDir, 'results'))).toBe(false);
          expect(fs.readFileSync(path.join(workDir, String(aside!.to), 'results/after-checkpoint.csv'), 'utf8')).toBe(
            'lost run\n',
          );
        } finally {
          await remove(id);
        }
      });
    },
  );

  test("over the node's ARCH_KEPT_FILES_MAX_BYTES: not kept, and once the job changed it the restore is refused, naming the setting", async () => {
    const id = 'wdf-sqlite-over';
    try {
      const { res } = await checkpointAndLose(id, { ...a.ctx, settings: { ...a.ctx.settings, keptFilesMaxBytes: 0 } });
      const db = res.manifest.workFiles?.find((f) => f.path === 'progress.db');
      expect(db?.inPlace).toEqual({ mtimeNs: expect.stringMatching(/^\d+$/) });
      expect(db?.kept).toBeUndefined();
      expect(
        a
          .logLines()
          .some(
            (l) =>
              l.container === id && /rewrites in place hold more than ARCH_KEPT_FILES_MAX_BYTES/.test(String(l.msg)),
          ),
      ).toBe(true);
      const out = await run(id);
      const refused = await waitFor('the refusal', () =>
        a.logLines().find((l) => l.container === id && l.reason === 'work-files'),
      );
      expect(refused.msg).toBe('checkpoint not restored; starting the container fresh');
      expect(String(refused.err)).toMatch(
        /"progress.db" in the work directory, which the job rewrites in place, changed after the checkpoint.*raise ARCH_KEPT_FILES_MAX_BYTES/,
      );
      await waitFor('the fresh start', () =>
        pyLines(out).some((l) => l.startsWith('pyjob start')) ? true : undefined,
      );
    } finally {
      await remove(id);
    }
  });

  test('node lost after a periodic checkpoint: the directories the lost run made are set aside, so the job makes them again', async () => {
    const id = 'wdf-step-dirs';
    const job = ['PYJOB_MODE=threads', 'PYJOB_STEP_DIRS=1'];
    const workDir = path.join(storage, 'db-shared/work/default', id);
    try {
      const { res, at } = await checkpointAndLose(id, a.ctx, job);
      // Directories are recorded with the files: the lost run's out/<step> after the checkpoint are not among them.
      expect(res.manifest.closedWorkNonFiles).toEqual(expect.arrayContaining(['out', 'out/1']));
      expect(res.manifest.closedWorkNonFiles).not.toContain(`out/${at + 3}`);
      expect(fs.existsSync(path.join(workDir, `out/${at + 3}/sum`))).toBe(true);
      const out = await run(id, job);
      await waitFor('5 steps after the restore', () => (pyLines(out).length >= 5 ? true : undefined), 60_000);
      const after = pyLines(out);
      // Restored, and every step made its directory again (os.mkdir failed on the lost run's, and the job died).
      expect(after.filter((l) => / FAIL|^pyjob start|Error/.test(l))).toEqual([]);
      const first = Number(/^pyjob (\d+) /.exec(after[0]!)?.[1]);
      expect(first).toBeGreaterThan(1);
      expect(first).toBeLessThanOrEqual(at + 1);
      const aside = a.logLines().find((l) => l.container === id && Array.isArray(l.setAside));
      // Moved whole, each directory once (not the files in it one by one).
      expect(aside?.setAside).toEqual(expect.arrayContaining([`out/${at + 3}`]));
      expect(aside?.setAside).not.toContain(`out/${at + 3}/sum`);
      expect(fs.readdirSync(path.join(workDir, String(aside!.to), `out%2F${at + 3}`))).toEqual(['sum']);
    } finally {
      await remove(id);
    }
  });

  test('node lost after a periodic checkpoint: the input files the lost run consumed (deleted, moved to done/) are back, and the job reads them again', async () => {
    const id = 'wdf-inputs';
    const job = ['PYJOB_MODE=threads', 'PYJOB_INPUTS=1'];
    const workDir = path.join(storage, 'db-shared/work/default', id);
    try {
      const { res, at } = await checkpointAndLose(id, a.ctx, job);
      // Every recorded file has a second name in the checkpoint's link set at the top of the work dir.
      const links = res.manifest.closedWorkLinks!;
      expect(links).toMatch(/^\.arch-checkpoint-files-/);
      expect(fs.readdirSync(path.join(workDir, links)).length).toBe(res.manifest.closedWorkFiles!.length);
      // The lost run consumed the inputs after the checkpoint: gone from in/. And it cleared done/ at the end.
      expect(fs.existsSync(path.join(workDir, `in/${at + 3}`))).toBe(false);
      expect(fs.existsSync(path.join(workDir, 'done/2'))).toBe(true);
      fs.rmSync(path.join(workDir, 'done'), { recursive: true });
      const out = await run(id, job);
      await waitFor('5 steps after the restore', () => (pyLines(out).length >= 5 ? true : undefined), 60_000);
      const after = pyLines(out);
      // Restored, and every step found its input holding its number (before: "FAIL", the input gone).
      expect(after.filter((l) => / FAIL|^pyjob start|Error/.test(l))).toEqual([]);
      const first = Number(/^pyjob (\d+) /.exec(after[0]!)?.[1]);
      expect(first).toBeGreaterThan(1);
      expect(first).toBeLessThanOrEqual(at + 1);
      const back = a.logLines().find((l) => l.container === id && Array.isArray(l.putBack));
      expect(back?.putBack).toEqual(
        expect.arrayContaining([{ path: `in/${at + 3}`, from: 0, to: String(at + 3).length }]),
      );
      // done/ made again, with what it held at the checkpoint back in it.
      expect(back?.putBack).toEqual(expect.arrayContaining([{ path: 'done/2', from: 0, to: 1 }]));
      expect(fs.readFileSync(path.join(workDir, 'done/2'), 'utf8')).toBe('2');
    } finally {
      await remove(id);
    }
  });

  test('node lost after a periodic checkpoint: a file the job maps shared and writable, its descriptor closed, comes back as it was then', async () => {
    const id = 'wdf-mmap';
    const job = ['PYJOB_MODE=mmap'];
    try {
      const { res, at } = await checkpointAndLose(id, a.ctx, job);
      // No descriptor open: seen through the job's mappings, kept whole as a file rewritten in place.
      const sums = res.manifest.workFiles?.find((f) => f.path === 'sums.bin');
      expect(sums).toMatchObject({ size: 4096, inPlace: expect.any(Object), kept: expect.any(Number) });
      expect(res.manifest.closedWorkFiles?.map((f) => f.path)).not.toContain('sums.bin');
      const out = await run(id, job);
      await waitFor('5 steps after the restore', () => (pyLines(out).length >= 5 ? true : undefined), 60_000);
      const after = pyLines(out);
      // Restored from the checkpoint, and at every step the file held the sum the job had in memory
      // (before, it held the lost run's: "FAIL (the file held step 11, memory step 5)").
      expect(after.filter((l) => / FAIL|^pyjob start/.test(l))).toEqual([]);
      const first = Number(/^pyjob (\d+) /.exec(after[0]!)?.[1]);
      expect(first).toBeGreaterThan(1);
      expect(first).toBeLessThanOrEqual(at + 1);
      const written = a.logLines().find((l) => l.container === id && Array.isArray(l.rewritten));
      expect(written?.rewritten).toEqual([{ path: 'sums.bin', from: 4096, to: 4096 }]);
    } finally {
      await remove(id);
    }
  });

  test('node lost after a periodic checkpoint: a results file appended by open and close at every step has every step once', async () => {
    const id = 'wdf-appended';
    const job = ['PYJOB_MODE=threads', 'PYJOB_STEPS_LOG=1'];
    const stepsLog = path.join(storage, 'db-shared/work/default', id, 'steps.log');
    const steps = () => fs.readFileSync(stepsLog, 'utf8').split('\n').filter(Boolean).map(Number);
    try {
      const { res } = await checkpointAndLose(id, a.ctx, job);
      // Not open while the job was stopped: recorded among the files it opens and closes.
      expect(res.manifest.closedWorkFiles).toContainEqual(
        expect.objectContaining({ path: 'steps.log', tail: expect.stringMatching(/^[0-9a-f]{64}$/) }),
      );
      const recorded = res.manifest.closedWorkFiles!.find((f) => f.path === 'steps.log')!.size;
      const lost = steps().length;
      const out = await run(id, job);
      await waitFor('the restored job past the lost run', () => (steps().length > lost + 3 ? true : undefined), 60_000);
      expect(pyLines(out).filter((l) => / FAIL|^pyjob start/.test(l))).toEqual([]);
      const cut = a.logLines().find((l) => l.container === id && Array.isArray(l.appended));
      expect(cut?.appended).toEqual([{ path: 'steps.log', from: expect.any(Number), to: recorded }]);
      // Every step once, in order: the lost run's steps after the checkpoint were cut, and appended again.
      const all = steps();
      expect(all).toEqual(all.map((_, i) => i + 1));
    } finally {
      await remove(id);
    }
  });
});
