/**
 * listNodeContainers(node): what `arch-cli ls --node N` shows for a node
 * other than the local one. A workflow because a client cannot call an
 * activity on a node's queue directly; it carries no ARCH search attributes,
 * so `arch-cli status` does not list it.
 */
import { ApplicationFailure } from '@temporalio/workflow';
import { FailureType } from '../contract/failures.js';
import { checkNode, failureTypeOf, nodeUnavailable, onNode, rootMessage } from './common.js';
import type { ContainerSummary, ListNodeInput } from '../contract/types.js';

export async function listNodeContainers(input: ListNodeInput): Promise<ContainerSummary[]> {
  const node = checkNode(input.node, 'node');
  const t = { nodeStartTimeoutMs: input.nodeStartTimeoutMs ?? 10_000 };
  try {
    return await onNode(node, 'quick', t).listContainers({ namespaces: input.namespaces });
  } catch (err) {
    if (failureTypeOf(err) === FailureType.nodeUnavailable) throw nodeUnavailable(node, t.nodeStartTimeoutMs, err);
    throw ApplicationFailure.create({
      type: failureTypeOf(err) ?? 'ActivityFailed',
      message: `listing containers on ${node} failed: ${rootMessage(err)}`,
      nonRetryable: true,
    });
  }
}
