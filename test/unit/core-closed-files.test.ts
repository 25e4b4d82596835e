import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  cutAppendedFiles,
  dropLinks,
  LINKS_NAME,
  pruneLinks,
  putBackFiles,
  recordClosedFiles,
  SetAside,
  setAsideIn,
  TAIL_BYTES,
} from '../../core/closed-files.js';

/**
 * The files a job opens and closes in its work dir: recorded at a checkpoint,
 * cut back at a restore only where the lost run appended to them, on real
 * files.
 */
let dir: string;
let outside: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-closed-files-'));
  outside = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-closed-files-outside-'));
});
afterEach(() => {
  for (const d of [dir, outside]) fs.rmSync(d, { recursive: true, force: true });
});
const write = (p: string, text: string) => fs.writeFileSync(path.join(dir, p), text);
const append = (p: string, text: string) => fs.appendFileSync(path.join(dir, p), text);
const read = (p: string) => fs.readFileSync(path.join(dir, p), 'utf8');

/** `body` given the place `d` open and its SetAside, as a restore's roll-back holds them; what was moved aside, and where to. */
function inPlace(d: string, body: (root: number, aside: SetAside) => void): { moved: string[]; to?: string } {
  const root = fs.openSync(d, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  const aside = new SetAside(root);
  try {
    body(root, aside);
  } finally {
    aside.close();
    fs.closeSync(root);
  }
  return { moved: aside.moved, ...(aside.to ? { to: aside.to } : {}) };
}
const setAsideNewFiles = (d: string, recorded: ReadonlySet<string>, nonFiles?: ReadonlySet<string>) =>
  inPlace(d, (root, aside) => setAsideIn(root, aside, recorded, nonFiles));

test('records the regular files below the place, but not the open ones, symlinks, what they lead to, or ARCH own entries', async () => {
  fs.mkdirSync(path.join(dir, 'sub'));
  write('results.csv', 'a,1\n');
  write('sub/steps.log', '1\n');
  write('open.db', 'held open');
  write('empty', '');
  fs.writeFileSync(path.join(outside, 'secret'), "not the job's");
  fs.symlinkSync(path.join(outside, 'secret'), path.join(dir, 'link'));
  fs.symlinkSync(outside, path.join(dir, 'linked-dir'));
  fs.mkdirSync(path.join(dir, '.arch-after-checkpoint-0123456789abcdef'));
  write('.arch-after-checkpoint-0123456789abcdef/x', 'set aside before');
  const { files, nonFiles, more } = await recordClosedFiles(dir, new Set(['open.db']));
  expect(more).toBe(false);
  expect(files.map((f) => f.path).sort()).toEqual(['empty', 'results.csv', 'sub/steps.log']);
  // Directories and symlinks by their path (a symlink to a directory is not entered).
  expect(nonFiles.sort()).toEqual(['link', 'linked-dir', 'sub']);
  expect(files.find((f) => f.path === 'results.csv')).toEqual({
    path: 'results.csv',
    size: 4,
    ino: String(fs.statSync(path.join(dir, 'results.csv')).ino),
    tail: expect.stringMatching(/^[0-9a-f]{64}$/),
    mtimeNs: String(fs.statSync(path.join(dir, 'results.csv'), { bigint: true }).mtimeNs),
  });
});

test('at most `max` entries, directories included: more says some were left out', async () => {
  for (let i = 0; i < 5; i++) write(`f${i}`, 'x');
  const { files, more } = await recordClosedFiles(dir, new Set(), 3);
  expect([files.length, more]).toEqual([3, true]);
  for (let i = 0; i < 3; i++) fs.mkdirSync(path.join(dir, `d${i}`));
  const r = await recordClosedFiles(dir, new Set(), 7);
  expect([r.files.length + r.nonFiles.length, r.more]).toEqual([7, true]);
});

test('a restore cuts back only what was appended: a file rewritten, replaced, shorter or gone is left as it is', async () => {
  // Longer than the tail window: the bytes just before the recorded size are what is compared.
  const long = 'x'.repeat(TAIL_BYTES + 100);
  write('appended.log', `${long}1\n`);
  write('state.json', '{"step":1}');
  write('replaced.txt', 'one');
  write('shorter.txt', 'one two');
  write('gone.txt', 'one');
  const { files } = await recordClosedFiles(dir, new Set());
  append('appended.log', '2\n3\n');
  write('state.json', '{"step":12345}'); // rewritten whole, longer: its bytes at the old end differ
  fs.rmSync(path.join(dir, 'replaced.txt'));
  write('replaced.txt', 'one and more'); // another inode (the old one is free: the number may come back, so checked below)
  fs.truncateSync(path.join(dir, 'shorter.txt'), 3);
  fs.rmSync(path.join(dir, 'gone.txt'));
  const replacedSameIno =
    String(fs.statSync(path.join(dir, 'replaced.txt')).ino) === files.find((f) => f.path === 'replaced.txt')!.ino;
  const { cut, changed } = await cutAppendedFiles(dir, files);
  expect(cut).toEqual([
    { path: 'appended.log', from: long.length + 6, to: long.length + 2 },
    // A new file that took the old one's inode number and kept its first bytes looks appended to: cut the same.
    ...(replacedSameIno ? [{ path: 'replaced.txt', from: 12, to: 3 }] : []),
  ]);
  // Rewritten through their own inode: left as they are, and said.
  expect(changed).toEqual([
    { path: 'shorter.txt', from: 3, to: 7 },
    { path: 'state.json', from: 14, to: 10 },
  ]);
  expect([read('appended.log').slice(-2), read('state.json'), read('shorter.txt')]).toEqual([
    '1\n',
    '{"step":12345}',
    'one',
  ]);
  expect(fs.existsSync(path.join(dir, 'gone.txt'))).toBe(false);
});

test('a file rewritten to the same size since is said to have changed (its mtime); an untouched one is not', async () => {
  write('same.txt', 'abc');
  write('untouched.txt', 'abc');
  const { files } = await recordClosedFiles(dir, new Set());
  fs.writeFileSync(path.join(dir, 'same.txt'), 'xyz');
  fs.utimesSync(path.join(dir, 'same.txt'), new Date(), new Date(Date.now() + 5000)); // a clock tick apart
  expect(await cutAppendedFiles(dir, files)).toEqual({ cut: [], changed: [{ path: 'same.txt', from: 3, to: 3 }] });
  // A checkpoint from before mtimes were recorded: the same size says nothing.
  const old = files.map(({ mtimeNs: _m, ...f }) => f);
  expect(await cutAppendedFiles(dir, old)).toEqual({ cut: [], changed: [] });
});

test('a symlink put at a recorded name is not followed: its target is not cut', async () => {
  write('r.log', 'one\n');
  const { files } = await recordClosedFiles(dir, new Set());
  fs.writeFileSync(path.join(outside, 'victim'), 'one\nand the rest\n');
  fs.rmSync(path.join(dir, 'r.log'));
  fs.symlinkSync(path.join(outside, 'victim'), path.join(dir, 'r.log'));
  expect(await cutAppendedFiles(dir, files)).toEqual({ cut: [], changed: [] });
  expect(fs.readFileSync(path.join(outside, 'victim'), 'utf8')).toBe('one\nand the rest\n');
});

test('a checkpoint from before directories were recorded: only files are moved aside, directories stay', async () => {
  fs.mkdirSync(path.join(dir, 'out'));
  write('out/step-1.npy', 'one');
  write('progress.db', 'db');
  const { files } = await recordClosedFiles(dir, new Set(['progress.db']));
  const recorded = new Set([...files.map((f) => f.path), 'progress.db']);
  // The lost run: a step's output, a rollback journal left by a kill mid-transaction, a new directory.
  write('out/step-2.npy', 'two');
  write('progress.db-journal', 'hot');
  fs.mkdirSync(path.join(dir, 'later'));
  write('later/x', 'x');
  fs.writeFileSync(path.join(outside, 'not-the-jobs'), 'stays');
  fs.symlinkSync(outside, path.join(dir, 'link'));
  const aside = await setAsideNewFiles(dir, recorded);
  expect(aside.moved.sort()).toEqual(['later/x', 'out/step-2.npy', 'progress.db-journal']);
  expect(aside.to).toMatch(/^\.arch-after-checkpoint-[0-9a-f]{16}$/);
  expect(fs.readdirSync(path.join(dir, aside.to!)).sort()).toEqual([
    'later%2Fx',
    'out%2Fstep-2.npy',
    'progress.db-journal',
  ]);
  expect([read('out/step-1.npy'), read('progress.db')]).toEqual(['one', 'db']);
  expect(fs.existsSync(path.join(dir, 'progress.db-journal'))).toBe(false);
  expect(fs.readdirSync(outside)).toEqual(['not-the-jobs']);
  // Nothing new: no directory made.
  expect(await setAsideNewFiles(dir, new Set([...recorded]))).toEqual({ moved: [] });
});

test('with directories recorded: a directory the lost run made moves whole, a new symlink moves unfollowed, recorded ones stay', async () => {
  fs.mkdirSync(path.join(dir, 'out/1'), { recursive: true });
  write('out/1/sum', '1');
  fs.symlinkSync('out/1', path.join(dir, 'latest'));
  const { files, nonFiles } = await recordClosedFiles(dir, new Set());
  expect(nonFiles.sort()).toEqual(['latest', 'out', 'out/1']);
  // The lost run: its steps' directories (os.mkdir fails on one that is there), a symlink to one, an empty one.
  for (const step of [2, 3]) {
    fs.mkdirSync(path.join(dir, `out/${step}`));
    write(`out/${step}/sum`, String(step));
  }
  fs.symlinkSync(outside, path.join(dir, 'out/link'));
  fs.mkdirSync(path.join(dir, 'empty'));
  fs.writeFileSync(path.join(outside, 'not-the-jobs'), 'stays');
  const aside = await setAsideNewFiles(dir, new Set(files.map((f) => f.path)), new Set(nonFiles));
  expect(aside.moved.sort()).toEqual(['empty', 'out/2', 'out/3', 'out/link']);
  expect(fs.readdirSync(path.join(dir, aside.to!)).sort()).toEqual(['empty', 'out%2F2', 'out%2F3', 'out%2Flink']);
  expect(fs.readFileSync(path.join(dir, aside.to!, 'out%2F3/sum'), 'utf8')).toBe('3');
  expect(fs.readlinkSync(path.join(dir, aside.to!, 'out%2Flink'))).toBe(outside);
  expect(fs.readdirSync(path.join(dir, 'out')).sort()).toEqual(['1']);
  expect([read('out/1/sum'), fs.readlinkSync(path.join(dir, 'latest'))]).toEqual(['1', 'out/1']);
  expect(fs.readdirSync(outside)).toEqual(['not-the-jobs']);
});

describe('second names: what the lost run deleted, moved or replaced is put back', () => {
  /** A restore's roll-back of the closed files, as work-files.ts runs it: put back, then set aside. */
  const restore = (rec: Awaited<ReturnType<typeof recordClosedFiles>>) => {
    let back: ReturnType<typeof putBackFiles> = [];
    const aside = inPlace(dir, (root, into) => {
      back = putBackFiles(dir, root, into, rec.files, rec.links!, new Set(rec.nonFiles));
      setAsideIn(root, into, new Set(rec.files.map((f) => f.path)), new Set(rec.nonFiles));
    });
    return { back, aside };
  };

  test('a consumed input (deleted, or moved to done/) and a file replaced under its name come back as they were; what was there is set aside', async () => {
    fs.mkdirSync(path.join(dir, 'in'));
    fs.mkdirSync(path.join(dir, 'done'));
    for (const n of [1, 2, 3, 4]) write(`in/${n}`, `input ${n}`);
    write('model.bin', 'weights at the checkpoint');
    const rec = await recordClosedFiles(dir, new Set(), undefined, { links: true });
    expect(rec.links).toMatch(LINKS_NAME);
    // One link(2) per file, nothing copied: the same inode under a second name.
    expect(fs.statSync(path.join(dir, 'in/1')).nlink).toBe(2);
    expect(fs.readdirSync(path.join(dir, rec.links!)).sort()).toEqual(['0', '1', '2', '3', '4']);
    // The lost run: consumed inputs 1 and 2 (deleted, moved), replaced the model (written whole, renamed over).
    fs.rmSync(path.join(dir, 'in/1'));
    fs.renameSync(path.join(dir, 'in/2'), path.join(dir, 'done/2'));
    write('model.bin.tmp', 'weights of the lost run');
    fs.renameSync(path.join(dir, 'model.bin.tmp'), path.join(dir, 'model.bin'));
    const { back, aside } = restore(rec);
    expect(back.map((b) => b.path).sort()).toEqual(['in/1', 'in/2', 'model.bin']);
    expect([read('in/1'), read('in/2'), read('in/3'), read('model.bin')]).toEqual([
      'input 1',
      'input 2',
      'input 3',
      'weights at the checkpoint',
    ]);
    // The lost run's model and its done/2 moved aside, not deleted.
    expect(aside.moved.sort()).toEqual(['done/2', 'model.bin']);
    expect(fs.readFileSync(path.join(dir, aside.to!, 'model.bin'), 'utf8')).toBe('weights of the lost run');
    expect(fs.readdirSync(path.join(dir, 'done'))).toEqual([]);
  });

  test('a directory the lost run removed (after merging what it held) is made again, as the one it is in, for the files put back', async () => {
    fs.mkdirSync(path.join(dir, 'parts/a'), { recursive: true });
    fs.chmodSync(path.join(dir, 'parts'), 0o751);
    write('parts/a/1', 'one');
    write('parts/a/2', 'two');
    const rec = await recordClosedFiles(dir, new Set(), undefined, { links: true });
    fs.rmSync(path.join(dir, 'parts/a'), { recursive: true });
    const { back } = restore(rec);
    expect(back.map((b) => b.path).sort()).toEqual(['parts/a/1', 'parts/a/2']);
    expect([read('parts/a/1'), read('parts/a/2')]).toEqual(['one', 'two']);
    expect(fs.statSync(path.join(dir, 'parts/a')).mode & 0o777).toBe(0o751);
  });

  test('a second name that is not the recorded file any more (rewritten in place, or another file put there) is not used', async () => {
    write('a.txt', 'one');
    write('b.txt', 'two');
    const rec = await recordClosedFiles(dir, new Set(), undefined, { links: true });
    // a.txt rewritten through its own inode (the second name sees it), then deleted; b.txt's second name swapped.
    fs.writeFileSync(path.join(dir, 'a.txt'), 'ONE');
    fs.rmSync(path.join(dir, 'a.txt'));
    fs.rmSync(path.join(dir, 'b.txt'));
    fs.rmSync(path.join(dir, rec.links!, '1'));
    fs.writeFileSync(path.join(dir, rec.links!, '1'), 'TWO'); // (it may get b.txt's freed inode number: its bytes differ)
    expect(restore(rec).back).toEqual([]);
    expect(fs.existsSync(path.join(dir, 'a.txt')) || fs.existsSync(path.join(dir, 'b.txt'))).toBe(false);
  });

  test('a symlink planted at the second names or on the way to a file is not followed', async () => {
    fs.mkdirSync(path.join(dir, 'sub'));
    write('sub/x', 'x');
    const rec = await recordClosedFiles(dir, new Set(), undefined, { links: true });
    // The lost run replaced sub by a symlink to a directory outside: x is not put back through it.
    fs.renameSync(path.join(dir, 'sub'), path.join(dir, 'moved'));
    fs.symlinkSync(outside, path.join(dir, 'sub'));
    expect(restore(rec).back).toEqual([]);
    expect(fs.readdirSync(outside)).toEqual([]);
  });

  test('the newest `keep` link sets are kept, older ones let go; one not published is removed', async () => {
    write('a.txt', 'a');
    const sets: string[] = [];
    for (let i = 0; i < 4; i++) {
      sets.push((await recordClosedFiles(dir, new Set(), undefined, { links: true })).links!);
      await new Promise((r) => setTimeout(r, 2)); // names are by the millisecond
    }
    pruneLinks(dir, 2);
    expect(fs.readdirSync(dir).filter((n) => LINKS_NAME.test(n))).toEqual(sets.slice(2));
    dropLinks(dir, sets[3]!);
    expect(fs.readdirSync(dir).filter((n) => LINKS_NAME.test(n))).toEqual([sets[2]]);
    expect(fs.statSync(path.join(dir, 'a.txt')).nlink).toBe(2);
    // What the job could plant at a link set's name, or in one, is never followed.
    fs.writeFileSync(path.join(outside, 'keep'), 'stays');
    fs.mkdirSync(path.join(outside, 'sub'));
    fs.writeFileSync(path.join(outside, 'sub/keep'), 'stays');
    fs.symlinkSync(outside, path.join(dir, '.arch-checkpoint-files-0000000000001-00000000'));
    fs.symlinkSync(outside, path.join(dir, sets[2]!, 'planted'));
    fs.mkdirSync(path.join(dir, sets[2]!, 'made'));
    fs.symlinkSync(path.join(outside, 'sub'), path.join(dir, sets[2]!, 'made', 'link'));
    pruneLinks(dir, 0);
    expect(fs.readdirSync(dir).filter((n) => LINKS_NAME.test(n))).toEqual([sets[2]]); // what the job made in it stays
    expect(fs.readdirSync(path.join(dir, sets[2]!))).toEqual(['made']);
    expect([
      fs.readFileSync(path.join(outside, 'keep'), 'utf8'),
      fs.readFileSync(path.join(outside, 'sub/keep'), 'utf8'),
    ]).toEqual(['stays', 'stays']);
    expect(fs.statSync(path.join(dir, 'a.txt')).nlink).toBe(1);
  });
});
