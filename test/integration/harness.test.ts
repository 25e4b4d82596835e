import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { decodeRuncOptions, parseTaskList, type Containerd } from '../../core/containerd.js';
import { readLogLines, writeArchConfig } from '../support/arch-env.js';
import { cleanupStaleNodes, mountsUnder, startNode, stopAllNodes, type TestNode } from '../support/containerd-node.js';
import { COUNTER_FILES, ensureTestImage, testWorkDir } from '../support/images.js';

/**
 * The test infrastructure itself, on the real stack: private containerd
 * nodes, the self-built counter image, plain runc (no ARCH wrapper).
 */

async function waitFor<T>(
  what: string,
  fn: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch {
      // not there yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** The counter's current value, read through the container's rootfs. */
function count(node: TestNode, id: string): number {
  return Number(node.readContainerFile(id, COUNTER_FILES.count).trim());
}

async function waitCount(node: TestNode, id: string, atLeast: number): Promise<number> {
  return waitFor(`${node.name}/${id} count >= ${atLeast}`, () => {
    const n = count(node, id);
    return n >= atLeast ? n : undefined;
  });
}

async function runCounter(node: TestNode, id: string, env: string[] = []): Promise<string> {
  const image = await ensureTestImage(node.containerd);
  const logFile = path.join(node.dir, `${id}.out`);
  await node.containerd.run({ image, id, env, logFile, detach: true });
  return logFile;
}

beforeAll(async () => {
  await cleanupStaleNodes();
});

afterAll(async () => {
  await stopAllNodes();
});

describe('ctr output parsing', () => {
  test('task list', () => {
    const out = 'TASK    PID      STATUS    \nc1      11933    RUNNING\nc2      0        STOPPED\n';
    expect(parseTaskList(out)).toEqual([
      { id: 'c1', pid: 11933, status: 'RUNNING' },
      { id: 'c2', pid: 0, status: 'STOPPED' },
    ]);
  });
  test('runc runtime options (protobuf Any from ctr c info)', () => {
    // BinaryName=/usr/local/bin/arch-runc (field 6), Root=/run/x (field 7), SystemdCgroup (field 9).
    const bin = Buffer.from('/usr/local/bin/arch-runc');
    const root = Buffer.from('/run/x');
    const value = Buffer.concat([
      Buffer.from([0x32, bin.length]),
      bin,
      Buffer.from([0x3a, root.length]),
      root,
      Buffer.from([0x48, 1]),
    ]);
    expect(decodeRuncOptions({ type_url: 'containerd.runc.v1.Options', value: value.toString('base64') })).toEqual({
      BinaryName: '/usr/local/bin/arch-runc',
      Root: '/run/x',
      SystemdCgroup: true,
    });
    expect(decodeRuncOptions(null)).toBeUndefined();
  });
});

describe('test harness', () => {
  test('one node: image, counter with plain runc, files, removal, stop', async () => {
    const node = await startNode('harness-a');
    const cd: Containerd = node.containerd;
    const logFile = await runCounter(node, 'counter', ['COUNTER_START_FILES=1']);

    const task = await cd.waitStatus('counter', 'RUNNING', 10_000);
    expect(task?.pid).toBeGreaterThan(1);
    const first = await waitCount(node, 'counter', 3);
    const later = await waitCount(node, 'counter', first + 2);
    expect(later).toBeGreaterThan(first);

    // stdout reaches the --log-uri file; stdio stays pipes (what CRIU needs).
    const out = await waitFor('counter output', () => {
      const text = fs.readFileSync(logFile, 'utf8');
      return text.includes('count 2\n') ? text : undefined;
    });
    expect(out).toMatch(/^counter start pid=1 /);
    expect(fs.readlinkSync(`/proc/${task!.pid}/fd/1`)).toMatch(/^pipe:/);

    // Files the counter creates, changes and deletes in its writable layer.
    expect(node.readContainerFile('counter', COUNTER_FILES.created)).toBe(COUNTER_FILES.createdContent);
    expect(node.readContainerFile('counter', COUNTER_FILES.nested)).toBe(COUNTER_FILES.nestedContent);
    expect(node.readContainerFile('counter', COUNTER_FILES.modified)).toBe(COUNTER_FILES.modifiedContent);
    expect(() => node.readContainerFile('counter', COUNTER_FILES.deleted)).toThrow(/ENOENT/);
    expect(node.readContainerFile('counter', COUNTER_FILES.starts)).toBe('start\n');

    // The container record carries this node's runc root and cgroup.
    const info = await cd.info('counter');
    expect(info.image).toBe('localhost/arch-test/counter:1');
    expect(info.runtime.options?.Root).toBe(node.runcRootBase);
    expect(info.spec.linux?.cgroupsPath).toBe(`${node.cgroupParent}/default/counter`);
    expect(info.spec.process?.env).toContain('COUNTER_START_FILES=1');
    expect(fs.existsSync(path.join(node.runcRoot('default'), 'counter', 'state.json'))).toBe(true);
    expect(await cd.listContainers()).toEqual(['counter']);

    await cd.removeContainer('counter');
    expect(await cd.listContainers()).toEqual([]);
    expect(await cd.task('counter')).toBeUndefined();
    expect(fs.existsSync(`/proc/${task!.pid}`)).toBe(false);
    await cd.removeContainer('counter'); // tolerant of "not found"
    await expect(cd.info('counter')).rejects.toThrow(/not found/);

    const pid = node.pid!;
    await node.stop();
    expect(
      fs.existsSync(`/proc/${pid}/cmdline`) &&
        fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(node.configFile),
    ).toBe(false);
    expect(mountsUnder(node.dir)).toEqual([]);
    expect(fs.existsSync(node.dir)).toBe(false);
  });

  test('two nodes run the same container id side by side', async () => {
    const [a, b] = await Promise.all([startNode('harness-a'), startNode('harness-b')]);
    await Promise.all([runCounter(a, 'same'), runCounter(b, 'same', ['COUNTER_INTERVAL_MS=50'])]);
    const [ta, tb] = await Promise.all([
      a.containerd.waitStatus('same', 'RUNNING'),
      b.containerd.waitStatus('same', 'RUNNING'),
    ]);
    expect(ta!.pid).not.toBe(tb!.pid);
    await Promise.all([waitCount(a, 'same', 3), waitCount(b, 'same', 3)]);
    expect(a.runcRoot()).not.toBe(b.runcRoot());
    expect(fs.existsSync(path.join(a.runcRoot(), 'same'))).toBe(true);
    expect(fs.existsSync(path.join(b.runcRoot(), 'same'))).toBe(true);

    // Removing it on A leaves B's untouched.
    await a.containerd.removeContainer('same');
    expect(await a.containerd.task('same')).toBeUndefined();
    const bNow = count(b, 'same');
    await waitCount(b, 'same', bNow + 3);
    expect((await b.containerd.task('same'))?.status).toBe('RUNNING');

    await Promise.all([a.stop(), b.stop()]);
    expect(fs.existsSync(`/proc/${tb!.pid}`)).toBe(false);
  });

  test('kill() loses the node like a crash; stop() still cleans up', async () => {
    const node = await startNode('harness-c', { criuNoBreakpoints: true });
    await runCounter(node, 'victim');
    const t = await node.containerd.waitStatus('victim', 'RUNNING');
    await waitCount(node, 'victim', 2);
    const shimSocket = fs
      .readFileSync(path.join(node.bundleDir('victim'), 'address'), 'utf8')
      .replace(/^unix:\/\//, '')
      .trim();
    expect(fs.existsSync(shimSocket)).toBe(true);
    await node.kill();
    expect(node.pid).toBeUndefined();
    await waitFor('container process gone', () =>
      fs.existsSync(`/proc/${t!.pid}/cmdline`) && fs.readFileSync(`/proc/${t!.pid}/cmdline`, 'utf8') ? undefined : true,
    );
    expect(mountsUnder(node.dir).length).toBeGreaterThan(0); // a dead machine unmounts nothing
    await node.stop();
    expect(mountsUnder(node.dir)).toEqual([]);
    expect(fs.existsSync(node.dir)).toBe(false);
    expect(fs.existsSync(shimSocket)).toBe(false);
  });

  test('plain runc checkpoint through ctr (CRIU 4, no breakpoints)', async () => {
    const node = await startNode('harness-d', { criuNoBreakpoints: true });
    await runCounter(node, 'ck', ['COUNTER_MEM_MB=8']);
    await waitCount(node, 'ck', 2);
    const imagePath = path.join(node.dir, 'ck-image');
    await node.containerd.taskCheckpoint('ck', { imagePath, workPath: path.join(node.dir, 'ck-work'), exit: true });
    expect(fs.readdirSync(imagePath)).toContain('inventory.img');
    expect((await node.containerd.task('ck'))?.status).toBe('STOPPED');
    await node.stop();
  });
});

describe('arch-env', () => {
  test('writes a config file and reads JSON log lines', () => {
    const dir = testWorkDir('harness-arch-env');
    const file = writeArchConfig(dir, { ARCH_NODE_NAME: 'n1', ARCH_LOG_LEVEL: undefined, ARCH_EXTRA: 'a b' });
    const text = fs.readFileSync(file, 'utf8');
    expect(text).toMatch(/^ARCH_RUNC=\/.*runc$/m);
    expect(text).toMatch(/^ARCH_CRIU=\S+criu$/m);
    expect(text).toContain('ARCH_CRIU_NO_BREAKPOINTS=1\n');
    expect(text).toContain(`ARCH_LOG_FILE=${dir}/arch.log\n`);
    expect(text).toContain('ARCH_NODE_NAME=n1\n');
    expect(text).toContain("ARCH_EXTRA='a b'\n");
    expect(text).not.toContain('ARCH_LOG_LEVEL');
    expect(text).toMatch(/^ARCH_HOME=\/.+$/m);
    expect(fs.existsSync(path.join(text.match(/^ARCH_HOME=(.+)$/m)![1]!, 'package.json'))).toBe(true);
    fs.writeFileSync(path.join(dir, 'arch.log'), '{"msg":"a","level":30}\nnot json\n{"msg":"b"}\n{"partial":');
    expect(readLogLines(path.join(dir, 'arch.log')).map((l) => l.msg)).toEqual(['a', 'b']);
    expect(readLogLines(path.join(dir, 'missing.log'))).toEqual([]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
