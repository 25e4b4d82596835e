/**
 * `arch-cli doctor`: every dependency with its version, CRIU's own check, and
 * whether hardware breakpoints fire (they do not in some VMs, where CRIU's
 * dump then hangs unless CRIU_FAULT=130 makes it use ptrace instead).
 * Each failed check carries the exact fix.
 */
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { networkLockOf, nftablesLockCheck } from './criu-network-lock.js';
import { containerdChecks } from './containerd-config.js';
import type { Check } from './doctor-check.js';
import { criuEnv, parseEnvFile, type Settings } from './settings.js';
import { snapshotState } from './shim-snapshot.js';
import { errorMessage } from '../contract/errors.js';
import { scratchRoom, STORE_KEY_SETTING, storeKeysOf } from './seal.js';
import { DEFAULT_SIGNING_KEY, trustOf, type Trust } from './trust.js';

/** This checkout (dist/core/doctor.js lives two levels below it). */
const ARCH_HOME = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

async function versionOf(cmd: string, args: string[], re: RegExp): Promise<string | undefined> {
  try {
    const r = await execa(cmd, args, { reject: false, timeout: 10_000, all: true });
    return re.exec(String(r.all ?? ''))?.[1];
  } catch {
    return undefined;
  }
}

async function binCheck(
  name: string,
  cmd: string,
  args: string[],
  re: RegExp,
  fix: string,
  optional = false,
): Promise<Check> {
  const version = await versionOf(cmd, args, re);
  return version
    ? { name, ok: true, version, detail: cmd }
    : { name, ok: false, detail: `${cmd} not found or not working`, fix, optional };
}

/**
 * Dump a throwaway process with CRIU (leave it running). Returns 'ok',
 * 'hang' (the "Waiting for PID to trap" symptom), or the error text.
 */
