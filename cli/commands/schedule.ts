/**
 * arch-cli schedule create NAME --node N --pause "<calendar>" --resume "<calendar>" [--tz ZONE]
 *                   ls | rm NAME | pause NAME | unpause NAME | trigger NAME --action pause|resume
 *
 * One ARCH schedule = two Temporal Schedules (arch-schedule-NAME-pause and
 * -resume) that start pauseContainers / resumeContainers for the node.
 */
import type { Client, ScheduleSummary } from '@temporalio/client';
import { Option, type Command } from 'commander';
import { ArchInputError } from '../../contract/errors.js';
import { validateContainerId, validateNamespace } from '../../contract/ids.js';
import { isValidNodeName, WORKFLOW_TASK_QUEUE, workflowIds } from '../../contract/names.js';
import type { PauseInput } from '../../contract/types.js';
import { checkTimeZone, parseCalendar } from '../calendar.js';
import { nodeArg, type CliContext } from '../context.js';
import { CliError, EXIT } from '../exit-codes.js';
import { table } from '../output.js';

const ACTIONS = ['pause', 'resume'] as const;
type Action = (typeof ACTIONS)[number];

const scheduleId = (name: string, action: Action) => `${workflowIds.schedule(name)}-${action}`;

function checkName(name: string): string {
  if (!isValidNodeName(name))
    throw new ArchInputError('schedule name', `"${name}" is not a valid name`, 'use letters, digits, ".", "_" and "-"');
  return name;
}

export interface ArchScheduleInfo {
  name: string;
  node: string;
  action: Action;
  calendar: string;
  timeZone: string;
  paused: boolean;
  nextRuns: string[];
  lastRun?: string;
}

