import fs from 'node:fs';
import { criuRunEnv } from '../../core/criu-network-lock.js';

/**
 * A dump's seize timeout reaches CRIU through its configuration file (runc
 * passes none): one file per timeout, next to the node's other CRIU files,
 * and none at all for a run that names no timeout (CRIU's 10 s).
 */
const settings = { criu: '/opt/arch/criu/bin/criu', criuNetworkLock: 'iptables' as const, criuNoBreakpoints: false };
const configOf = (env: Record<string, string>) =>
  env.CRIU_CONFIG_FILE ? fs.readFileSync(env.CRIU_CONFIG_FILE, 'utf8').split('\n') : [];

test("each try's seize timeout is a line of its own CRIU configuration file", async () => {
  const [first, last] = await Promise.all([
    criuRunEnv(settings, undefined, undefined, { own: true, seizeTimeoutS: 2 }),
    criuRunEnv(settings, undefined, undefined, { own: true, seizeTimeoutS: 10 }),
  ]);
  expect(first.env.CRIU_CONFIG_FILE).not.toBe(last.env.CRIU_CONFIG_FILE);
  expect(configOf(first.env)).toContain('timeout 2');
  expect(configOf(last.env)).toContain('timeout 10');
  expect(configOf(first.env)).toContain('tcp-close'); // the other lines of ARCH's own dumps stay
});

test('a run that names no timeout leaves CRIU its own', async () => {
  const own = await criuRunEnv(settings, undefined, undefined, { own: true });
  expect(configOf(own.env).filter((l) => l.startsWith('timeout'))).toEqual([]);
  const passedThrough = await criuRunEnv(settings);
  expect(passedThrough.env.CRIU_CONFIG_FILE).toBeUndefined();
});
