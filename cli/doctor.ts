import type { Command } from 'commander';
import { loadSettings } from '../core/settings.js';
import { makeOut } from './output.js';

export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description(
      'check this node: runc, containerd, CRIU (and its breakpoint quirk), iptables, Temporal CLI; prints the fix for each failure',
    )
    .option('--write-config', 'record probe results (e.g. ARCH_CRIU_NO_BREAKPOINTS=1) in the settings file')
    .action(async (opts: { json?: boolean; writeConfig?: boolean }, cmd: Command) => {
      opts.json = !!cmd.optsWithGlobals().json;
      // The payload check reads Temporal's data converter (and @temporalio/common): loaded by doctor only.
      const [{ runDoctor, writeProbedSettings }, { payloadKeyCheck }] = await Promise.all([
        import('../core/doctor.js'),
        import('../temporal/payload-check.js'),
      ]);
      let settings = loadSettings();
      let checks = await runDoctor(settings, payloadKeyCheck);
      if (opts.writeConfig && (await writeProbedSettings(settings, checks))) {
        settings = loadSettings();
        checks = await runDoctor(settings, payloadKeyCheck);
        if (!opts.json) process.stdout.write(`wrote ARCH_CRIU_NO_BREAKPOINTS=1 to ${settings.configFile}\n`);
      }
      const failed = checks.filter((c) => !c.ok && !c.optional);
      if (opts.json) {
        makeOut(true).result({ ok: failed.length === 0, checks }, () => '');
      } else {
        for (const c of checks) {
          const mark = c.info ? 'info' : c.ok ? 'ok  ' : c.optional ? 'warn' : 'FAIL';
          process.stdout.write(`${mark}  ${c.name.padEnd(22)} ${c.version ?? ''}${c.detail ? `  ${c.detail}` : ''}\n`);
          if (!c.ok && c.fix) process.stdout.write(`      fix: ${c.fix}\n`);
        }
        process.stdout.write(
          failed.length ? `\n${failed.length} problem(s) found.\n` : '\nThis node is ready for ARCH.\n',
        );
      }
      process.exitCode = failed.length ? 1 : 0;
    });
}
