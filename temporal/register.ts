/**
 * Register ARCH's search attributes on a running server (a dev server
 * started elsewhere, or a real cluster): the same as
 * `temporal operator search-attribute create --name ArchContainer --type Keyword ...`.
 * Idempotent: attributes that already exist are left alone; one that exists
 * with another type is an error the operator must resolve.
 */
import type { Connection } from '@temporalio/client';
import { SEARCH_ATTRIBUTE_DEFS } from '../contract/search-attributes.js';

// temporal.api.enums.v1.IndexedValueType: @temporalio/proto is not a direct
// dependency and its CJS build has no ESM named exports, so the values are spelled out.
const KEYWORD = 2;
const TYPE_NAMES = ['Unspecified', 'Text', 'Keyword', 'Int', 'Double', 'Bool', 'Datetime', 'KeywordList'];

export async function ensureSearchAttributes(
  connection: Pick<Connection, 'operatorService'>,
  namespace: string,
): Promise<{ added: string[]; present: string[] }> {
  const existing = await connection.operatorService.listSearchAttributes({ namespace });
  const custom = existing.customAttributes ?? {};
  const added: string[] = [];
  const present: string[] = [];
  const toAdd: Record<string, number> = {};
  for (const d of SEARCH_ATTRIBUTE_DEFS) {
    const have = custom[d.name];
    if (have === undefined || have === null) {
      toAdd[d.name] = KEYWORD;
      added.push(d.name);
    } else if (have !== KEYWORD) {
      throw new Error(
        `search attribute ${d.name} exists with type ${TYPE_NAMES[Number(have)] ?? have}, ARCH needs Keyword: remove it or use another namespace`,
      );
    } else {
      present.push(d.name);
    }
  }
  if (added.length) await connection.operatorService.addSearchAttributes({ namespace, searchAttributes: toAdd });
  return { added, present };
}

/** Shell commands an operator runs on a real cluster (`arch-cli temporal-setup --print`). */
export function searchAttributeCreateCommands(namespace = 'default'): string[] {
  return SEARCH_ATTRIBUTE_DEFS.map(
    (d) => `temporal operator search-attribute create --namespace ${namespace} --name ${d.name} --type ${d.cliType}`,
  );
}
