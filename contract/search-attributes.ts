/**
 * ARCH's custom search attributes: what an operator filters on in the
 * Temporal UI ("every migration of default/job-1", "everything touching
 * node-a", "what is stuck in phase restore").
 *
 * Workflow code imports this module, so it must stay deterministic: it
 * depends on @temporalio/common only.
 */
import { defineSearchAttributeKey, SearchAttributeType, type SearchAttributePair } from '@temporalio/common';

export const SA = {
  container: defineSearchAttributeKey('ArchContainer', SearchAttributeType.KEYWORD),
  namespace: defineSearchAttributeKey('ArchNamespace', SearchAttributeType.KEYWORD),
  sourceNode: defineSearchAttributeKey('ArchSourceNode', SearchAttributeType.KEYWORD),
  targetNode: defineSearchAttributeKey('ArchTargetNode', SearchAttributeType.KEYWORD),
  operation: defineSearchAttributeKey('ArchOperation', SearchAttributeType.KEYWORD),
  phase: defineSearchAttributeKey('ArchPhase', SearchAttributeType.KEYWORD),
} as const;

/** Name and type as the Temporal CLI spells them (`--search-attribute Name=Keyword`). */
export const SEARCH_ATTRIBUTE_DEFS: ReadonlyArray<{ name: string; cliType: 'Keyword' }> = Object.values(SA).map(
  (k) => ({
    name: k.name,
    cliType: 'Keyword',
  }),
);

/** `temporal server start-dev` arguments that register every ARCH attribute. */
export function devServerSearchAttributeArgs(): string[] {
  return SEARCH_ATTRIBUTE_DEFS.flatMap((d) => ['--search-attribute', `${d.name}=${d.cliType}`]);
}

export type Operation =
  'migrate' | 'drain' | 'reclaim-watch' | 'pause' | 'resume' | 'protect' | 'cluster' | 'recover-node' | 'recover';

export interface ArchAttributes {
  /** "ns/id" */
  container?: string;
  namespace?: string;
  sourceNode?: string;
  targetNode?: string;
  operation?: Operation;
  phase?: string;
}

/** Typed pairs for WorkflowStartOptions.typedSearchAttributes and upsertSearchAttributes. */
export function attributePairs(a: ArchAttributes): SearchAttributePair[] {
  const out: SearchAttributePair[] = [];
  for (const k of Object.keys(SA) as Array<keyof typeof SA>) {
    const v = a[k];
    if (v !== undefined && v !== '') out.push({ key: SA[k], value: v });
  }
  return out;
}
