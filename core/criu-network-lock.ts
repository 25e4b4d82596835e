import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { cachedBinaryFact, writeRunFile } from './binary-facts.js';
import type { OciSpec } from './oci-spec.js';
import { criuEnv, type NetworkLockSetting, type Settings } from './settings.js';
import { runCommand } from './run-command.js';

/**
 * How CRIU cuts a container's network off while it dumps or restores it.
 *
 * CRIU's default, iptables, runs iptables-restore (and ip6tables-restore) a
 * few times to lift the lock: about 55 ms at the end of every dump that leaves
 * the container running and of every restore, measured on these machines.
 * nftables does the same through libnftables inside CRIU (about 10 ms), and
 * leaves the container's network namespace as it found it (iptables-nft
 * leaves empty filter tables behind).
 *
 * runc (1.1) has no flag for the method, and CRIU 4.1.1 crashes when an RPC
 * configuration file (runc's org.criu.config) sets `network-lock`. A file
 * named by CRIU_CONFIG_FILE is read at CRIU's start instead, after
 * /etc/criu/default.conf, and runc hands its environment on to CRIU: that is
 * how the method gets there.
 */
export type NetworkLock = Exclude<NetworkLockSetting, 'auto'>;

/** Root-owned, per boot: what the probe found and the CRIU configuration files. */
export const CRIU_RUN_DIR = '/run/arch/criu';

const resolved = new Map<string, Promise<NetworkLock>>();

/**
 * The method this node uses: the setting, or for `auto` nftables when this
 * CRIU and kernel support it (`criu check --feature network_lock_nftables`,
 * asked once per boot and CRIU binary: core/binary-facts.ts keeps the answer in CRIU_RUN_DIR).
 */
export function networkLockOf(settings: Pick<Settings, 'criu' | 'criuNetworkLock'>): Promise<NetworkLock> {
  if (settings.criuNetworkLock !== 'auto') return Promise.resolve(settings.criuNetworkLock);
  let p = resolved.get(settings.criu);
  if (!p) {
    p = probeCached(settings.criu);
    resolved.set(settings.criu, p);
  }
  return p;
}

async function probeCached(criu: string): Promise<NetworkLock> {
  const method = await cachedBinaryFact(
    criu,
    path.join(CRIU_RUN_DIR, 'network-lock.json'),
    async () => ((await nftablesLockCheck(criu)).ok ? 'nftables' : 'iptables'),
    (v) => v === 'nftables' || v === 'iptables',
  );
  return method as NetworkLock;
}

/** CRIU's own answer to whether it can lock networks with nftables here (this CRIU, this kernel). */
export async function nftablesLockCheck(criu: string): Promise<{ ok: boolean; output: string }> {
  const r = await runCommand(criu, ['check', '--feature', 'network_lock_nftables'], {
    reject: false,
    timeoutMs: 30_000,
  });
  return { ok: r.exitCode === 0, output: String(r.all ?? '').trim() };
}

/** Does the container join a network namespace made outside it (a path), rather than get its own? */
export function joinsNetworkNamespace(spec: OciSpec | undefined): boolean {
  return joinedNetworkNamespace(spec) !== undefined;
}

/** The network namespace the container joins (its path), if it joins one. */
function joinedNetworkNamespace(spec: OciSpec | undefined): string | undefined {
  return spec?.linux?.namespaces?.find((n) => n.type === 'network' && !!n.path)?.path;
}

/**
 * Takes CRIU's iptables lock off the network namespace the container joins
 * (a pod's, `--network container:X`), after a restore that failed.
 *
 * Restoring into a namespace it did not make (runc's --empty-ns network),
 * CRIU first locks it: a chain CRIU, jumped to from INPUT and OUTPUT, drops
 * every packet CRIU did not mark. It lifts the lock only once the restore has
 * worked. After a failure the pod's namespace stayed cut off: the fresh start
 * (a job that connects to itself or to anything hung) and every other
 * container of the pod without a network, until the pod was deleted. A dump
 * leaves no lock behind: ARCH's dumps leave the job running (CRIU lifts it),
 * then kill it. Only what CRIU made goes: its jumps and its chain, in
 * iptables and ip6tables (CRIU locks both where IPv6 is on).
 *
 * Returns true when a lock was there. Throws when one could not be taken off.
 */
