import { execa } from 'execa';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { isPlainRelativePath } from '../../core/paths.js';
import { openBeneath } from '../../core/host-dirs.js';
import { LINKS_NAME } from '../../core/closed-files.js';
import {
  captureWorkFiles,
  keptFilesWriter,
  prepareRollBack,
  rollBackWorkFiles,
  type WorkFile,
} from '../../core/work-files.js';
import { CheckpointUnusableError } from '../../contract/errors.js';

/**
 * What a job holds open in its work dir, read from /proc of real processes
 * (a shell that opens files and hands them on to sleep), and the cut back
 * before a restore, on real files.
 */
let dir: string;
const holders: ChildProcess[] = [];
const scratch: string[] = [];
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-work-files-'));
});
afterEach(() => {
  for (const p of holders.splice(0)) p.kill('SIGKILL');
  for (const d of [dir, ...scratch.splice(0)]) fs.rmSync(d, { recursive: true, force: true });
});

/** A directory outside the work dir, removed after the test. */
function outsideDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-work-files-outside-'));
  scratch.push(d);
  return d;
}

/** A process holding `redirections` (sh syntax, relative to dir) open until killed. */
async function holding(redirections: string): Promise<number> {
  const p = spawn('sh', ['-c', `cd "$1" && exec ${redirections} sleep 60`, 'sh', dir], { stdio: 'ignore' });
  holders.push(p);
  await once(p, 'spawn');
  // Until the exec into sleep, the shell holds the files: wait for sleep.
  for (let i = 0; i < 200; i++) {
    const comm = fs.readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim();
    if (comm === 'sleep') return p.pid!;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('the holder never became sleep');
}

const ino = (p: string) => String(fs.statSync(path.join(dir, p)).ino);
const mtimeNs = (p: string) => String(fs.statSync(path.join(dir, p), { bigint: true }).mtimeNs);

describe('captureWorkFiles', () => {
  test('files open for writing, by their path below the work dir, with their size and O_APPEND', async () => {
    fs.mkdirSync(path.join(dir, 'sub'));
    fs.writeFileSync(path.join(dir, 'read-only.txt'), 'r');
    const pid = await holding('3>results.txt 4>>log.txt 5<read-only.txt 6<>sub/db.bin');
    fs.appendFileSync(path.join(dir, 'results.txt'), 'abc');
    fs.appendFileSync(path.join(dir, 'sub/db.bin'), '12345');
    const got = await captureWorkFiles([pid], dir, dir);
    try {
      expect([...got.files].sort((x, y) => x.path.localeCompare(y.path))).toEqual([
        { path: 'log.txt', size: 0, ino: ino('log.txt'), append: true },
        { path: 'results.txt', size: 3, ino: ino('results.txt'), append: false },
        // Opened for reading and writing: rewritten in place, its contents kept, not its size.
        {
          path: 'sub/db.bin',
          size: 5,
          ino: ino('sub/db.bin'),
          append: false,
          inPlace: { mtimeNs: mtimeNs('sub/db.bin') },
        },
      ]);
    } finally {
      await got.sync(true);
    }
  });

  test('files outside the work dir, deleted ones and ones no longer under their name are left out', async () => {
    const outside = outsideDir();
    const pid = await holding(`3>gone.txt 4>moved.txt 7>"${outside}/o.txt"`);
    fs.rmSync(path.join(dir, 'gone.txt'));
    // The name now leads elsewhere: the held file moved out of the work dir.
    fs.renameSync(path.join(dir, 'moved.txt'), path.join(outside, 'moved.txt'));
    const got = await captureWorkFiles([pid], dir, dir);
    expect(got.files).toEqual([]);
    await got.close();
  });

  test('a name reached through a symlink inside the work dir is not recorded', async () => {
    const real = outsideDir();
    fs.mkdirSync(path.join(dir, 'd'));
    const pid = await holding('3>d/f.txt');
    // The job's view says d/f.txt; the work dir's d is now a symlink to another directory with such a file.
    fs.renameSync(path.join(dir, 'd'), path.join(real, 'd'));
    fs.mkdirSync(path.join(dir, 'x'));
    fs.writeFileSync(path.join(dir, 'x/f.txt'), 'other');
    fs.symlinkSync(path.join(dir, 'x'), path.join(dir, 'd'));
    const got = await captureWorkFiles([pid], dir, dir);
    expect(got.files).toEqual([]);
    await got.close();
  });
});

/** What the job `pid` holds open in dir, its contents kept (at most `limit` bytes) into a new kept-files.bin. */
async function captureAndKeep(pid: number, limit: number) {
  const got = await captureWorkFiles([pid], dir, dir);
  const kept = path.join(outsideDir(), 'kept-files.bin');
  const writer = await keptFilesWriter(kept, limit);
  await got.keepContents(writer.sink);
  await writer.close();
  await got.close();
  return { got, kept, writer };
}

describe('files the job rewrites in place', () => {
  /** A process that wrote `text` to `name` and went back `back` bytes (a database's header update), then sleeps. */
  async function wroteAndWentBack(name: string, text: string, back: number): Promise<number> {
    const p = spawn(
      'python3',
      [
        '-c',
        `import os,time\nf=os.open(${JSON.stringify(name)},os.O_WRONLY|os.O_CREAT)\nos.write(f,${JSON.stringify(text)}.encode())\nos.lseek(f,-${back},2)\nprint(1,flush=True)\ntime.sleep(60)`,
      ],
      { cwd: dir, stdio: ['ignore', 'pipe', 'ignore'] },
    );
    holders.push(p);
    await once(p.stdout!, 'data');
    return p.pid!;
  }

  test('a write-only file written up to before its end is rewritten in place; one written at its end is not', async () => {
    const went = await wroteAndWentBack('header.bin', 'HEADERbody', 4);
    const at = await wroteAndWentBack('seq.bin', 'abc', 0);
    const got = await captureWorkFiles([went, at], dir, dir);
    await got.close();
    expect([...got.files].sort((x, y) => x.path.localeCompare(y.path))).toEqual([
      {
        path: 'header.bin',
        size: 10,
        ino: ino('header.bin'),
        append: false,
        inPlace: { mtimeNs: mtimeNs('header.bin') },
      },
      { path: 'seq.bin', size: 3, ino: ino('seq.bin'), append: false },
    ]);
  });

  test('a file mapped shared and writable, its descriptor closed, is rewritten in place; mapped privately or read-only it is not', async () => {
    // Each file mapped with the C library's mmap, then its descriptor closed: only the mapping is left.
    const mapping = (name: string, prot: number, flags: number) =>
      `f=os.open(${JSON.stringify(name)},os.O_RDWR|os.O_CREAT)\nos.ftruncate(f,8192)\n` +
      `assert libc.mmap(None,8192,${prot},${flags},f,0) not in (None, ctypes.c_void_p(-1).value)\nos.close(f)\n`;
    const p = spawn(
      'python3',
      [
        '-c',
        'import ctypes,os,time\nlibc=ctypes.CDLL(None)\nlibc.mmap.restype=ctypes.c_void_p\n' +
          'libc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]\n' +
          // PROT_READ|PROT_WRITE = 3, PROT_READ = 1; MAP_SHARED = 1, MAP_PRIVATE = 2.
          mapping('shared.bin', 3, 1) +
          mapping('private.bin', 3, 2) +
          mapping('readonly.bin', 1, 1) +
          'print(1,flush=True)\ntime.sleep(60)',
      ],
      { cwd: dir, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    holders.push(p);
    await once(p.stdout!, 'data');
    const got = await captureWorkFiles([p.pid!], dir, dir);
    await got.close();
    expect(got.files).toEqual([
      {
        path: 'shared.bin',
        size: 8192,
        ino: ino('shared.bin'),
        append: false,
        inPlace: { mtimeNs: mtimeNs('shared.bin') },
      },
    ]);
    // The others are among the files it opens and closes, recorded as such.
    expect(got.closed.files.map((f) => f.path).sort()).toEqual(['private.bin', 'readonly.bin']);
  });

  test('kept at the checkpoint, written back whole at the restore, whatever the lost run did to them', async () => {
    fs.writeFileSync(path.join(dir, 'grown.db'), 'AAAAbbbb');
    fs.writeFileSync(path.join(dir, 'same-size.db'), '12345678');
    fs.writeFileSync(path.join(dir, 'shrunk.db'), 'long contents');
    fs.writeFileSync(path.join(dir, 'log.txt'), 'one\n');
    const pid = await holding('3<>grown.db 4<>same-size.db 5<>shrunk.db 6>>log.txt');
    const { got, kept, writer } = await captureAndKeep(pid, 1024);
    expect(writer.bytes()).toBe(8 + 8 + 13);
    expect(writer.left()).toBe(0);
    const files = got.files;
    expect(files.filter((f) => f.inPlace).map((f) => f.kept)).toEqual([0, 8, 16]);
    // An O_APPEND log is not kept: it is only cut (a shorter one, rotated, stays as it is).
    expect(files.find((f) => f.path === 'log.txt')!.kept).toBeUndefined();
    // The lost run: pages changed in place, the file grew; another rewritten; one shrank (a VACUUM); the log grew.
    fs.writeFileSync(path.join(dir, 'grown.db'), 'ZZZZbbbbNEWPAGES');
    fs.writeFileSync(path.join(dir, 'same-size.db'), '87654321');
    fs.truncateSync(path.join(dir, 'shrunk.db'), 4);
    fs.appendFileSync(path.join(dir, 'log.txt'), 'two\n');
    const done = await rollBackWorkFiles(dir, files, kept);
    expect(done.sort((x, y) => x.path.localeCompare(y.path))).toEqual([
      { path: 'grown.db', from: 16, to: 8, how: 'rewritten' },
      { path: 'log.txt', from: 8, to: 4, how: 'cut' },
      { path: 'same-size.db', from: 8, to: 8, how: 'rewritten' },
      { path: 'shrunk.db', from: 4, to: 13, how: 'rewritten' },
    ]);
    const read = (p: string) => fs.readFileSync(path.join(dir, p), 'utf8');
    expect([read('grown.db'), read('same-size.db'), read('shrunk.db'), read('log.txt')]).toEqual([
      'AAAAbbbb',
      '12345678',
      'long contents',
      'one\n',
    ]);
  });

  test('over the limit: not kept; the restore takes the file unchanged, and refuses it changed (nothing written back)', async () => {
    fs.writeFileSync(path.join(dir, 'small.db'), 'small');
    fs.writeFileSync(path.join(dir, 'big.db'), 'x'.repeat(100));
    const pid = await holding('3<>small.db 4<>big.db');
    const { got, kept, writer } = await captureAndKeep(pid, 50);
    expect([writer.bytes(), writer.left()]).toEqual([5, 100]);
    const big = got.files.find((f) => f.path === 'big.db')!;
    expect(big.inPlace).toEqual({ mtimeNs: mtimeNs('big.db') });
    expect(big.kept).toBeUndefined();
    // Unchanged since the checkpoint: restored into as it is.
    fs.writeFileSync(path.join(dir, 'small.db'), 'SMALL and more');
    expect(await rollBackWorkFiles(dir, got.files, kept)).toEqual([
      { path: 'small.db', from: 14, to: 5, how: 'rewritten' },
    ]);
    // Changed: refused with the setting to raise, and small.db not written back.
    fs.writeFileSync(path.join(dir, 'small.db'), 'SMALL again');
    fs.writeFileSync(path.join(dir, 'big.db'), 'y'.repeat(100));
    const err = await rollBackWorkFiles(dir, got.files, kept).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CheckpointUnusableError);
    expect((err as CheckpointUnusableError).reason).toBe('work-files');
    expect(String(err)).toMatch(
      /"big.db" in the work directory, which the job rewrites in place, changed after the checkpoint.*raise ARCH_KEPT_FILES_MAX_BYTES/,
    );
    expect(fs.readFileSync(path.join(dir, 'small.db'), 'utf8')).toBe('SMALL again');
  });

  test('a small results file is kept too: gone since (a temporary file the job renamed), it is made again as it was', async () => {
    fs.writeFileSync(path.join(dir, 'count.tmp'), '');
    const pid = await holding('3>count.tmp');
    fs.writeFileSync(path.join(dir, 'count.tmp'), '41\n');
    fs.chmodSync(path.join(dir, 'count.tmp'), 0o640);
    fs.chownSync(path.join(dir, 'count.tmp'), 1234, 5678);
    const { got, kept } = await captureAndKeep(pid, 1024);
    expect(got.files).toEqual([
      { path: 'count.tmp', size: 3, ino: ino('count.tmp'), append: false, kept: 0, mode: 0o640, uid: 1234, gid: 5678 },
    ]);
    // The lost run wrote on and renamed it over its final name.
    fs.appendFileSync(path.join(dir, 'count.tmp'), 'more');
    fs.renameSync(path.join(dir, 'count.tmp'), path.join(dir, 'count'));
    expect(await rollBackWorkFiles(dir, got.files, kept)).toEqual([
      { path: 'count.tmp', from: 0, to: 3, how: 'rewritten' },
    ]);
    const st = fs.statSync(path.join(dir, 'count.tmp'));
    expect([fs.readFileSync(path.join(dir, 'count.tmp'), 'utf8'), st.mode & 0o7777, st.uid, st.gid]).toEqual([
      '41\n',
      0o640,
      1234,
      5678,
    ]);
    // Not kept (no room): gone refuses the restore, as before.
    fs.rmSync(path.join(dir, 'count.tmp'));
    const { kept: _k, mode: _m, uid: _u, gid: _g, ...unkept } = got.files[0]!;
    await expect(rollBackWorkFiles(dir, [unkept], kept)).rejects.toThrow(
      '"count.tmp", open in the job at the checkpoint, is gone',
    );
  });

  test('kept contents that end early refuse the restore', async () => {
    fs.writeFileSync(path.join(dir, 'a.db'), 'contents');
    const files: WorkFile[] = [
      { path: 'a.db', size: 8, ino: ino('a.db'), append: false, inPlace: { mtimeNs: '1' }, kept: 0 },
    ];
    const kept = path.join(outsideDir(), 'kept-files.bin');
    fs.writeFileSync(kept, 'cont');
    await expect(rollBackWorkFiles(dir, files, kept)).rejects.toThrow(
      `the checkpoint's kept contents of "a.db" end early`,
    );
    await expect(rollBackWorkFiles(dir, files, undefined)).rejects.toThrow(
      'the checkpoint lacks the kept contents of "a.db"',
    );
  });
});

describe('a file held open that the lost run renamed, deleted or replaced', () => {
  /** The job holds result.part open, 5 bytes written; the checkpoint records it (with its second name). */
  async function checkpointed() {
    const pid = await holding('3>result.part');
    fs.appendFileSync(path.join(dir, 'result.part'), 'first');
    const got = await captureWorkFiles([pid], dir, dir);
    await got.sync(false);
    expect(got.files.map((f) => f.path)).toEqual(['result.part']);
    expect(got.closed.links).toMatch(LINKS_NAME);
    return got;
  }
  const restore = async (got: Awaited<ReturnType<typeof checkpointed>>) =>
    (await prepareRollBack(dir, got.files, undefined, got.closed)).apply(undefined);

  test('finished and renamed (result.part to result): put back under its name and cut back; the rename set aside', async () => {
    const got = await checkpointed();
    fs.appendFileSync(path.join(dir, 'result.part'), ' and the rest');
    fs.renameSync(path.join(dir, 'result.part'), path.join(dir, 'result'));
    const done = await restore(got);
    expect(done.filter((d) => d.how !== 'setAside')).toEqual([
      { path: 'result.part', from: 0, to: 18, how: 'putBack' },
      { path: 'result.part', from: 18, to: 5, how: 'cut' },
    ]);
    expect(fs.readFileSync(path.join(dir, 'result.part'), 'utf8')).toBe('first');
    expect(String(fs.statSync(path.join(dir, 'result.part')).ino)).toBe(got.files[0]!.ino);
    expect(done.filter((d) => d.how === 'setAside').map((d) => d.path)).toEqual(['result']);
  });

  test('replaced by a new file under its name: the recorded one back, the new one set aside', async () => {
    const got = await checkpointed();
    fs.writeFileSync(path.join(dir, 'new'), 'the lost run wrote this whole');
    fs.renameSync(path.join(dir, 'new'), path.join(dir, 'result.part'));
    const done = await restore(got);
    expect(done.find((d) => d.how === 'putBack')).toEqual({ path: 'result.part', from: 0, to: 5, how: 'putBack' });
    expect(fs.readFileSync(path.join(dir, 'result.part'), 'utf8')).toBe('first');
    const aside = done.find((d) => d.how === 'setAside')!;
    expect(aside.path).toBe('result.part');
    expect(fs.readFileSync(path.join(dir, aside.dir!, 'result.part'), 'utf8')).toBe('the lost run wrote this whole');
  });

  test('in a directory the lost run removed: the directory made again, the file put back', async () => {
    fs.mkdirSync(path.join(dir, 'out'));
    const pid = await holding('3>out/result.part');
    fs.appendFileSync(path.join(dir, 'out/result.part'), 'first');
    const got = await captureWorkFiles([pid], dir, dir);
    await got.sync(false);
    fs.rmSync(path.join(dir, 'out'), { recursive: true });
    const done = await restore(got);
    expect(done).toEqual([{ path: 'out/result.part', from: 0, to: 5, how: 'putBack' }]);
    expect(fs.readFileSync(path.join(dir, 'out/result.part'), 'utf8')).toBe('first');
  });

  test('deleted, its second name deleted too: refused as before, naming it', async () => {
    const got = await checkpointed();
    fs.rmSync(path.join(dir, 'result.part'));
    fs.rmSync(path.join(dir, got.closed.links!), { recursive: true });
    await expect(restore(got)).rejects.toThrow(
      /"result.part", open in the job at the checkpoint, is gone from its work directory/,
    );
  });
});

describe('rollBackWorkFiles', () => {
  const write = (p: string, text: string) => fs.writeFileSync(path.join(dir, p), text);
  const read = (p: string) => fs.readFileSync(path.join(dir, p), 'utf8');
  const rec = (p: string, size: number, append = false): WorkFile => ({ path: p, size, ino: ino(p), append });

  test('cuts each longer file back to its recorded size and says what it cut', async () => {
    write('a.txt', '1\n2\n3\n');
    write('b.log', 'x\ny\n');
    write('same.txt', 'same');
    const files = [rec('a.txt', 2), rec('b.log', 2, true), rec('same.txt', 4)];
    expect(await rollBackWorkFiles(dir, files)).toEqual([
      { path: 'a.txt', from: 6, to: 2, how: 'cut' },
      { path: 'b.log', from: 4, to: 2, how: 'cut' },
    ]);
    expect([read('a.txt'), read('b.log'), read('same.txt')]).toEqual(['1\n', 'x\n', 'same']);
  });

  test('checks every file before it cuts one: a gone file refuses the restore and leaves the others whole', async () => {
    write('a.txt', 'long enough');
    write('b.txt', 'b');
    const files = [rec('a.txt', 1), rec('b.txt', 1)];
    fs.rmSync(path.join(dir, 'b.txt'));
    const err = await rollBackWorkFiles(dir, files).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CheckpointUnusableError);
    expect((err as CheckpointUnusableError).reason).toBe('work-files');
    expect(String(err)).toContain('"b.txt", open in the job at the checkpoint, is gone from its work directory');
    expect(read('a.txt')).toBe('long enough');
  });

  test('a shorter file: refused unless the job opened it O_APPEND (a rotated log)', async () => {
    write('r.txt', '12');
    write('l.log', '12');
    await expect(rollBackWorkFiles(dir, [rec('r.txt', 5)])).rejects.toThrow(
      '"r.txt" in the work directory is shorter than at the checkpoint (2 < 5 bytes)',
    );
    await expect(rollBackWorkFiles(dir, [rec('l.log', 5, true)])).resolves.toEqual([]);
    expect(read('l.log')).toBe('12');
  });

  test('another file under the name (another inode) is refused and not cut', async () => {
    write('r.txt', 'old');
    const files = [rec('r.txt', 1)];
    // Held open, as the lost job held it: its inode number is not reused by the new file.
    const old = fs.openSync(path.join(dir, 'r.txt'), 'r');
    try {
      fs.rmSync(path.join(dir, 'r.txt'));
      write('other', 'new and longer');
      fs.renameSync(path.join(dir, 'other'), path.join(dir, 'r.txt'));
      await expect(rollBackWorkFiles(dir, files)).rejects.toThrow('is another file than the one the job had open');
      expect(read('r.txt')).toBe('new and longer');
    } finally {
      fs.closeSync(old);
    }
  });

  test('symlinks are never followed, at the file or at a directory on the way', async () => {
    const outside = outsideDir();
    fs.writeFileSync(path.join(outside, 'victim'), 'must stay whole');
    write('f.txt', 'x');
    const files = [rec('f.txt', 0)];
    fs.rmSync(path.join(dir, 'f.txt'));
    fs.symlinkSync(path.join(outside, 'victim'), path.join(dir, 'f.txt'));
    await expect(rollBackWorkFiles(dir, files)).rejects.toThrow('is a symlink now in its work directory');
    fs.mkdirSync(path.join(dir, 'd'));
    write('d/g.txt', 'x');
    const nested = [rec('d/g.txt', 0)];
    fs.rmSync(path.join(dir, 'd'), { recursive: true });
    fs.symlinkSync(outside, path.join(dir, 'd'));
    fs.writeFileSync(path.join(outside, 'g.txt'), 'must stay whole');
    await expect(rollBackWorkFiles(dir, nested)).rejects.toThrow(CheckpointUnusableError);
    expect(fs.readFileSync(path.join(outside, 'victim'), 'utf8')).toBe('must stay whole');
    expect(fs.readFileSync(path.join(outside, 'g.txt'), 'utf8')).toBe('must stay whole');
  });

  test('a FIFO put at the name is refused without being opened (no writer blocks, nothing behind it runs)', async () => {
    write('f.txt', 'x');
    const files = [rec('f.txt', 0)];
    fs.rmSync(path.join(dir, 'f.txt'));
    await execa('mkfifo', [path.join(dir, 'f.txt')]);
    await expect(rollBackWorkFiles(dir, files)).rejects.toThrow('is not a regular file now in its work directory');
  });

  test('a path that would leave the work dir is refused before anything is opened', async () => {
    for (const p of ['../x', '/etc/passwd', 'a/../../x', 'a//b', './a', ''])
      await expect(rollBackWorkFiles(dir, [{ path: p, size: 0, ino: '1', append: false }])).rejects.toThrow(
        CheckpointUnusableError,
      );
    expect(isPlainRelativePath('a/b.txt')).toBe(true);
    await expect(openBeneath(dir, '../x', fs.constants.O_RDONLY)).rejects.toThrow('not a plain relative path');
  });
});
