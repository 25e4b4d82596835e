/**
 * Who creates a container, and so who may create it again: ARCH itself for
 * plain containerd clients (ctr, the containerd API), else the orchestrator
 * that made it. Workflow code imports this module: plain data only.
 */

/** Built-in managers; ARCH_MANAGED_NAMESPACES may name others (nerdctl, ecs, ...). */
export const Manager = {
  /** ctr or another plain containerd client: ARCH may recreate the container itself. */
  containerd: 'containerd',
  docker: 'docker',
  /** The kubelet, through containerd's CRI plugin. */
  kubernetes: 'kubernetes',
} as const;

/** A manager name: one of Manager's, or a name from ARCH_MANAGED_NAMESPACES. */
export type ManagerName = string;

/** True when an orchestrator, not ARCH, decides where and when the container is created. */
export function isManaged(manager: ManagerName | undefined): boolean {
  return manager !== undefined && manager !== Manager.containerd;
}

/** What a user does instead of `arch-cli migrate` for a container that `manager` created. */
export function howToMove(manager: ManagerName): string {
  if (manager === Manager.kubernetes)
    return (
      'give the pod ARCH_CHECKPOINT_ID and shared or object storage, run `arch-cli finalize` on this node, ' +
      'then drain the node or delete the pod: the new pod restores the checkpoint wherever Kubernetes schedules it'
    );
  if (manager === Manager.docker)
    return (
      'give it ARCH_CHECKPOINT_ID and storage the target node sees, checkpoint and stop it with `arch-cli finalize` ' +
      'on this node, then `docker run` it on the target node (or `docker start` it again here): arch-runc restores it'
    );
  return `checkpoint it with \`arch-cli finalize\` and let ${manager} create it again; arch-runc restores it on create`;
}

const DISPLAY: Record<string, string> = { docker: 'Docker', kubernetes: 'Kubernetes' };

/** The manager as users know it: "Kubernetes", "Docker", or the name from ARCH_MANAGED_NAMESPACES. */
export const managerDisplay = (manager: ManagerName): string => DISPLAY[manager] ?? manager;

/** What drain and pause did with a managed container: ARCH's part ends at the checkpoint. */
export const leftToManager = (manager: ManagerName): string =>
  `checkpointed; left to ${managerDisplay(manager)} to recreate`;

/** Why resume did not create a managed container again. */
export const resumeRefusal = (manager: ManagerName): string =>
  `not created: ${managerDisplay(manager)} creates it (start it there; arch-runc restores its checkpoint)`;

/** The refusal of a move ARCH would have to do behind the orchestrator's back (two copies of the job). */
export function managedMoveRefusal(ref: string, manager: ManagerName): string {
  const who = managerDisplay(manager);
  return (
    `${ref} is managed by ${who}: ARCH will not create it on another node behind ${who}'s back ` +
    `(${who} would not know that copy and could start a second one of the job). Fix: ${howToMove(manager)}`
  );
}
