import fs from 'node:fs';
import { ArchInputError } from '../contract/errors.js';

/** A PEM file a node setting names (`field`): its bytes, or an input error naming the setting and the fix. */
export function readPemFile(file: string, field: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new ArchInputError(
      field,
      `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      'point it at a readable PEM file',
    );
  }
}
