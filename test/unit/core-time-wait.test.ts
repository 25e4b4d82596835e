import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { OciSpec } from '../../core/oci-spec.js';
import { existingNetworkNamespace, freeListenerPorts, tcpListenPorts } from '../../core/time-wait.js';

/**
 * TIME_WAIT entries on a port, made as a stopped job leaves them: a listener
 * whose accepted connection closed first (its end waits), in the host's
 * network namespace and in one this test makes (as a pod's is).
 */
const NETNS = `arch-tw-${process.pid}`;

beforeAll(() => {
  execFileSync('ip', ['netns', 'add', NETNS]);
  execFileSync('ip', ['netns', 'exec', NETNS, 'ip', 'link', 'set', 'lo', 'up']);
});
afterAll(() => {
  execFileSync('ip', ['netns', 'del', NETNS]);
});

/** A port with one TIME_WAIT entry on it and nothing listening (python3 in `netns`, else here); returns the port. */
function timeWaitPort(netns?: string): number {
  const py = [
    'import socket, time',
    "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1); port = l.getsockname()[1]",
    "c = socket.socket(); c.connect(('127.0.0.1', port)); s, _ = l.accept()",
    's.close(); time.sleep(0.05); c.close(); l.close()', // the accepted end closes first: it waits
    'print(port)',
  ];
  const args = ['-c', py.join('\n')];
  const out = netns
    ? execFileSync('ip', ['netns', 'exec', netns, 'python3', ...args], { encoding: 'utf8' })
    : execFileSync('python3', args, { encoding: 'utf8' });
  return Number(out.trim());
}

function timeWaits(port: number, netns?: string): number {
  const ss = ['ss', '-H', '-tan', 'state', 'time-wait', '(', 'sport', '=', `:${port}`, ')'];
  const out = netns
    ? execFileSync('ip', ['netns', 'exec', netns, ...ss], { encoding: 'utf8' })
    : execFileSync(ss[0]!, ss.slice(1), { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.trim()).length;
}

const spec = (network?: { path?: string }): OciSpec =>
  ({ linux: { namespaces: [{ type: 'pid' }, ...(network ? [{ type: 'network', ...network }] : [])] } }) as OciSpec;

test("the host's network namespace: the TIME_WAIT entry on the listener's port is removed", async () => {
  const port = timeWaitPort();
  expect(timeWaits(port)).toBe(1);
  const waits: number[] = [];
  expect(await freeListenerPorts(spec(), [port], (n) => waits.push(n))).toEqual({
    ports: [port],
    found: 1,
    waitedMs: expect.any(Number),
  });
  expect(waits).toEqual([]); // removed at once: nothing to wait out on this kernel
  expect(timeWaits(port)).toBe(0);
});

test("a pod's network namespace (named by path): removed there, through nsenter", async () => {
  const port = timeWaitPort(NETNS);
  expect(timeWaits(port, NETNS)).toBe(1);
  expect(await freeListenerPorts(spec({ path: `/run/netns/${NETNS}` }), [port], () => undefined)).toMatchObject({
    found: 1,
  });
  expect(timeWaits(port, NETNS)).toBe(0);
});

test('nothing to do: a new network namespace, no listener, or no TIME_WAIT on its port', async () => {
  expect(existingNetworkNamespace(spec({}))).toBeUndefined();
  expect(existingNetworkNamespace(spec())).toEqual({ prefix: [] });
  expect(existingNetworkNamespace(spec({ path: '/proc/1/ns/net' }))).toEqual({
    prefix: ['nsenter', '--net=/proc/1/ns/net'],
  });
  const port = timeWaitPort();
  expect(await freeListenerPorts(spec({}), [port], () => undefined)).toBeUndefined();
  expect(timeWaits(port)).toBe(1); // a new namespace's restore leaves the host's entries alone
  expect(await freeListenerPorts(spec(), [], () => undefined)).toBeUndefined();
  expect(await freeListenerPorts(spec(), [port], () => undefined)).toMatchObject({ found: 1 });
  expect(await freeListenerPorts(spec(), [port], () => undefined)).toBeUndefined();
});

test("the listener ports come from the checkpoint's files.img, never through a symlink there", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-tw-img-'));
  try {
    expect(await tcpListenPorts(dir)).toEqual([]);
    // files.img as CRIU writes it: IMG_COMMON_MAGIC, FILES_MAGIC, then a FileEntry (type, id) holding an
    // InetSkEntry with proto TCP (6), state LISTEN (10) and src_port 8080.
    const isk = [0x28, 0x06, 0x30, 0x0a, 0x38, 0x90, 0x3f];
    const entry = Buffer.from([0x08, 0x02, 0x10, 0x05, 0x22, isk.length, ...isk]);
    const img = Buffer.concat([Buffer.from([0x19, 0x43, 0x56, 0x54, 0x38, 0x31, 0x30, 0x56]), Buffer.alloc(4), entry]);
    img.writeUInt32LE(entry.length, 8);
    const real = path.join(dir, 'real');
    fs.mkdirSync(real);
    fs.writeFileSync(path.join(real, 'files.img'), img);
    expect(await tcpListenPorts(real)).toEqual([8080]);
    // A store writer's link to that file is not followed (the store is written by others).
    const linked = path.join(dir, 'linked');
    fs.mkdirSync(linked);
    fs.symlinkSync(path.join(real, 'files.img'), path.join(linked, 'files.img'));
    expect(await tcpListenPorts(linked)).toEqual([]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
