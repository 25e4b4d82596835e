import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { readSmallFile } from './manifest.js';
import type { OciSpec } from './oci-spec.js';
import { FILE_ENTRY, FILES_IMAGE, fileEntries, MAX_FILES_IMAGE } from './criu-files-image.js';
import { wireFields } from './protobuf-wire.js';
import { runCommand } from './run-command.js';

/**
 * A restored job's TCP listeners come back on their ports. In a network
 * namespace that outlived the job (the host's, for hostNetwork pods and
 * `docker run --network host`; a pod's, for a container restarted in its
 * pod) the job's old connections on those ports are still there as
 * TIME_WAIT entries for up to a minute: the stop closed them (a checkpoint
 * that stops the job, a crash, a kill). The kernel refuses to bind a port
 * that a TIME_WAIT entry of a socket without SO_REUSEADDR holds, even to
 * CRIU, which sets SO_REUSEADDR: the restore failed with "Can't bind inet
 * socket: Address already in use" and the job started over. So before the
 * restore ARCH removes the TIME_WAIT entries on exactly those ports in that
 * namespace (`ss -K`, sock_diag's destroy), and where the kernel cannot
 * remove them it waits for them to expire: a minute of downtime at most,
 * rather than the job's progress. A new network namespace has none.
 */

/** InetSkEntry's proto, state and src_port (CRIU's images/sk-inet.proto). */
const ISK_PROTO = 5;
const ISK_STATE = 6;
const ISK_SRC_PORT = 7;
const IPPROTO_TCP = 6;
const TCP_LISTEN = 10;

/**
 * The ports of the TCP listeners in a checkpoint's CRIU images (its
 * files.img, read as the store's other small files are: never through a
 * symlink, bounded); none if it cannot be read.
 */
export async function tcpListenPorts(criuDir: string): Promise<number[]> {
  const img = await readSmallFile(path.join(criuDir, FILES_IMAGE), MAX_FILES_IMAGE).catch(() => undefined);
  const entries = img && fileEntries(img);
  if (!entries) return [];
  const ports = new Set<number>();
  try {
    for (const entry of entries)
      for (const f of wireFields(entry)) {
        if (f.no !== FILE_ENTRY.isk || f.wire !== 2) continue;
        const v: Record<number, number> = {};
        for (const g of wireFields(f.bytes)) if (g.wire === 0) v[g.no] = g.value;
        const port = v[ISK_SRC_PORT];
        if (v[ISK_PROTO] === IPPROTO_TCP && v[ISK_STATE] === TCP_LISTEN && port && port < 65536) ports.add(port);
      }
  } catch {
    // A malformed entry: the ports found so far (CRIU itself will refuse the image).
  }
  return [...ports].sort((a, b) => a - b);
}

/**
 * How to run a command in the network namespace the container will get:
 * none (the host's, which this process is in), through nsenter (an existing
 * one the spec names by path), or undefined (a new, empty one).
 */
export function existingNetworkNamespace(spec: OciSpec): { prefix: string[] } | undefined {
  const ns = (spec.linux?.namespaces ?? []).find((n) => n.type === 'network');
  if (!ns) return { prefix: [] };
  return ns.path ? { prefix: ['nsenter', `--net=${ns.path}`] } : undefined;
}

/** How long TIME_WAIT lasts in Linux (TCP_TIMEWAIT_LEN, fixed), with a margin. */
const TIME_WAIT_MS = 65_000;

export interface FreedPorts {
  ports: number[];
  /** TIME_WAIT entries found on them. */
  found: number;
  /** How long the restore waited for those the kernel would not remove. */
  waitedMs: number;
}

/**
 * Frees `ports` of TIME_WAIT entries in the container's network namespace
 * (see above): removed, else waited out. `onWait` is told once, before a
 * wait. Undefined when there is nothing to do.
 */
export async function freeListenerPorts(
  spec: OciSpec,
  ports: readonly number[],
  onWait: (left: number) => void,
): Promise<FreedPorts | undefined> {
  const netns = existingNetworkNamespace(spec);
  if (!netns || ports.length === 0) return undefined;
  const filter = ['(', ...ports.flatMap((p, i) => [...(i ? ['or'] : []), 'sport', '=', `:${p}`]), ')'];
  const ss = async (extra: string[]): Promise<number> => {
    const [cmd, ...args] = [...netns.prefix, 'ss', ...extra, '-H', '-t', '-a', '-n', 'state', 'time-wait', ...filter];
    const { stdout } = await runCommand(cmd!, args, { timeoutMs: 10_000 });
    return stdout.split('\n').filter((l) => l.trim()).length;
  };
  const found = await ss(['-K']);
  if (found === 0) return undefined;
  const t0 = Date.now();
  let left = await ss([]);
  if (left > 0) onWait(left);
  while (left > 0 && Date.now() - t0 < TIME_WAIT_MS) {
    await sleep(500);
    left = await ss([]);
  }
  return { ports: [...ports], found, waitedMs: Date.now() - t0 };
}
