/**
 * arch-cli's commander Command. One meaning per flag name, as each ecosystem
 * has it: `-n/--namespace` is a containerd namespace (as for ctr and
 * arch-worker), `--temporal-namespace` is Temporal's. `--namespace` once
 * named Temporal's namespace globally, and the commands that take a
 * containerd namespace lost it to that global option (`arch-cli dev
 * --namespace x` picked the Temporal namespace). So where no containerd
 * namespace is taken, `--namespace` is refused with a pointer to
 * `--temporal-namespace` rather than commander's bare "unknown option".
 */
import { Command } from 'commander';

const CONTAINERD_NAMESPACE_FLAGS = new Set(['--namespace', '-n']);
/** Flags that were renamed: what to write now. */
const RENAMED: Record<string, string> = { '--ns': '-n/--namespace (a containerd namespace)' };

export class ArchCommand extends Command {
  override createCommand(name?: string): ArchCommand {
    return new ArchCommand(name);
  }

  /** Called by commander (undeclared in its typings) for an option this command does not know. */
  unknownOption(flag: string): void {
    const name = flag.split('=')[0]!;
    if (CONTAINERD_NAMESPACE_FLAGS.has(name)) {
      const where = this.parent
        ? `\`${commandPath(this)}\` takes no containerd namespace`
        : 'it names a containerd namespace, and goes after the command that takes one (e.g. `arch-cli ls -n default`)';
      this.error(
        `error: ${name}: ${where}. For the Temporal namespace use --temporal-namespace NS (or TEMPORAL_NAMESPACE)`,
        { code: 'commander.unknownOption' },
      );
    }
    if (RENAMED[name]) this.error(`error: ${name} is now ${RENAMED[name]}`, { code: 'commander.unknownOption' });
    (Command.prototype as unknown as { unknownOption(flag: string): void }).unknownOption.call(this, flag);
  }
}

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}
