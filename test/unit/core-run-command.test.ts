import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { binaryKey, cachedBinaryFact } from '../../core/binary-facts.js';
import { CommandError, runCommand } from '../../core/run-command.js';

/**
 * core/run-command.ts runs runc, CRIU and getfattr for the node's hot paths
 * (real processes here), and core/binary-facts.ts keeps what a binary says
 * about itself per binary identity and boot.
 */
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-run-command-unit-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('runCommand', () => {
  test('collects stdout and stderr, with the environment added to this one', async () => {
    const r = await runCommand('sh', ['-c', 'echo "out $X $HOME"; echo err >&2'], { env: { X: 'x' } });
    expect(r).toMatchObject({ stdout: `out x ${process.env.HOME}`, stderr: 'err', exitCode: 0, signal: null });
  });

  test("a failure says the command and what it printed, as execa's did", async () => {
    const err = (await runCommand('sh', ['-c', 'echo no such container >&2; exit 3']).catch(
      (e: unknown) => e,
    )) as CommandError;
    expect(err).toBeInstanceOf(CommandError);
    expect(err.message).toBe(
      'Command failed with exit code 3: sh -c echo no such container >&2; exit 3\n\nno such container',
    );
    expect(err.result.exitCode).toBe(3);
  });

  test('reject: false resolves a failure, and a program that is not there', async () => {
    expect(await runCommand('sh', ['-c', 'exit 2'], { reject: false })).toMatchObject({ exitCode: 2 });
    const missing = await runCommand(path.join(tmp, 'not-there'), [], { reject: false });
    expect(missing.exitCode).toBeNull();
    expect(missing.stderr).toMatch(/ENOENT/);
    await expect(runCommand(path.join(tmp, 'not-there'), [])).rejects.toThrow(/ENOENT/);
  });

  test('an abort sends the kill signal; a program ignoring it gets SIGKILL after forceKillAfterMs', async () => {
    const ac = new AbortController();
    const polite = runCommand('sleep', ['30'], { signal: ac.signal, killSignal: 'SIGTERM' });
    setTimeout(() => ac.abort(), 100);
    await expect(polite).rejects.toThrow(/killed with SIGTERM/);
    const stubborn = new AbortController();
    const t0 = Date.now();
    const r = runCommand('sh', ['-c', 'trap "" TERM; while :; do sleep 0.05; done'], {
      signal: stubborn.signal,
      forceKillAfterMs: 300,
    });
    setTimeout(() => stubborn.abort(), 100);
    await expect(r).rejects.toThrow(/killed with SIGKILL/);
    expect(Date.now() - t0).toBeLessThan(20_000);
  });
});

describe('cachedBinaryFact', () => {
  test('asked once per binary identity; a replaced binary or a damaged answer is asked again', async () => {
    const bin = path.join(tmp, 'tool');
    const cache = path.join(tmp, 'facts', 'versions.json');
    fs.writeFileSync(bin, '#!/bin/sh\necho 1\n', { mode: 0o755 });
    let asked = 0;
    const ask = async () => `v${++asked}`;
    const valid = (v: string) => v.startsWith('v');
    expect(await cachedBinaryFact(bin, cache, ask, valid)).toBe('v1');
    expect(await cachedBinaryFact(bin, cache, ask, valid)).toBe('v1');
    expect(asked).toBe(1);
    expect(fs.statSync(cache).mode & 0o777).toBe(0o600);
    // An upgrade: a new file renamed over the old one (a new inode), same size and maybe the same mtime.
    const next = `${bin}.new`;
    fs.writeFileSync(next, '#!/bin/sh\necho 2\n', { mode: 0o755 });
    fs.renameSync(next, bin);
    expect(await cachedBinaryFact(bin, cache, ask, valid)).toBe('v2');
    // An answer the caller does not accept is not trusted.
    const key = (await binaryKey(bin))!;
    fs.writeFileSync(cache, JSON.stringify({ [key]: 'garbage' }));
    expect(await cachedBinaryFact(bin, cache, ask, valid)).toBe('v3');
    fs.writeFileSync(cache, '{not json');
    expect(await cachedBinaryFact(bin, cache, ask, valid)).toBe('v4');
    expect(JSON.parse(fs.readFileSync(cache, 'utf8'))).toEqual({ [key]: 'v4' });
  });

  test('a bare name is found on PATH, as exec finds it', async () => {
    const key = await binaryKey('sh');
    expect(key).toMatch(/:\/(usr\/)?bin\/sh:\d+:\d+:/);
    expect(await binaryKey('arch-no-such-binary-anywhere')).toBeUndefined();
  });
});
