/** The demo's default places: a light module, read by `arch-cli --help` and by the demo itself. */
export const DEFAULT_STATE_DIR = '/var/lib/arch/demo';
export const DEFAULT_RUN_DIR = '/run/arch/demo';