async function archSchedules(client: Client): Promise<ArchScheduleInfo[]> {
  const out: ArchScheduleInfo[] = [];
  for await (const s of client.schedule.list() as AsyncIterable<ScheduleSummary>) {
    const m = s.memo as
      { archSchedule?: string; node?: string; action?: Action; calendar?: string; timeZone?: string } | undefined;
    if (!m?.archSchedule || !s.scheduleId.startsWith(workflowIds.schedule(''))) continue;
    out.push({
      name: m.archSchedule,
      node: m.node ?? '?',
      action: m.action ?? 'pause',
      calendar: m.calendar ?? '?',
      timeZone: m.timeZone ?? 'UTC',
      paused: s.state.paused,
      nextRuns: s.info.nextActionTimes.slice(0, 2).map((d) => d.toISOString()),
      lastRun: s.info.recentActions.at(-1)?.takenAt.toISOString(),
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name) || a.action.localeCompare(b.action));
}

/** Loaded with the client, when a command needs it (see cli/context.ts). */
const temporalClient = () => import('@temporalio/client');

async function requireSchedule(client: Client, name: string): Promise<void> {
  const { ScheduleNotFoundError } = await temporalClient();
  const ids = ACTIONS.map((a) => scheduleId(name, a));
  for (const id of ids) {
    try {
      await client.schedule.getHandle(id).describe();
      return;
    } catch (err) {
      if (!(err instanceof ScheduleNotFoundError)) throw err;
    }
  }
  throw new CliError(`no ARCH schedule named "${name}". Fix: see \`arch-cli schedule ls\``, EXIT.input);
}

export function registerSchedule(program: Command, ctx: CliContext): void {
  const sched = program
    .command('schedule')
    .description("calendar-driven pause/resume of a node's containers (Temporal Schedules)");

  sched
    .command('create')
    .argument('<name>', 'schedule name')
    .requiredOption('--node <node>', 'node whose containers are paused and resumed', nodeArg)
    .requiredOption('--pause <calendar>', 'when to pause: cron ("0 22 * * 1-5") or "[days] HH:MM" ("mon-fri 22:00")')
    .requiredOption('--resume <calendar>', 'when to resume, same syntax')
    .option('--tz <zone>', 'IANA time zone of the calendars', 'UTC')
    .option('-n, --namespace <ns>', 'only containers of this containerd namespace')
    .option('--ids <ids>', 'only these container ids (comma-separated)')
    .addOption(new Option('--paused', 'create the schedules paused (no runs until `schedule unpause`)'))
    .description('create the pause and resume schedules of a node')
    .action(
      async (
        name: string,
        o: {
          node: string;
          pause: string;
          resume: string;
          tz: string;
          namespace?: string;
          ids?: string;
          paused?: boolean;
        },
      ) => {
        const out = ctx.out();
        checkName(name);
        // Everything is validated before the first Schedule exists: bad input changes nothing.
        const cron: Record<Action, string> = {
          pause: parseCalendar(o.pause, '--pause'),
          resume: parseCalendar(o.resume, '--resume'),
        };
        const tz = checkTimeZone(o.tz);
        if (o.namespace) validateNamespace(o.namespace, '--namespace');
        const ids = o.ids ? o.ids.split(',').map((s) => validateContainerId(s.trim(), '--ids')) : undefined;
        const [{ ScheduleOverlapPolicy }, { attributePairs }, { nodeHasWorker }] = await Promise.all([
          temporalClient(),
          import('../../contract/search-attributes.js'),
          import('../connect.js'),
        ]);
        const client = await ctx.client();
        if (!(await nodeHasWorker(client, o.node)))
          out.info(`warning: node ${o.node} has no worker right now; the schedule runs will fail until it has one`);
        // The workflow module (and @temporalio/workflow) only when a workflow starts: the CLI's other commands do not load it.
        const { pauseContainers, resumeContainers } = await import('../../workflows/pause.js');
        const created: string[] = [];
        try {
          for (const action of ACTIONS) {
            const input: PauseInput = { node: o.node, selector: { namespace: o.namespace, ids }, schedule: name };
            await client.schedule.create({
              scheduleId: scheduleId(name, action),
              spec: { cronExpressions: [cron[action]], timezone: tz },
              action: {
                type: 'startWorkflow',
                workflowType: action === 'pause' ? pauseContainers : resumeContainers,
                workflowId: `${(action === 'pause' ? workflowIds.pause : workflowIds.resume)(o.node, `sched-${name}`)}`,
                taskQueue: WORKFLOW_TASK_QUEUE,
                args: [input],
                typedSearchAttributes: attributePairs({
                  sourceNode: o.node,
                  targetNode: o.node,
                  operation: action,
                  phase: 'scheduled',
                }),
              },
              policies: { overlap: ScheduleOverlapPolicy.BUFFER_ONE, catchupWindow: '10m' },
              state: { paused: !!o.paused, note: `ARCH ${action} of ${o.node} (schedule ${name})` },
              memo: { archSchedule: name, node: o.node, action, calendar: cron[action], timeZone: tz },
            });
            created.push(scheduleId(name, action));
          }
        } catch (err) {
          for (const id of created)
            await client.schedule
              .getHandle(id)
              .delete()
              .catch(() => undefined);
          const msg = (err as Error).message;
          if (/already (exists|running)/i.test(msg) || (err as Error).name === 'ScheduleAlreadyRunning') {
            throw new CliError(
              `schedule "${name}" already exists. Fix: \`arch-cli schedule rm ${name}\` first, or pick another name`,
              EXIT.input,
            );
          }
          if (/invalid/i.test(msg)) throw new CliError(`the server refused the schedule: ${msg}`, EXIT.input);
          throw err;
        }
        out.result(
          { name, node: o.node, pause: cron.pause, resume: cron.resume, timeZone: tz, scheduleIds: created },
          () =>
            `schedule ${name}: pause ${o.node} at "${cron.pause}", resume at "${cron.resume}" (${tz})${o.paused ? ', created paused' : ''}`,
        );
      },
    );

  sched
    .command('ls')
    .description('list ARCH schedules')
    .action(async () => {
      const out = ctx.out();
      const list = await archSchedules(await ctx.client());
      out.result(list, () =>
        list.length
          ? table(
              list.map((s) => [
                s.name,
                s.node,
                s.action,
                s.calendar,
                s.timeZone,
                s.paused ? 'paused' : 'active',
                s.nextRuns[0] ?? '-',
                s.lastRun ?? '-',
              ]),
              ['NAME', 'NODE', 'ACTION', 'CALENDAR', 'TZ', 'STATE', 'NEXT', 'LAST'],
            )
          : 'no ARCH schedules',
      );
    });

  sched
    .command('rm')
    .argument('<name>')
    .description('delete a schedule (both its pause and resume parts)')
    .action(async (name: string) => {
      const client = await ctx.client();
      await requireSchedule(client, checkName(name));
      const { ScheduleNotFoundError } = await temporalClient();
      for (const a of ACTIONS)
        await client.schedule
          .getHandle(scheduleId(name, a))
          .delete()
          .catch((err: unknown) => {
            if (!(err instanceof ScheduleNotFoundError)) throw err;
          });
      ctx.out().result({ name, deleted: true }, () => `schedule ${name} deleted`);
    });

  for (const verb of ['pause', 'unpause'] as const) {
    sched
      .command(verb)
      .argument('<name>')
      .description(
        verb === 'pause' ? 'stop the schedule from firing (containers are not touched)' : 'let the schedule fire again',
      )
      .action(async (name: string) => {
        const client = await ctx.client();
        await requireSchedule(client, checkName(name));
        for (const a of ACTIONS) {
          const h = client.schedule.getHandle(scheduleId(name, a));
          await (verb === 'pause' ? h.pause('arch-cli schedule pause') : h.unpause('arch-cli schedule unpause'));
        }
        ctx.out().result({ name, paused: verb === 'pause' }, () => `schedule ${name} ${verb}d`);
      });
  }

  sched
    .command('trigger')
    .argument('<name>')
    .requiredOption('--action <action>', 'which part to run now: pause or resume')
    .description('run the pause or the resume of a schedule now')
    .action(async (name: string, o: { action: string }) => {
      if (!ACTIONS.includes(o.action as Action))
        throw new ArchInputError(
          '--action',
          `"${o.action}" is not pause or resume`,
          'pass --action pause or --action resume',
        );
      const client = await ctx.client();
      await requireSchedule(client, checkName(name));
      const { ScheduleOverlapPolicy } = await temporalClient();
      await client.schedule.getHandle(scheduleId(name, o.action as Action)).trigger(ScheduleOverlapPolicy.ALLOW_ALL);
      ctx.out().result({ name, action: o.action, triggered: true }, () => `schedule ${name}: ${o.action} triggered`);
    });
}
