import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { checkpointContainer } from '../../core/checkpoint.js';
import { CONTENT_IMAGE_PATH } from '../../core/checkpoint-layout.js';
import { startArchNode, waitFor, type ArchTestNode } from '../support/arch-node.js';
import { cleanupStaleNodes, stopAllNodes } from '../support/containerd-node.js';
import { COUNTER_FILES } from '../support/images.js';

/**
 * What a job holds in its open files besides their contents, on real runc,
 * CRIU and containerd.
 *
 * A job that holds a file open after deleting it (a temporary file, a spill
 * file: Python's tempfile.TemporaryFile) has that file nowhere but in itself.
 * CRIU copies it into the dump as a ghost file, and refused the whole dump
 * when one was larger than 1 MiB: such a job could not be checkpointed, and
 * a reclaim lost it. On real runc, CRIU and containerd, with each store
 * format: the checkpoint holds the file's contents (encrypted where the
 * store is, never in plaintext), and the restored job reads them back whole.
 */
let storage: string;
const nodes: Record<string, ArchTestNode> = {};
const MB = 6; // above CRIU's default ghost limit (1 MiB)
/** The counter's first ghost line (counter.c): plaintext of the file, to look for in the store. */
const MARKER = Buffer.from('arch ghost line 00000001\n');

beforeAll(async () => {
  await cleanupStaleNodes();
  storage = fs.mkdtempSync('/tmp/arch-ghost-');
  const key = path.join(storage, 'store.key');
  fs.writeFileSync(key, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  nodes.plain = await startArchNode('ghost-1');
  nodes.sealed = await startArchNode('ghost-1k', { ARCH_STORE_KEY_FILE: key });
  nodes.chunked = await startArchNode('ghost-2k', { ARCH_STORE_FORMAT: '2', ARCH_STORE_KEY_FILE: key });
});

afterAll(async () => {
  await stopAllNodes();
  if (storage) fs.rmSync(storage, { recursive: true, force: true });
});

/** Whether any file below dir holds `bytes`. */
function holds(dir: string, bytes: Buffer): boolean {
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && fs.readFileSync(path.join(e.parentPath, e.name)).includes(bytes)) return true;
  }
  return false;
}

const printed = (out: string, what: string) =>
  waitFor(`"${what}" in ${path.basename(out)}`, () => (fs.readFileSync(out, 'utf8').includes(what) ? true : undefined));

/** A checkpoint that stops the job, then the container removed, as a reclaim leaves it. */
async function checkpointAndRemove(node: ArchTestNode, id: string) {
  const res = await checkpointContainer(node.ctx, { namespace: 'default', id, runcRoot: node.runcRoot('default') });
  await node.containerd.waitStatus(id, 'STOPPED', 15_000);
  await node.containerd.removeContainer(id);
  return res;
}

/**
 * The container created again with `env`, which lacks what made the job
 * print "<check> ok" at its start: only the restored job prints it. Removed after.
 */
async function expectRestoredPrinting(node: ArchTestNode, id: string, env: string[], check: string): Promise<void> {
  const out = await node.runCounter(id, env);
  await printed(out, `${check} ok`);
  expect(fs.readFileSync(out, 'utf8')).not.toMatch(new RegExp(`${check} FAIL|counter start`));
  expect(node.readContainerFile(id, COUNTER_FILES.starts).trim().split('\n')).toHaveLength(1);
  await node.containerd.taskKill(id, 'SIGKILL');
  await node.containerd.waitStatus(id, 'STOPPED', 15_000);
  await node.containerd.removeContainer(id);
}

test.each([
  ['store format 1', 'plain', '/tmp/spill'],
  ['store format 1, a file in /dev/shm', 'plain', '/dev/shm/spill'],
  ['store format 1, encrypted', 'sealed', '/tmp/spill'],
  ['store format 2, encrypted', 'chunked', '/tmp/spill'],
])('%s: a deleted file the job holds open comes back whole', async (_what, which, file) => {
  const node = nodes[which]!;
  const id = `ghost-${which}-${file.split('/')[1]}`;
  const store = path.join(storage, 'ck', which);
  const env = ['ARCH_ENABLE=1', `ARCH_CHECKPOINT_HOST_PATH=${store}`, 'COUNTER_VERIFY_EVERY=3'];
  const out1 = await node.runCounter(id, [...env, `COUNTER_GHOST=${file}`, `COUNTER_GHOST_MB=${MB}`]);
  await printed(out1, 'ghostcheck ok');

  const res = await checkpointAndRemove(node, id);
  // The file's contents are in the checkpoint, as CRIU's ghost file image; sealed or chunked where the store is encrypted.
  const m = res.manifest;
  const ghosts = [...m.files, ...(m.chunked?.files ?? [])].filter(
    (f) => CONTENT_IMAGE_PATH.test(f.path) && f.path.includes('ghost-file-'),
  );
  expect(ghosts.length).toBe(1);
  if (which === 'sealed') expect(m.seal?.files.map((f) => f.path)).toContain(ghosts[0]!.path);
  if (which === 'chunked') expect(m.chunked?.files.map((f) => f.path)).toContain(ghosts[0]!.path);
  expect(holds(store, MARKER)).toBe(which === 'plain');

  // Created again without COUNTER_GHOST: a fresh start would never print a ghost check.
  await expectRestoredPrinting(node, id, env, 'ghostcheck');
});

/**
 * A job that holds locks on a file (a lock file for the whole run, HDF5's
 * flock on an open file, SQLite's record locks) could not be checkpointed:
 * CRIU refuses a dump with file locks unless told to take them. They come
 * back held by the restored job, so no second copy can take them meanwhile.
 */
test('flock and record locks the job holds come back held', async () => {
  const node = nodes.plain!;
  const id = 'locks';
  const env = [
    'ARCH_ENABLE=1',
    `ARCH_CHECKPOINT_HOST_PATH=${path.join(storage, 'ck', 'locks')}`,
    'COUNTER_VERIFY_EVERY=3',
  ];
  const out1 = await node.runCounter(id, [...env, 'COUNTER_LOCK=/state/job.lock']);
  await printed(out1, 'lockcheck ok');
  await checkpointAndRemove(node, id);
  // Created again without COUNTER_LOCK: a fresh start would never print a lock check.
  await expectRestoredPrinting(node, id, env, 'lockcheck');
});
