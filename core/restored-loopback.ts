import type { OciSpec } from './oci-spec.js';
import { runCommand } from './run-command.js';

/**
 * A container restored into a network namespace runc made for it (the spec
 * names a network namespace without a path: `ctr run`, runc's own bundles)
 * gets that namespace empty, its loopback DOWN: runc (1.1) restores with
 * CRIU's empty-ns for it and brings up only veth pairs, while `runc create`
 * had brought `lo` up. A job that talks to itself over 127.0.0.1 (a local
 * server, a training rendezvous, a reconnect after its connections were
 * closed) then finds the network unreachable. So `lo` goes up again, in the
 * restored init's namespace, before its processes continue (the kernel adds
 * 127.0.0.1 and ::1 with it). A namespace made outside the container
 * (Docker, a Kubernetes pod, --network container:X) is not runc's to
 * recreate and kept its state: left alone.
 */
export function ownsNewNetworkNamespace(spec: OciSpec): boolean {
  return (spec.linux?.namespaces ?? []).some((n) => n.type === 'network' && !n.path);
}

export async function loopbackUp(pid: number): Promise<void> {
  await runCommand('nsenter', [`--net=/proc/${pid}/ns/net`, 'ip', 'link', 'set', 'lo', 'up'], { timeoutMs: 10_000 });
}