export async function probeCriuDump(
  criu: string,
  noBreakpoints: boolean,
  timeoutMs = 8000,
): Promise<'ok' | 'hang' | string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'arch-criu-probe-'));
  const child = spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
  try {
    const r = await execa(
      criu,
      ['dump', '-t', String(child.pid), '-D', dir, '-o', 'dump.log', '-v4', '--leave-running', '--shell-job'],
      {
        reject: false,
        timeout: timeoutMs,
        env: criuEnv({ criuNoBreakpoints: noBreakpoints }),
      },
    );
    if (r.exitCode === 0) return 'ok';
    const log = await fsp.readFile(path.join(dir, 'dump.log'), 'utf8').catch(() => '');
    if (r.timedOut || /Waiting for PID to trap\s*$/.test(log.trimEnd())) return 'hang';
    return (
      log
        .split('\n')
        .filter((l) => l.includes('Error'))
        .slice(-2)
        .join(' | ') || `exit ${r.exitCode}`
    );
  } finally {
    try {
      process.kill(child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

const CRIU_FIX = "run ./install.sh: it installs Debian's newest CRIU (>= 4.2) privately, or set ARCH_CRIU to one";

/**
 * Why this CRIU cannot checkpoint containers on this kernel, if it cannot:
 * 3.x does not know the vDSO layout of current kernels, and before 4.2 it
 * asks every inet socket for SO_PASSCRED, which Linux 6.16 and later refuse
 * on them: a container with any TCP or UDP socket (a connection, a listener)
 * then fails to dump ("Can't get 1:16 opt").
 */
export function criuTooOld(criuVersion: string, kernelRelease: string): string | undefined {
  const num = (v: string) => v.split(/[.-]/).map((p) => Number.parseInt(p, 10) || 0);
  const [cMaj = 0, cMin = 0] = num(criuVersion);
  const [kMaj = 0, kMin = 0] = num(kernelRelease);
  if (cMaj < 4) return `CRIU ${criuVersion} is too old for this kernel (vDSO layout)`;
  if (cMaj === 4 && cMin < 2 && (kMaj > 6 || (kMaj === 6 && kMin >= 16)))
    return `CRIU ${criuVersion} cannot checkpoint a container with a TCP or UDP socket on Linux ${kernelRelease} (6.16 and later refuse SO_PASSCRED on them; fixed in CRIU 4.2)`;
  return undefined;
}

/**
 * Whether the kernel tracks dirty pages (soft-dirty bits), as CRIU itself
 * says. Where it does, pre-dumps (memory copied while the job runs, only
 * the pages changed since copied while frozen) could cut the freeze of a
 * periodic checkpoint; ARCH does not pre-dump today, since these VMs have
 * no such tracking to test it on. Information only.
 */
export async function dirtyTrackCheck(criu: string): Promise<Check> {
  const r = await execa(criu, ['check', '--feature', 'mem_dirty_track'], {
    reject: false,
    all: true,
    timeout: 30_000,
  });
  const said = String(r.all ?? '')
    .trim()
    .split('\n')
    .pop();
  return r.exitCode === 0
    ? {
        name: 'dirty page tracking',
        ok: true,
        info: true,
        version: 'present',
        detail: 'the kernel tracks dirty pages: pre-dumps could cut the freeze time of periodic checkpoints',
      }
    : {
        name: 'dirty page tracking',
        ok: true,
        info: true,
        version: 'absent',
        detail: `no pre-dumps possible here (criu: ${said || `exit ${String(r.exitCode)}`}); where the kernel tracks dirty pages, pre-dumps could cut the freeze time of periodic checkpoints`,
      };
}

/** Which method CRIU will lock container networks with, and whether this CRIU can. */
async function networkLockCheck(settings: Settings): Promise<Check> {
  const method = await networkLockOf(settings);
  const name = 'network lock';
  if (method !== 'nftables' || settings.criuNetworkLock === 'auto') {
    const why =
      settings.criuNetworkLock === 'auto'
        ? method === 'nftables'
          ? 'auto: this CRIU supports nftables'
          : "auto: this CRIU or kernel has no nftables locking, CRIU's default is used"
        : `ARCH_CRIU_NETWORK_LOCK=${method}`;
    return { name, ok: true, version: method, detail: why };
  }
  const r = await nftablesLockCheck(settings.criu);
  return r.ok
    ? { name, ok: true, version: method, detail: 'ARCH_CRIU_NETWORK_LOCK=nftables' }
    : {
        name,
        ok: false,
        version: method,
        detail: `ARCH_CRIU_NETWORK_LOCK=nftables, but this CRIU cannot: ${r.output.split('\n').pop()}`,
        fix: `set ARCH_CRIU_NETWORK_LOCK=auto in ${settings.configFile}`,
      };
}

/**
 * `payloadCheck`: the Temporal payload key's check (temporal/payload-check.ts),
 * passed in by the CLI so that the domain library does not import the Temporal side.
 */
export async function runDoctor(settings: Settings, payloadCheck: (s: Settings) => Check): Promise<Check[]> {
  const checks: Check[] = [];
  checks.push({
    name: 'node',
    ok: Number(process.versions.node.split('.')[0]) >= 20,
    version: process.versions.node,
    fix: 'install Node.js 20 or newer',
  });
  checks.push(
    await binCheck(
      'runc',
      settings.runc,
      ['--version'],
      /runc version (\S+)/,
      'apt-get install runc (or set ARCH_RUNC to the real runc)',
    ),
  );
  checks.push(
    await binCheck('containerd', 'containerd', ['--version'], /containerd \S+ (\S+)/, 'apt-get install containerd'),
  );
  checks.push(await binCheck('ctr', 'ctr', ['--version'], /ctr \S+ (\S+)/, 'apt-get install containerd'));
  checks.push(...containerdChecks(settings));
  const criu = await binCheck(
    'criu',
    settings.criu,
    ['--version'],
    /Version: (\S+)/,
    'run ./install.sh (installs CRIU >= 4.2), or set ARCH_CRIU',
  );
  const tooOld = criu.ok ? criuTooOld(criu.version!, os.release()) : undefined;
  if (tooOld) Object.assign(criu, { ok: false, detail: tooOld, fix: CRIU_FIX });
  checks.push(criu);
  if (criu.ok) {
    const r = await execa(settings.criu, ['check'], { reject: false, all: true, timeout: 30_000 });
    const out = String(r.all ?? '');
    checks.push({
      name: 'criu check',
      ok: r.exitCode === 0 && /Looks good/.test(out),
      detail: out
        .split('\n')
        .filter((l) => /Looks good|Error/.test(l))
        .slice(0, 3)
        .join(' | '),
      fix: 'see `criu check -v4` output; the kernel needs CONFIG_CHECKPOINT_RESTORE',
    });
    const plain = await probeCriuDump(settings.criu, false);
    const bp: Check = {
      name: 'hardware breakpoints',
      ok: plain === 'ok',
      detail:
        plain === 'ok'
          ? 'CRIU dump works with breakpoints'
          : plain === 'hang'
            ? 'CRIU dump hangs (breakpoints do not fire: typical in VMs)'
            : plain,
    };
    if (plain !== 'ok') {
      const fallback = await probeCriuDump(settings.criu, true);
      if (fallback === 'ok') {
        bp.ok = settings.criuNoBreakpoints; // configured correctly already → fine
        bp.detail += settings.criuNoBreakpoints
          ? '; ARCH_CRIU_NO_BREAKPOINTS=1 is set: CRIU uses ptrace instead'
          : '; works with CRIU_FAULT=130';
        bp.fix = `set ARCH_CRIU_NO_BREAKPOINTS=1 in ${settings.configFile} (or run: arch-cli doctor --write-config)`;
      } else {
        bp.detail += `; also fails with CRIU_FAULT=130: ${fallback}`;
        bp.fix = 'run `criu dump` by hand with -v4 and read its log';
      }
    }
    checks.push(bp);
  }
  checks.push(capabilitiesCheck());
  if (criu.ok) checks.push(criuProbeCacheCheck());
  if (criu.ok) checks.push(await dirtyTrackCheck(settings.criu));
  checks.push(await shimFrontCheck());
  checks.push(await shimSnapshotCheck());
  const lock = criu.ok ? await networkLockCheck(settings) : undefined;
  if (lock) checks.push(lock);
  // CRIU runs iptables-restore only for the iptables method (its default).
  checks.push(
    await binCheck(
      'iptables',
      'iptables-restore',
      ['--version'],
      /v(\S+)/,
      'apt-get install iptables (CRIU locks container networks with iptables-restore)',
      lock?.version !== 'iptables',
    ),
  );
  checks.push(await binCheck('zstd', 'zstd', ['--version'], /v(\d[\d.]*\d)/, 'apt-get install zstd', true));
  // A restore brings a container's own loopback up with ip, and frees its listener ports of TIME_WAIT with ss.
  checks.push(
    await binCheck(
      'iproute2',
      'ss',
      ['--version'],
      /iproute2-(\S+)/,
      "apt-get install iproute2 (a restored container's loopback, and its listener ports in a network namespace that outlived it)",
      true,
    ),
  );
  checks.push(
    await binCheck(
      'getfattr',
      'getfattr',
      ['--version'],
      /getfattr (\S+)/,
      'apt-get install attr (needed for opaque overlay directories)',
    ),
  );
  checks.push(
    await binCheck(
      'temporal',
      settings.temporalCli,
      ['--version'],
      /temporal version (\S+)/,
      'run ./install.sh (builds the Temporal CLI), or set ARCH_TEMPORAL_CLI',
      true,
    ),
  );
  checks.push({
    name: 'settings',
    ok: true,
    detail: fs.existsSync(settings.configFile) ? settings.configFile : `${settings.configFile} (absent: defaults)`,
  });
  checks.push(payloadCheck(settings));
  checks.push(...allowedRootChecks(settings));
  checks.push(...signingChecks(settings));
  checks.push(storeKeyCheck(settings));
  if (settings.logFile) {
    let ok = true;
    try {
      await fsp.mkdir(path.dirname(settings.logFile), { recursive: true });
      await fsp.appendFile(settings.logFile, '');
    } catch {
      ok = false;
    }
    checks.push({
      name: 'log file',
      ok,
      detail: settings.logFile,
      fix: `make ${path.dirname(settings.logFile)} writable or change ARCH_LOG_FILE`,
    });
  }
  return checks;
}

/** Linux capability numbers (linux/capability.h) CRIU needs beside those every root has. */
const CAP_SYS_RESOURCE = 24;

/**
 * The capabilities ARCH (and the CRIU it starts) runs with. Without
 * CAP_SYS_RESOURCE, CRIU cannot read the resource limits of a process that
 * runs as another user (prlimit(2)): containers whose processes are not
 * root (an image's USER, a pod's runAsUser) cannot be checkpointed, root
 * ones still can. A warning, since the node still serves root containers.
 */
export function capabilitiesCheck(status = '/proc/self/status'): Check {
  const name = 'capabilities';
  let eff: bigint | undefined;
  try {
    const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync(status, 'utf8'))?.[1];
    eff = hex === undefined ? undefined : BigInt(`0x${hex}`);
  } catch {
    eff = undefined;
  }
  if (eff === undefined) return { name, ok: true, info: true, detail: `cannot read ${status}` };
  if ((eff >> BigInt(CAP_SYS_RESOURCE)) & 1n) return { name, ok: true, detail: 'CAP_SYS_RESOURCE present' };
  return {
    name,
    ok: false,
    optional: true,
    detail:
      'no CAP_SYS_RESOURCE: CRIU cannot read the limits of processes that run as a non-root user, so containers whose processes are not root cannot be checkpointed (root ones can, and so can containers in a user namespace of their own)',
    fix: 'run ARCH with CAP_SYS_RESOURCE (as a DaemonSet: securityContext.capabilities.add [SYS_RESOURCE], or privileged: true), or run such pods with hostUsers: false',
  };
}

/**
 * ARCH_ALLOWED_ROOTS: the only places a container's ARCH_CHECKPOINT_HOST_PATH
 * or ARCH_SHAREDFS_HOST_PATH may name. A root that does not exist yet is fine
 * (created on first use); one that is a file, or writable by others than root,
 * is not a safe home for checkpoints.
 */
export function allowedRootChecks(settings: Pick<Settings, 'allowedRoots' | 'configFile'>): Check[] {
  return settings.allowedRoots.map((root) => {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(root);
    } catch {
      return { name: 'allowed root', ok: true, detail: `${root} (absent: created on first use)` };
    }
    if (!st.isDirectory())
      return {
        name: 'allowed root',
        ok: false,
        detail: `${root} is not a directory`,
        fix: `remove it from ARCH_ALLOWED_ROOTS in ${settings.configFile} or make it a directory`,
      };
    // World-writable without the sticky bit: anyone could swap what lies below it.
    const loose = (st.mode & 0o002) !== 0 && (st.mode & 0o1000) === 0;
    return {
      name: 'allowed root',
      ok: !loose,
      detail: `${root}${loose ? ' is writable by every user' : ''}`,
      fix: `chmod o-w ${root}, or list a root only root can write in ARCH_ALLOWED_ROOTS (${settings.configFile})`,
    };
  });
}

/**
 * The node's signing key (without it its checkpoints restore nowhere) and
 * the keys whose checkpoints it restores (core/trust.ts).
 */
export function signingChecks(settings: Pick<Settings, 'configFile'>): Check[] {
  let trust: Trust;
  try {
    trust = trustOf(settings);
  } catch (err) {
    return [
      {
        name: 'trusted keys',
        ok: false,
        detail: errorMessage(err),
        fix: 'fix ARCH_TRUSTED_KEYS (absolute paths of node.pub files, or directories of *.pub, separated by ":")',
      },
    ];
  }
  const key: Check = trust.signer
    ? { name: 'signing key', ok: true, version: trust.signer.keyId, detail: trust.signer.file }
    : {
        name: 'signing key',
        ok: false,
        detail: `${trust.signerProblem}: checkpoints of this node are published unsigned and no node restores them`,
        fix: `run ${path.join(ARCH_HOME, 'install.sh')} (it creates ${DEFAULT_SIGNING_KEY}), or set ARCH_SIGNING_KEY in ${settings.configFile}`,
      };
  if (trust.signer && (fs.statSync(trust.signer.file).mode & 0o077) !== 0) {
    Object.assign(key, {
      ok: false,
      detail: `${trust.signer.file} is readable by others than its owner: anyone who can read it can forge checkpoints this cluster restores`,
      fix: `chmod 600 ${trust.signer.file}`,
    });
  }
  const trusted: Check = {
    name: 'trusted keys',
    ok: trust.trusted.size > 0,
    version: String(trust.trusted.size),
    detail:
      [...trust.trusted].map(([id, k]) => `${id} ${k.source}`).join('; ') || 'none: this node restores no checkpoint',
    fix: "list the other nodes' node.pub files in ARCH_TRUSTED_KEYS (or give every node the same key)",
  };
  const checks = [key, trusted];
  if (trust.acceptUnsigned) {
    checks.push({
      name: 'unsigned checkpoints',
      ok: false,
      optional: true,
      detail:
        'ARCH_ACCEPT_UNSIGNED=1: checkpoints without a signature are restored (anyone who can write the store can run code here)',
      fix: `remove ARCH_ACCEPT_UNSIGNED from ${settings.configFile} once the checkpoints of the previous ARCH are restored`,
    });
  }
  return checks;
}

/**
 * CRIU keeps what it learns about the kernel in /run/criu.kdat, and only
 * when /run is a tmpfs (so a reboot into another kernel clears it). Where
 * /run is on disk, every CRIU run probes the kernel again: slower
 * checkpoints and restores, nothing wrong.
 */
const TMPFS_MAGIC = 0x01021994;
export function criuProbeCacheCheck(run = '/run'): Check {
  let type: number | undefined;
  try {
    type = fs.statfsSync(run).type;
  } catch {
    type = undefined;
  }
  const ok = type === TMPFS_MAGIC;
  return {
    name: 'CRIU probe cache',
    ok,
    optional: true,
    detail: ok
      ? `${run} is a tmpfs: CRIU keeps its kernel probes in ${run}/criu.kdat`
      : `${run} is not a tmpfs: CRIU probes the kernel on every run (about 20-30 ms more per checkpoint and restore)`,
    fix: `mount ${run} as a tmpfs at boot (systemd does); nothing else is needed`,
  };
}

/**
 * bin/arch-runc links to the front the build compiles (shim/arch-runc.c into
 * dist/shim/arch-runc): without it containerd starts no container whose
 * runtime names arch-runc, ARCH's or not.
 */
export async function shimFrontCheck(archHome = ARCH_HOME): Promise<Check> {
  const bin = path.join(archHome, 'bin/arch-runc');
  const fix = `run ${path.join(archHome, 'install.sh')} (or npm run build in ${archHome}: it compiles the front with gcc)`;
  try {
    await fsp.access(bin, fs.constants.X_OK);
    return { name: 'arch-runc front', ok: true, detail: `${bin} -> ${await fsp.realpath(bin)}`, fix };
  } catch (err) {
    return {
      name: 'arch-runc front',
      ok: false,
      detail: `${bin} is not built (${errorMessage(err)}): containerd cannot start a container whose runtime is arch-runc`,
      fix,
    };
  }
}

/**
 * arch-runc starts ~20 ms sooner from the start-up snapshot the build made
 * (core/shim-snapshot.ts); after an upgrade of Node it starts the slower way
 * until the next build. Nothing fails either way.
 */
export async function shimSnapshotCheck(archHome = ARCH_HOME): Promise<Check> {
  const s = await snapshotState(archHome);
  return {
    name: 'arch-runc start-up snapshot',
    ok: s.usable,
    optional: true,
    detail: s.usable
      ? s.detail
      : `${s.detail}: arch-runc starts about 20 ms slower (through start.cjs) until it is rebuilt`,
    fix: `run ${path.join(archHome, 'install.sh')} (or npm run build in ${archHome})`,
  };
}

/** Record what the probes found in the settings file (keeps every other line). */
export async function writeProbedSettings(settings: Settings, checks: Check[]): Promise<boolean> {
  const bp = checks.find((c) => c.name === 'hardware breakpoints');
  if (!bp || bp.ok || !bp.detail?.includes('works with CRIU_FAULT=130')) return false;
  const file = settings.configFile;
  const text = await fsp.readFile(file, 'utf8').catch(() => '');
  if (parseEnvFile(text).ARCH_CRIU_NO_BREAKPOINTS === '1') return false;
  const lines = text.split('\n').filter((l) => !/^\s*ARCH_CRIU_NO_BREAKPOINTS=/.test(l) && l !== '');
  lines.push(
    '# Hardware breakpoints do not fire on this host (arch-cli doctor): CRIU uses ptrace instead.',
    'ARCH_CRIU_NO_BREAKPOINTS=1',
  );
  await fsp.mkdir(path.dirname(file), { recursive: true });
  await fsp.writeFile(file, `${lines.join('\n')}\n`);
  return true;
}

/**
 * Encryption at rest (core/seal.ts): off by default, so its absence is only
 * a note; a key file that is set but unusable fails (checkpoints would fail
 * too). The key ids must be the same on every node of a cluster.
 */
export function storeKeyCheck(settings: Pick<Settings, 'configFile'>): Check {
  try {
    const keys = storeKeysOf(settings);
    if (!keys)
      return {
        name: 'store key',
        ok: true,
        optional: true,
        detail: `${STORE_KEY_SETTING} unset: checkpoints are signed, not encrypted (anyone who can read the store can read a job's memory and files)`,
      };
    const [first, ...rest] = keys.keys;
    const sealing = `${keys.file}: new checkpoints sealed with key id ${first!.id}${rest.length ? `; also opens ${rest.map((k) => k.id).join(', ')}` : ''}`;
    const room = scratchRoom();
    if (room.length === 0)
      return {
        name: 'store key',
        ok: false,
        version: first!.id,
        detail: `${sealing}, but neither /run nor /dev/shm is a tmpfs: every sealed checkpoint and restore is refused (plaintext never goes to a disk)`,
        fix: 'mount a tmpfs on /dev/shm (or /run), as systemd does, large enough for the memory of the largest sealed job',
      };
    const where = room.map((r) => `${r.root} (${gib(r.freeBytes)} free)`).join(' or ');
    return {
      name: 'store key',
      ok: true,
      version: first!.id,
      detail: `${sealing}; plaintext scratch on tmpfs: ${where}, which must hold a sealed job's memory while it is checkpointed or restored (a larger one is refused, its previous checkpoint kept); every node of the cluster needs this file`,
    };
  } catch (err) {
    return {
      name: 'store key',
      ok: false,
      detail: errorMessage(err),
      fix: (err as { fix?: string }).fix ?? `fix ${STORE_KEY_SETTING} in ${settings.configFile}`,
    };
  }
}

function gib(n: number): string {
  return `${(n / 2 ** 30).toFixed(1)} GiB`;
}