export async function liftRestoreNetworkLock(spec: OciSpec | undefined): Promise<boolean> {
  const netns = joinedNetworkNamespace(spec);
  if (!netns) return false;
  const script = [
    'found=0',
    'for t in iptables ip6tables; do',
    '  command -v $t >/dev/null 2>&1 || continue',
    '  $t -w -n -L CRIU >/dev/null 2>&1 || continue',
    '  found=1',
    '  for c in INPUT OUTPUT; do',
    '    while $t -w -C $c -j CRIU 2>/dev/null; do $t -w -D $c -j CRIU || exit 1; done',
    '  done',
    '  $t -w -F CRIU && $t -w -X CRIU || exit 1',
    'done',
    'echo "lifted=$found"',
  ].join('\n');
  const r = await runCommand('nsenter', [`--net=${netns}`, 'sh', '-c', script], { reject: false, timeoutMs: 30_000 });
  if (r.exitCode !== 0)
    throw new Error(`could not take CRIU's network lock off ${netns}: ${r.all.trim() || `exit ${r.exitCode}`}`);
  return r.stdout.includes('lifted=1');
}

/** CRIU's ghost limit for ARCH's dumps: 1 TiB, no limit in practice (a size_t, in bytes: CRIU's parse_size). */
export const GHOST_LIMIT_BYTES = 2 ** 40;

/**
 * Environment for a runc call that runs CRIU (checkpoint, restore): the VM
 * quirk setting and the network lock method. Never fails: when the method
 * cannot be set up, CRIU keeps its default (iptables), which always worked.
 *
 * `own` (ARCH's own checkpoints and restores, not a runc call passed
 * through, which keeps runc's meaning) adds two lines and a runc flag:
 *  - `tcp-close`. A job with a TCP connection open (a database, an HTTP
 *    keep-alive, a metrics push) cannot be dumped otherwise ("Connected TCP
 *    socket, consider using --tcp-established"): its checkpoint and a
 *    reclaim fail. With it the dump leaves the connections alone (a job left
 *    running keeps them), and the restore makes them closed sockets: the
 *    job's next send or receive fails as after a network hiccup, and it
 *    connects again. Restoring them open instead (--tcp-established) only
 *    works where the same addresses and the same peer still are, which a
 *    restore on another node, or after a pause, does not have; and the dump
 *    would stop every connection in repair mode.
 *  - `ghost-limit`. A file the job still holds open after deleting it (a
 *    temporary file: Python's tempfile.TemporaryFile, a sort's spill file)
 *    exists nowhere but in the job: CRIU copies its content into the images
 *    (ghost-file-N.img), and refuses the whole dump when one is larger than
 *    its ghost limit, 1 MiB by default ("Can't dump ghost file ... increase
 *    limit"). Such a file is part of the job's state, as its memory is: no
 *    limit below the store's own space (GHOST_LIMIT_BYTES).
 *  - `link-remap`. A job can map a file under a name the file no longer
 *    has while another name still reaches it: glibc's sem_open makes every
 *    named semaphore so (a temporary name, then a link), which Python's
 *    multiprocessing does with its forkserver and spawn start methods. CRIU
 *    refuses to dump it ("Can't create link remap") unless it may give the
 *    file a second name for the dump, which it removes when the job goes on
 *    and after the restore (a pod's /dev/shm keeps it: core/dev-shm.ts).
 *  - `irmap-scan-path` (`irmapPaths`): where the job's inotify watches on
 *    its overlay root are (core/inotify-watches.ts says why CRIU needs it).
 *  - `timeout` (`seizeTimeoutS`, a dump's): how long CRIU waits for the
 *    job's processes to freeze and stop before it gives up, 10 s by
 *    default. All that time the job stands still: a dump that caught a
 *    process which cannot stop yet (core/criu-log.ts, isSeizeTimeout) gives
 *    up sooner on its first try, and the next tries wait longer.
 *  - runc's `--file-locks` (`runcArgs`, for checkpoint and restore: runc
 *    sets CRIU's file_locks in its request, which a configuration file
 *    cannot override). A job holding a lock on a file (a lock file for its
 *    whole run, HDF5's flock on an open file, SQLite's record locks) cannot
 *    be dumped otherwise ("Some file locks are hold by dumping tasks"). With
 *    it CRIU takes flock, POSIX and OFD locks along, and the restore holds
 *    them again before the job runs (a restore where another process took
 *    one meanwhile fails, as a second copy of the job must).
 */
