import type { Command } from 'commander';
import { ArchInputError } from '../contract/errors.js';
import { validateNamespace } from '../contract/ids.js';
import type { FinalizeItem } from '../core/finalize.js';
import { parseDurationMs } from '../core/option-parsers.js';
import { loadSettings } from '../core/settings.js';
import { bytes as formatBytes, makeOut, ms as formatMs } from './output.js';

/**
 * `arch-cli finalize`: on a reclaim warning, checkpoint every running ARCH
 * container of this node now. No Temporal needed: it must work when
 * everything else on a dying node does not.
 */
export function registerFinalize(program: Command): void {
  program
    .command('finalize')
    .description('checkpoint every running ARCH container on this node now (reclaim warning); exits 1 if any failed')
    .option('--deadline <duration>', 'time left before the node goes away (e.g. 90s, 2m)', '120s')
    .option('--parallel <n>', 'at most this many checkpoints at once', '4')
    .option('-n, --namespace <ns...>', 'only these containerd namespaces')
    .option('--leave-running', 'keep the containers running after the checkpoint')
    .action(
      async (
        opts: { deadline: string; parallel: string; namespace?: string[]; leaveRunning?: boolean; json?: boolean },
        cmd: Command,
      ) => {
        opts.json = !!cmd.optsWithGlobals().json;
        const deadlineMs = parseDurationMs(opts.deadline, '--deadline');
        const maxParallel = Number(opts.parallel);
        if (!Number.isInteger(maxParallel) || maxParallel < 1)
          throw new ArchInputError(
            '--parallel',
            `"${opts.parallel}" is not a positive integer`,
            'pass e.g. --parallel 4',
          );
        opts.namespace?.forEach((ns) => validateNamespace(ns, '--namespace'));
        const settings = loadSettings();
        // `runc list` first (a small module): the rest of finalize loads while runc runs.
        const listing = import('../core/runc-listing.js').then((m) =>
          m.startRuncListing(settings, { namespaces: opts.namespace }),
        );
        // Loading blocks this thread: only once every runc runs (a few file-system replies away).
        await listing.catch(() => undefined); // finalizeNode reports a failure
        const [{ createNodeContext }, { finalizeNode }] = await Promise.all([
          import('../core/context.js'),
          import('../core/finalize.js'),
        ]);
        const ctx = createNodeContext('arch-cli');
        const line = (i: FinalizeItem) => {
          const what = i.status === 'checkpointed' ? 'ok    ' : i.status === 'deadline' ? 'LATE  ' : 'FAILED';
          process.stdout.write(
            `${what} ${`${i.namespace}/${i.id}`.padEnd(36)} ${formatBytes(i.sizeBytes).padStart(10)} ${formatMs(i.durationMs).padStart(8)}${i.tries ? `  ${i.tries} tries: a process of the job would not stop at first` : ''}${i.error ? `  ${i.error}` : ''}\n`,
          );
        };
        const report = await finalizeNode(ctx, {
          deadline: new Date(Date.now() + deadlineMs),
          maxParallel,
          namespaces: opts.namespace,
          leaveRunning: opts.leaveRunning,
          listing,
          onPlan: (plan, containers) => {
            if (opts.json) return;
            if (containers.length === 0) return; // said below, with the roots searched
            process.stdout.write(
              `finalize: ${containers.length} ARCH container(s), ${plan.parallelism} at a time, deadline in ${formatMs(deadlineMs)}\n`,
            );
            for (const p of plan.notExpectedToFit)
              process.stdout.write(`warning: ${p.namespace}/${p.id} is not expected to finish before the deadline\n`);
          },
          onResult: opts.json ? undefined : line,
        });
        if (!opts.json) for (const w of report.warnings) process.stderr.write(`warning: ${w.field}: ${w.message}\n`);
        makeOut(!!opts.json).result(report, () =>
          report.items.length === 0
            ? `no ARCH containers found (nothing to checkpoint); searched the runc roots:\n${report.runcRoots
                .map((r) => `  ${r.base}${r.exists ? '' : ' (absent)'}  [${r.source}]`)
                .join('\n')}`
            : `${report.items.filter((i) => i.status === 'checkpointed').length}/${report.items.length} checkpointed in ${formatMs(report.wallMs)}`,
        );
        process.exitCode = report.ok ? 0 : 1;
      },
    );
}
