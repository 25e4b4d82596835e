import { ArchInputError } from './errors.js';

/**
 * Namespace and container ids become path components under a checkpoint root,
 * so they are checked here, once, before any path is built from them.
 * The rules are containerd's (namespaces) and runc's (ids), both stricter than
 * what a path needs: no separators, no NUL, no "." or "..", bounded length.
 */
const NAMESPACE_RE = /^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/;
const CONTAINER_ID_RE = /^[A-Za-z0-9_+\-.]+$/;
export const MAX_NAMESPACE_LENGTH = 76;
export const MAX_CONTAINER_ID_LENGTH = 128;

export function validateNamespace(ns: string, field = 'namespace'): string {
  if (typeof ns !== 'string' || ns.length === 0) {
    throw new ArchInputError(field, 'is empty', 'use a containerd namespace such as "default" or "k8s.io"');
  }
  if (ns.length > MAX_NAMESPACE_LENGTH || !NAMESPACE_RE.test(ns)) {
    throw new ArchInputError(
      field,
      `"${printable(ns)}" is not a valid containerd namespace`,
      `use letters, digits and single ".", "_" or "-" between them, at most ${MAX_NAMESPACE_LENGTH} characters`,
    );
  }
  return ns;
}

export function validateContainerId(id: string, field = 'container id'): string {
  if (typeof id !== 'string' || id.length === 0) {
    throw new ArchInputError(field, 'is empty', 'pass the container id as runc/containerd knows it');
  }
  if (id.length > MAX_CONTAINER_ID_LENGTH || !CONTAINER_ID_RE.test(id) || id === '.' || id === '..') {
    throw new ArchInputError(
      field,
      `"${printable(id)}" is not a valid container id`,
      `use letters, digits, "_", "+", "-" and "." (not "." or ".." alone), at most ${MAX_CONTAINER_ID_LENGTH} characters`,
    );
  }
  return id;
}

/** "ns/id" as users type it on the CLI. */
export function parseContainerRef(ref: string, field = 'container'): { namespace: string; id: string } {
  const slash = ref.indexOf('/');
  if (slash <= 0) {
    throw new ArchInputError(
      field,
      `"${printable(ref)}" has no namespace`,
      'write it as NAMESPACE/ID, e.g. default/job-1',
    );
  }
  return {
    namespace: validateNamespace(ref.slice(0, slash), `${field} namespace`),
    id: validateContainerId(ref.slice(slash + 1), `${field} id`),
  };
}

function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/[\x00-\x1f\x7f]/g, '?');
  return clean.length > 80 ? `${clean.slice(0, 77)}...` : clean;
}
