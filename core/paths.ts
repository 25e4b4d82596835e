import path from 'node:path';
import { ArchInputError } from '../contract/errors.js';
import { validateContainerId, validateNamespace } from '../contract/ids.js';

/** Require an absolute, normalised host path (no "..", no NUL). */
export function requireAbsolutePath(value: string, field: string): string {
  if (value.includes('\0'))
    throw new ArchInputError(field, 'contains a NUL byte', 'set it to an absolute directory path');
  if (!path.isAbsolute(value)) {
    throw new ArchInputError(field, `"${value}" is a relative path`, 'set it to an absolute path, e.g. /var/lib/arch');
  }
  if (value.split('/').includes('..')) {
    throw new ArchInputError(field, `"${value}" contains ".."`, 'set it to an absolute path without ".." components');
  }
  return path.normalize(value).replace(/\/+$/, '') || '/';
}

/** Join below root and prove the result stays inside it. */
export function joinInside(root: string, ...parts: string[]): string {
  const joined = path.resolve(root, ...parts);
  const rel = path.relative(root, joined);
  // "..x" is a name inside root; only ".." itself or "../..." leaves it.
  if (rel === '' || (rel !== '..' && !rel.startsWith('../') && !path.isAbsolute(rel))) return joined;
  throw new ArchInputError('path', `"${parts.join('/')}" escapes ${root}`, 'use names without "/" or ".."');
}

/** ROOT/<namespace>/<container_id>, with both parts validated. */
export function containerDir(root: string, namespace: string, id: string): string {
  return joinInside(root, validateNamespace(namespace), validateContainerId(id));
}

/** A relative path that stays below its directory: plain components only. */
export function isPlainRelativePath(p: string): boolean {
  return (
    p.length > 0 &&
    p.length <= 4096 &&
    !p.startsWith('/') &&
    !p.includes('\0') &&
    p.split('/').every((c) => c !== '' && c !== '.' && c !== '..')
  );
}