export async function criuRunEnv(
  settings: Pick<Settings, 'criu' | 'criuNetworkLock' | 'criuNoBreakpoints'>,
  spec?: OciSpec,
  /** An action script for CRIU to run (the layer gate of a dump left running: core/layer-gate.ts). */
  actionScript?: string,
  /** irmapPaths: where CRIU finds the job's inotify watches on its root (core/inotify-watches.ts). */
  opts: { own?: boolean; irmapPaths?: readonly string[]; seizeTimeoutS?: number } = {},
): Promise<{ env: Record<string, string>; networkLock: NetworkLock; actionScript?: string; runcArgs: string[] }> {
  const env = criuEnv(settings);
  const runcArgs = opts.own ? ['--file-locks'] : [];
  let networkLock: NetworkLock = 'iptables';
  try {
    // nftables' lock is a table named after the container's first pid, made in
    // the container's network namespace. A namespace the container only joined
    // (a pod's sandbox, --network container:X) outlives a dump that kills the
    // container, and so does the table: the restore, with the same pid, then
    // fails to make it again ("File exists"). iptables' rules are taken down
    // by the restore instead. So such a container always uses iptables, on
    // the dump and on the restore.
    networkLock =
      joinsNetworkNamespace(spec) && settings.criuNetworkLock !== 'skip' ? 'iptables' : await networkLockOf(settings);
    // iptables is CRIU's own default: nothing to say about it. One file per combination (CRIU reads one CRIU_CONFIG_FILE).
    const lines = [
      ...(networkLock === 'iptables' ? [] : [`network-lock ${networkLock}`]),
      ...(actionScript ? [`action-script ${actionScript}`] : []),
      ...(opts.own ? ['tcp-close', `ghost-limit ${GHOST_LIMIT_BYTES}`, 'link-remap'] : []),
      ...(opts.irmapPaths ?? []).map((p) => `irmap-scan-path ${p}`),
      ...(opts.seizeTimeoutS ? [`timeout ${opts.seizeTimeoutS}`] : []),
    ];
    if (!lines.length) return { env, networkLock, runcArgs };
    // A job's own watch paths: a file per set of them (the same job's next dump finds it again).
    const irmap = opts.irmapPaths?.length
      ? `-irmap-${createHash('sha256').update(opts.irmapPaths.join('\n')).digest('hex').slice(0, 16)}`
      : '';
    const timeout = opts.seizeTimeoutS ? `-timeout-${opts.seizeTimeoutS}` : '';
    const name = `${actionScript ? 'gated-' : ''}${opts.own ? 'arch-' : ''}network-lock-${networkLock}${irmap}${timeout}.conf`;
    const file = path.join(CRIU_RUN_DIR, name);
    const text = `# Written by ARCH (ARCH_CRIU_NETWORK_LOCK, the layer gate, TCP connections closed on restore, deleted open files dumped whole, link remaps, inotify watches' paths, the seize timeout); read by CRIU through CRIU_CONFIG_FILE.\n${lines.join('\n')}\n`;
    if ((await fs.readFile(file, 'utf8').catch(() => '')) !== text) await writeRunFile(file, text);
    return {
      env: { ...env, CRIU_CONFIG_FILE: file },
      networkLock,
      ...(actionScript ? { actionScript } : {}),
      runcArgs,
    };
  } catch {
    // The method could not be set up: CRIU keeps its default (iptables), which always worked; and no gate.
    return { env, networkLock: 'iptables', runcArgs };
  }
}
