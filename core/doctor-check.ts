/** One line of `arch-cli doctor` (core/doctor.ts runs them; core/containerd-config.ts adds the containerd ones). */
export interface Check {
  name: string;
  ok: boolean;
  version?: string;
  detail?: string;
  fix?: string;
  /** A failed optional check is a warning, not a failure. */
  optional?: boolean;
  /** Neither good nor bad: what this node can do (always ok). */
  info?: boolean;
}
