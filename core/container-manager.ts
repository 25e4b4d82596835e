import { ArchInputError } from '../contract/errors.js';
import { validateNamespace } from '../contract/ids.js';
import { Manager, type ManagerName } from '../contract/managers.js';

/**
 * Who manages a container, from what containerd and the OCI spec record of
 * it (captured from real Docker 20.10 and CRI containers in
 * test/fixtures/container-managers):
 * - the CRI plugin labels every container `io.cri-containerd.kind`
 *   (container or sandbox) and annotates its spec `io.kubernetes.cri.*`;
 *   the kubelet's own labels are `io.kubernetes.*`;
 * - Docker labels its containerd containers `com.docker/engine.bundle.path`
 *   and keeps them in namespace `moby`.
 * The namespace alone is not enough: a `ctr -n k8s.io run` container is one
 * Kubernetes never heard of. It only decides when the labels are unknown
 * (runc's state, read without containerd, carries the spec but not them)
 * or when the node's settings name the namespace (ARCH_MANAGED_NAMESPACES).
 */
export interface ManagerFacts {
  namespace: string;
  /** containerd's labels; undefined when they were not read (only runc's state was). */
  labels?: Record<string, string>;
  /** The OCI spec's annotations. */
  annotations?: Record<string, string>;
}

export const DOCKER_NAMESPACE = 'moby';
const DOCKER_LABEL = 'com.docker/engine.bundle.path';
const CRI_LABEL = 'io.cri-containerd.kind';

const hasKeyStarting = (m: Record<string, string> | undefined, prefix: string) =>
  Object.keys(m ?? {}).some((k) => k.startsWith(prefix));

/** `managedNamespaces`: ARCH_MANAGED_NAMESPACES, namespace -> manager name. */
export function managerOf(facts: ManagerFacts, managedNamespaces: Record<string, string> = {}): ManagerName {
  const { labels, annotations } = facts;
  if (
    labels?.[CRI_LABEL] !== undefined ||
    hasKeyStarting(labels, 'io.kubernetes.') ||
    hasKeyStarting(annotations, 'io.kubernetes.cri.') ||
    hasKeyStarting(annotations, 'io.kubernetes.cri-o.')
  )
    return Manager.kubernetes;
  if (labels?.[DOCKER_LABEL] !== undefined) return Manager.docker;
  const named = managedNamespaces[facts.namespace];
  if (named) return named;
  if (labels === undefined && facts.namespace === DOCKER_NAMESPACE) return Manager.docker;
  return Manager.containerd;
}

const MANAGER_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** ARCH_MANAGED_NAMESPACES: "NAMESPACE=MANAGER" pairs separated by "," or spaces. */
export function parseManagedNamespaces(
  v: string | undefined,
  field = 'ARCH_MANAGED_NAMESPACES',
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of (v ?? '').split(/[,\s]+/).filter(Boolean)) {
    const eq = pair.indexOf('=');
    const ns = eq > 0 ? pair.slice(0, eq) : '';
    const manager = eq > 0 ? pair.slice(eq + 1) : '';
    if (!ns || !MANAGER_NAME_RE.test(manager))
      throw new ArchInputError(
        field,
        `"${pair}" is not NAMESPACE=MANAGER`,
        `list pairs such as "nerdctl=nerdctl,ecs=ecs-agent" (manager: lowercase letters, digits, ".", "_", "-")`,
      );
    validateNamespace(ns, field);
    out[ns] = manager;
  }
  return out;
}
