/** `arch-cli doctor`: is what this node puts in Temporal encrypted, and with which key? */
import type { Check } from '../core/doctor-check.js';
import { errorMessage } from '../contract/errors.js';
import { settingsVars, type Settings } from '../core/settings.js';
import { loadPayloadKeys } from './codec.js';
import { isLoopbackAddress } from './data-converter.js';

export function payloadKeyCheck(
  settings: Pick<Settings, 'configFile' | 'temporalAddress'>,
  env: NodeJS.ProcessEnv = process.env,
): Check {
  const name = 'payload encryption';
  const vars = settingsVars({ ...env, ARCH_CONFIG: settings.configFile }).vars;
  try {
    const { keys, source } = loadPayloadKeys(vars);
    if (keys.length > 0) {
      // The id, never the key: compare it across nodes, it must be the same everywhere.
      return {
        name,
        ok: true,
        version: `key ${keys[0]!.id}`,
        detail: `AES-256-GCM, key from ${source}${keys.length > 1 ? ` (+${keys.length - 1} older for decryption)` : ''}; every node and CLI of the cluster must show the same key id`,
      };
    }
  } catch (err) {
    return {
      name,
      ok: false,
      detail: errorMessage(err),
      fix: 'fix the key file (see the message), the same key on every node and CLI',
    };
  }
  const local = isLoopbackAddress(settings.temporalAddress);
  return {
    name,
    ok: false,
    // Plaintext to a Temporal on this host only concerns this host; anywhere else the worker refuses to start.
    optional: local,
    detail: `no payload key: container environments and transfer tokens go to Temporal (${settings.temporalAddress}) in plaintext${local ? '' : '; arch-worker and arch-cli refuse this Temporal unless ARCH_PAYLOAD_PLAINTEXT=1'}`,
    fix: 'run install.sh on the first node (creates /etc/arch/keys/payload.key, mode 0600) and copy that file to every other node and CLI host; or set ARCH_PAYLOAD_KEY_FILE',
  };
}
