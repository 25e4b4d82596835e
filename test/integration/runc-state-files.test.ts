import { execa } from 'execa';
import fs from 'node:fs';
import path from 'node:path';
import { Runc } from '../../core/runc.js';
import { readRuncState, readRuncStates, type RuncState } from '../../core/runc-state-files.js';
import { realRunc } from '../support/arch-env.js';
import { makeRuncBundle } from '../support/direct-runc.js';
import { buildRootfs } from '../support/images.js';

/**
 * core/runc-state-files.ts reads what `runc list` reports from runc's own
 * files: on real containers of this host's runc in each state runc knows
 * (created, running, paused, stopped), its answer must be runc's, field by
 * field; and what it cannot read plainly goes back to runc.
 */
const RUNC = realRunc();
const cgroupParent = `/arch-state-files-${process.pid}`;
let work: string;
let root: string;
const ids: string[] = [];

beforeAll(async () => {
  work = fs.mkdtempSync('/tmp/arch-state-files-');
  root = path.join('/run/arch-state-files', String(process.pid));
  fs.mkdirSync(root, { recursive: true });
  await buildRootfs(path.join(work, 'rootfs'));
});

afterAll(async () => {
  for (const id of ids) {
    await execa(RUNC, ['--root', root, 'resume', id], { reject: false, stdin: 'ignore' });
    await execa(RUNC, ['--root', root, 'kill', '--all', id, 'KILL'], { reject: false, stdin: 'ignore' });
    await execa(RUNC, ['--root', root, 'delete', '--force', id], { reject: false, stdin: 'ignore' });
  }
  fs.rmSync(root, { recursive: true, force: true });
  try {
    fs.rmdirSync(path.dirname(root)); // unless another run of this test uses it
  } catch {
    // not empty
  }
  fs.rmSync(work, { recursive: true, force: true });
  for (const c of fs.readdirSync('/sys/fs/cgroup'))
    fs.rmSync(path.join('/sys/fs/cgroup', c, cgroupParent), { recursive: true, force: true });
});

async function create(id: string, args: string[]): Promise<void> {
  ids.push(id);
  const dir = path.join(work, `bundle-${id}`);
  await makeRuncBundle(dir, path.join(work, 'rootfs'), {
    cgroupsPath: `${cgroupParent}/${id}`,
    args,
    edit: (spec) => {
      spec.annotations = { 'org.example/role': `test=${id}` };
    },
  });
  await execa(RUNC, ['--root', root, 'create', '--bundle', dir, id], { stdio: 'ignore' });
}

const runcList = async (): Promise<RuncState[]> =>
  (JSON.parse((await execa(RUNC, ['--root', root, 'list', '--format', 'json'])).stdout) as RuncState[] | null) ?? [];
/** The fields ARCH reads, as runc reports them (runc's `owner` is not read). */
const comparable = (states: RuncState[]) =>
  states
    .map(({ id, pid, status, bundle, rootfs, created, annotations }) => ({
      id,
      pid,
      status,
      bundle,
      rootfs,
      created,
      annotations: annotations ?? {},
    }))
    .sort((a, b) => a.id.localeCompare(b.id));

test('created, running, paused and stopped containers: the same list as `runc list`', async () => {
  const tag = process.pid;
  await create(`created-${tag}`, ['/bin/sh', '-c', 'sleep 60']);
  await create(`running-${tag}`, ['/bin/sh', '-c', 'sleep 60']);
  await execa(RUNC, ['--root', root, 'start', `running-${tag}`]);
  await create(`paused-${tag}`, ['/bin/sh', '-c', 'sleep 60']);
  await execa(RUNC, ['--root', root, 'start', `paused-${tag}`]);
  await execa(RUNC, ['--root', root, 'pause', `paused-${tag}`]);
  await create(`stopped-${tag}`, ['/bin/true']);
  await execa(RUNC, ['--root', root, 'start', `stopped-${tag}`]);
  for (let i = 0; i < 100; i++) {
    const st = (await runcList()).find((s) => s.id === `stopped-${tag}`);
    if (st?.status === 'stopped') break;
    await new Promise((r) => setTimeout(r, 50));
  }
  // A directory runc is about to fill (or has just emptied), and a file: neither is a container.
  fs.mkdirSync(path.join(root, `half-${tag}`));
  fs.writeFileSync(path.join(root, 'arch-marker'), '');

  const fromRunc = comparable(await runcList());
  expect(fromRunc.map((s) => s.status).sort()).toEqual(['created', 'paused', 'running', 'stopped']);
  expect(comparable((await readRuncStates(root))!)).toEqual(fromRunc);
  // And through the class every listing uses.
  const settings = { runc: RUNC, criu: '/nonexistent/criu', criuNoBreakpoints: false };
  expect(comparable(await new Runc(settings, root).list())).toEqual(fromRunc);
  // `runc state` of each, the same way (what a checkpoint, a restore and the shim ask first).
  for (const { id } of fromRunc) {
    const fromState = comparable([JSON.parse((await execa(RUNC, ['--root', root, 'state', id])).stdout) as RuncState]);
    expect(comparable([(await readRuncState(root, id))!])).toEqual(fromState);
    expect(comparable([await new Runc(settings, root).state(id)])).toEqual(fromState);
  }
  // Not a container (half made, or no directory): runc is asked, and its error is the answer.
  expect(await readRuncState(root, `half-${tag}`)).toBeUndefined();
  expect(await readRuncState(root, `none-${tag}`)).toBeUndefined();
  await expect(new Runc(settings, root).state(`none-${tag}`)).rejects.toThrow(/does not exist|not exist/);
  fs.rmdirSync(path.join(root, `half-${tag}`));
});

test('a state file it does not recognise, or a root it cannot read: undefined (runc is asked)', async () => {
  const odd = fs.mkdtempSync(path.join(work, 'odd-'));
  fs.mkdirSync(path.join(odd, 'c1'));
  fs.writeFileSync(path.join(odd, 'c1', 'state.json'), JSON.stringify({ id: 'c1', init_process_pid: 'x' }));
  expect(await readRuncStates(odd)).toBeUndefined();
  fs.writeFileSync(path.join(odd, 'c1', 'state.json'), '{"id": "c1", "init_pro');
  expect(await readRuncStates(odd)).toBeUndefined();
  // Another container's state under this name: not believed.
  fs.writeFileSync(
    path.join(odd, 'c1', 'state.json'),
    JSON.stringify({ id: 'c2', init_process_pid: 1, init_process_start: 1, created: '', config: { rootfs: '/' } }),
  );
  expect(await readRuncStates(odd)).toBeUndefined();
  expect(await readRuncState(odd, 'c1')).toBeUndefined();
  // A name runc would refuse, or one leading out of the root: runc is asked.
  expect(await readRuncState(path.join(odd, 'c1'), '..')).toBeUndefined();
  expect(await readRuncState(odd, '../odd/c1')).toBeUndefined();
  // No root at all: nothing listed, as runc says.
  expect(await readRuncStates(path.join(work, 'no-such-root'))).toEqual([]);
  // A file where the root should be: runc's error, not an empty list.
  fs.writeFileSync(path.join(work, 'a-file'), '');
  expect(await readRuncStates(path.join(work, 'a-file'))).toBeUndefined();
});
