import { execFileSync } from 'node:child_process';
import type { OciSpec } from '../../core/oci-spec.js';
import { existingNetworkNamespace, freeListenerPorts } from '../../core/time-wait.js';

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
