import { execa } from 'execa';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { criuSearchPath } from '../../core/criu-path.js';
import { criuEnv } from '../../core/settings.js';

/**
 * The gzip that CRIU's tar finds first (shim/criu-gzip.c), run as CRIU runs
 * it (`tar --create --gzip` and `tar --extract --gzip` with ARCH's PATH),
 * against the system's tar and gzip: what it writes, any gzip reads; what
 * any gzip wrote, it reads; bad input fails as gzip fails.
 */
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-criu-gzip-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const ARCH_PATH = { PATH: criuSearchPath() };
const helper = () => path.join(criuSearchPath().split(':')[0]!, 'gzip');
const TEXT = 'a line of a tmpfs file\n'.repeat(50_000);

/** A directory as a tmpfs might hold it: text, random data, an empty file. */
function tree(): { root: string; files: Record<string, Buffer> } {
  const root = path.join(dir, 'tree');
  fs.mkdirSync(path.join(root, 'sub'), { recursive: true });
  const files: Record<string, Buffer> = {
    'text.txt': Buffer.from(TEXT),
    'sub/random.bin': crypto.randomBytes(3 * 1024 * 1024 + 17),
    empty: Buffer.alloc(0),
  };
  for (const [rel, data] of Object.entries(files)) fs.writeFileSync(path.join(root, rel), data);
  return { root, files };
}

function expectTree(root: string, files: Record<string, Buffer>): void {
  for (const [rel, data] of Object.entries(files))
    expect(fs.readFileSync(path.join(root, rel)).equals(data)).toBe(true);
}

test("CRIU's PATH starts with the helper's directory, then the caller's (runc's default without one)", () => {
  expect(fs.statSync(helper()).mode & 0o111).not.toBe(0);
  expect(criuSearchPath('/usr/bin:/bin')).toBe(`${path.dirname(helper())}:/usr/bin:/bin`);
  expect(criuSearchPath('')).toMatch(/:\/usr\/local\/sbin:\/usr\/local\/bin:\/usr\/sbin:\/usr\/bin:\/sbin:\/bin$/);
  expect(criuEnv({ criuNoBreakpoints: false }).PATH).toBe(criuSearchPath());
});

test('tar --create --gzip through it: stored blocks (the text is there as it is), and the system tar and gzip read it', async () => {
  const { root, files } = tree();
  const archive = path.join(dir, 'a.tar.gz');
  await execa('sh', ['-c', `tar --create --gzip --directory ${root} . > ${archive}`], { env: ARCH_PATH });
  const bytes = fs.readFileSync(archive);
  expect(bytes.subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
  expect(bytes.includes(TEXT.slice(0, 4096))).toBe(true);
  await execa('gzip', ['--test', archive]); // the system's gzip checks it (CRC, length)
  const out = path.join(dir, 'out');
  fs.mkdirSync(out);
  await execa('tar', ['--extract', '--gzip', '--directory', out, '--file', archive], {
    env: { PATH: '/usr/bin:/bin' },
  });
  expectTree(out, files);
});

test("tar --extract --gzip through it: an archive the system's gzip compressed, and one of several members", async () => {
  const { root, files } = tree();
  const archive = path.join(dir, 'sys.tar.gz');
  await execa('tar', ['--create', '--gzip', '--directory', root, '--file', archive, '.'], {
    env: { PATH: '/usr/bin:/bin' },
  });
  expect(fs.statSync(archive).size).toBeLessThan(files['sub/random.bin']!.length + TEXT.length / 10); // really compressed
  const out = path.join(dir, 'out');
  fs.mkdirSync(out);
  await execa('sh', ['-c', `tar --extract --gzip --directory ${out} < ${archive}`], { env: ARCH_PATH });
  expectTree(out, files);

  const two = path.join(dir, 'two.gz');
  await execa('sh', ['-c', `(printf one | gzip; printf two | ${helper()}) > ${two}`]);
  expect((await execa(helper(), ['-d'], { inputFile: two })).stdout).toBe('onetwo');
});

test("gzip -d after a member: zeros are padding (CRIU archives a user namespace's tmpfs so), other bytes are garbage", async () => {
  const member = (await execa('gzip', ['-c'], { input: 'member\n', encoding: 'buffer' })).stdout;
  const padded = Buffer.concat([member, Buffer.alloc(20480 - member.length)]); // a whole tar record
  expect(await execa(helper(), ['-d'], { input: padded })).toMatchObject({ exitCode: 0, stdout: 'member' });
  const garbage = await execa(helper(), ['-d'], { input: Buffer.concat([member, Buffer.from('junk')]), reject: false });
  const system = await execa('gzip', ['-d'], { input: Buffer.concat([member, Buffer.from('junk')]), reject: false });
  expect({ exitCode: garbage.exitCode, stdout: garbage.stdout, stderr: garbage.stderr }).toEqual({
    exitCode: system.exitCode,
    stdout: 'member',
    stderr: 'gzip: stdin: decompression OK, trailing garbage ignored',
  });
});

test.each([
  ['empty input', Buffer.alloc(0), /^gzip: stdin: unexpected end of file/],
  ['not gzip', Buffer.from('not a gzip stream\n'), /^gzip: stdin: incorrect header check/],
  ['cut short', 'cut', /^gzip: stdin: unexpected end of file/],
  ['a damaged byte', 'damaged', /^gzip: stdin: (invalid|incorrect)/],
] as const)('gzip -d of %s fails as gzip does: status 1 and the reason', async (_what, input, reason) => {
  let data: Buffer;
  if (typeof input !== 'string') data = input;
  else {
    const whole = (await execa(helper(), [], { input: TEXT, encoding: 'buffer' })).stdout;
    data = Buffer.from(input === 'cut' ? whole.subarray(0, whole.length / 2) : whole);
    if (input === 'damaged') data[data.length - 5] = data[data.length - 5]! ^ 0xff; // the trailer's CRC
  }
  const r = await execa(helper(), ['-d'], { input: data, reject: false });
  expect({ exitCode: r.exitCode, stderr: r.stderr }).toEqual({ exitCode: 1, stderr: expect.stringMatching(reason) });
});

test("any other use is the system's gzip", async () => {
  const mine = await execa(helper(), ['--version']);
  const system = await execa('gzip', ['--version']);
  expect(mine.stdout).toBe(system.stdout);
  const r = await execa(helper(), ['-9', '-c'], { input: TEXT, encoding: 'buffer' });
  expect(r.stdout.length).toBeLessThan(TEXT.length / 100); // compressed, as -9 asks
  expect((await execa('gzip', ['-d', '-c'], { input: r.stdout })).stdout).toBe(TEXT.trimEnd());
});
