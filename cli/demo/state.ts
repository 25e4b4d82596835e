/**
 * What a demo started, written to RUN_DIR/demo.json after each step, so
 * that Ctrl-C, `--cleanup` and a later `arch-cli demo --stop` stop exactly
 * that (by pid and start time: never a process the demo did not start) in
 * reverse order, and say what is left if something would not go.
 */
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../../core/atomic-file.js';
import { Containerd } from '../../core/containerd.js';
import { errorMessage } from '../../contract/errors.js';
import { stopLocalContainerd } from '../../core/local-node.js';
import { isSameProcess, stopProcess, type ProcessRef } from '../../core/processes.js';

export interface DemoNode {
  name: string;
  address: string;
  runcRoot: string;
  cgroupParent?: string;
  /** Where its worker sends restored containers' output (<logDir>/<ns>/<id>.log). */
  logDir: string;
  /** A containerd the demo started (absent: the host's, which the demo only borrows). */
  local?: { dir: string; process?: ProcessRef };
  /** The demo imported its image there (so it removes it again). */
  imageImported?: boolean;
}

export interface DemoState {
  version: 1;
  /** The demo run that wrote this. */
  owner: ProcessRef;
  startedAt: string;
  runDir: string;
  stateDir: string;
  namespace: string;
  id: string;
  image: string;
  nodes: DemoNode[];
  temporal?: { address: string; uiUrl?: string; process: ProcessRef };
  workers: { node: string; process: ProcessRef; outFile: string }[];
  /** Set once the job was created (on node-a). */
  jobStarted?: boolean;
}

/** What the demo keeps under its state dir: removed on clean-up (never the dir's other content). */
export const STATE_DIR_ENTRIES = ['checkpoints', 'workers', 'logs', 'images', 'temporal'];

export const stateFileOf = (runDir: string): string => path.join(runDir, 'demo.json');

export function readDemoState(runDir: string): DemoState | undefined {
  let text: string;
  try {
    text = fs.readFileSync(stateFileOf(runDir), 'utf8');
  } catch {
    return undefined;
  }
  const s = JSON.parse(text) as DemoState;
  if (s.version !== 1) throw new Error(`${stateFileOf(runDir)}: unknown version ${String(s.version)}`);
  return s;
}

export async function writeDemoState(s: DemoState): Promise<void> {
  fs.mkdirSync(s.runDir, { recursive: true });
  await writeFileAtomic(stateFileOf(s.runDir), `${JSON.stringify(s, null, 2)}\n`);
}

/**
 * Stop everything `s` records, last started first: the job, the workers,
 * the nodes the demo started (and its image on the host's containerd), the
 * Temporal dev server; then its files. Returns what could not be stopped
 * or removed (empty: nothing is left). keepFiles: leave the logs (and this
 * record, so that the next run removes them) for a look at what went wrong.
 */
export async function teardown(
  s: DemoState,
  say: (line: string) => void,
  opts: { keepFiles?: boolean } = {},
): Promise<string[]> {
  const left: string[] = [];
  const attempt = async (what: string, fn: () => Promise<string | undefined>): Promise<void> => {
    try {
      const done = await fn();
      if (done) say(`✔ ${done}`);
    } catch (err) {
      left.push(`${what}: ${errorMessage(err).split('\n')[0]}`);
      say(`✘ ${what}: ${errorMessage(err).split('\n')[0]}`);
    }
  };
  const containerdOf = (n: DemoNode) =>
    new Containerd({ address: n.address, namespace: s.namespace, runcRoot: n.runcRoot, cgroupParent: n.cgroupParent });
  const answers = (n: DemoNode) => containerdOf(n).ping(3_000);

  if (s.jobStarted) {
    for (const n of [...s.nodes].reverse()) {
      await attempt(`job ${s.namespace}/${s.id} on ${n.name}`, async () => {
        if (!(await answers(n))) return undefined;
        const cd = containerdOf(n);
        if (!(await cd.listContainers()).includes(s.id)) return undefined;
        await cd.removeContainer(s.id);
        return `removed job ${s.namespace}/${s.id} from ${n.name}`;
      });
    }
  }
  for (const w of [...s.workers].reverse()) {
    await attempt(`worker ${w.node} (pid ${w.process.pid})`, async () => {
      if (!(await stopProcess(w.process, 15_000))) return undefined;
      if (isSameProcess(w.process)) throw new Error('still running');
      return `stopped worker ${w.node} (pid ${w.process.pid})`;
    });
  }
  for (const n of [...s.nodes].reverse()) {
    if (n.local) {
      const { dir, process: ref } = n.local;
      await attempt(`node ${n.name} (containerd${ref ? ` pid ${ref.pid}` : ''}, ${dir})`, async () => {
        const running = ref !== undefined && isSameProcess(ref);
        await stopLocalContainerd(dir, n.cgroupParent ?? '', opts.keepFiles);
        // Its pid file is gone if someone removed the dir: its recorded pid and start time still find it.
        if (ref && isSameProcess(ref)) await stopProcess(ref, 10_000);
        if (ref && isSameProcess(ref)) throw new Error('containerd still running');
        return running ? `stopped ${n.name} (containerd pid ${ref.pid})` : undefined;
      });
    } else if (n.imageImported) {
      await attempt(`image ${s.image} on ${n.name}`, async () => {
        if (!(await answers(n))) return undefined;
        const cd = containerdOf(n);
        await cd.ctr(['images', 'rm', s.image]).catch(() => undefined);
        // Only goes when empty: anything else in the namespace stays.
        await cd.ctr(['namespaces', 'rm', s.namespace]).catch(() => undefined);
        return `removed image ${s.image} from ${n.name}`;
      });
    }
  }
  if (s.temporal) {
    const t = s.temporal;
    await attempt(`Temporal dev server (pid ${t.process.pid})`, async () => {
      if (!(await stopProcess(t.process, 10_000))) return undefined;
      if (isSameProcess(t.process)) throw new Error('still running');
      return `stopped the Temporal dev server (pid ${t.process.pid})`;
    });
  }
  if (left.length === 0 && !opts.keepFiles) {
    for (const e of STATE_DIR_ENTRIES) fs.rmSync(path.join(s.stateDir, e), { recursive: true, force: true });
    fs.rmSync(stateFileOf(s.runDir), { force: true });
    for (const d of [s.stateDir, s.runDir]) {
      try {
        fs.rmdirSync(d); // only if empty: the dirs may be the user's
      } catch {
        // not empty, or gone
      }
    }
  }
  return left;
}
