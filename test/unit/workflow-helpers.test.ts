import type { ContainerInfo } from '../../core/containerd.js';
import { ArchInputError } from '../../contract/errors.js';
import { isValidNodeName, nodeTaskQueue, workflowIds } from '../../contract/names.js';
import { overheadFromHistory, type HistoryEvent } from '../../temporal/history.js';
import { attributePairs, devServerSearchAttributeArgs, SA } from '../../contract/search-attributes.js';
import { runOptionsFor, specFromInfo, userMounts } from '../../activities/spec.js';

const OPTS = { allowedRoots: ['/var/lib/arch', '/mnt/shared'] };

function info(env: string[], extra: Partial<ContainerInfo['spec']> = {}): ContainerInfo {
  return {
    id: 'job-1',
    image: 'localhost/app:1',
    labels: { team: 'a' },
    runtime: { name: 'io.containerd.runc.v2', options: { BinaryName: '/usr/local/bin/arch-runc' } },
    snapshotter: 'overlayfs',
    snapshotKey: 'job-1',
    spec: {
      process: { env, args: ['/app', '--x'], cwd: '/srv' },
      mounts: [
        { destination: '/proc', type: 'proc', source: 'proc', options: [] },
        { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: [] },
        { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: [] },
        { destination: '/data', type: 'bind', source: '/srv/data', options: ['rbind', 'rw'] },
        { destination: '/etc/resolv.conf', type: 'bind', source: '/etc/resolv.conf', options: ['rbind', 'ro'] },
      ],
      linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] } as never,
      annotations: { a: 'b' },
      ...extra,
    },
    raw: {},
  };
}

describe('container spec replayed on another node', () => {
  test('ARCH-enabled: env, args, cwd, labels, user bind mounts only, host network detected', () => {
    const spec = specFromInfo(
      info(['PATH=/bin', 'ARCH_ENABLE=1', 'ARCH_CHECKPOINT_HOST_PATH=/var/lib/arch', 'ARCH_PRIORITY=3']),
      'default',
      OPTS,
    )!;
    expect(spec).toMatchObject({
      namespace: 'default',
      id: 'job-1',
      image: 'localhost/app:1',
      args: ['/app', '--x'],
      cwd: '/srv',
      labels: { team: 'a' },
      mounts: [{ type: 'bind', src: '/srv/data', dst: '/data', options: ['rbind', 'rw'] }],
      netHost: true,
      mode: 'local',
      priority: 3,
    });
    const run = runOptionsFor(spec, {
      archRunc: '/opt/arch/bin/arch-runc',
      runcRoot: '/run/x',
      logDir: '/var/log/arch/containers',
    });
    expect(run).toMatchObject({
      image: 'localhost/app:1',
      id: 'job-1',
      runcBinary: '/opt/arch/bin/arch-runc',
      runcRoot: '/run/x',
      netHost: true,
      detach: true,
      logFile: '/var/log/arch/containers/default/job-1.log',
    });
    expect(run.env).toContain('ARCH_ENABLE=1');
  });
  test('shared mode and private network', () => {
    const spec = specFromInfo(
      info(['ARCH_ENABLE=1', 'ARCH_SHAREDFS_HOST_PATH=/mnt/shared', 'ARCH_WORKDIR_CONTAINER_PATH=/work'], {
        linux: { namespaces: [{ type: 'network' }] } as never,
      }),
      'k8s.io',
      OPTS,
    )!;
    expect(spec.mode).toBe('shared');
    expect(spec.netHost).toBe(false);
  });
  test('not ARCH-enabled → undefined; invalid ARCH settings → ArchInputError', () => {
    expect(specFromInfo(info(['PATH=/bin']), 'default', OPTS)).toBeUndefined();
    expect(() => specFromInfo(info(['ARCH_ENABLE=yes']), 'default', OPTS)).toThrow(ArchInputError);
  });
  test('runtime mounts are never replayed', () => {
    expect(
      userMounts([
        { destination: '/dev/shm', type: 'tmpfs', source: 'shm' },
        { destination: '/x', type: 'none', source: '/y', options: ['bind'] },
      ]),
    ).toEqual([{ type: 'bind', src: '/y', dst: '/x', options: ['bind'] }]);
  });
});

describe('names and search attributes', () => {
  test('node names become task queues', () => {
    expect(isValidNodeName('node-a')).toBe(true);
    expect(isValidNodeName('ip-10-0-0-1.ec2.internal')).toBe(true);
    for (const bad of ['', '-a', 'a/b', 'a b', 'x'.repeat(64), 'a..']) expect(isValidNodeName(bad)).toBe(false);
    expect(nodeTaskQueue('node-a')).toBe('arch-node-node-a');
    expect(workflowIds.reclaimWatch('node-a')).toBe('arch-reclaim-watch-node-a');
  });
  test('dev server registers every attribute as Keyword', () => {
    expect(devServerSearchAttributeArgs()).toEqual([
      '--search-attribute',
      'ArchContainer=Keyword',
      '--search-attribute',
      'ArchNamespace=Keyword',
      '--search-attribute',
      'ArchSourceNode=Keyword',
      '--search-attribute',
      'ArchTargetNode=Keyword',
      '--search-attribute',
      'ArchOperation=Keyword',
      '--search-attribute',
      'ArchPhase=Keyword',
    ]);
  });
  test('typed pairs skip unset values', () => {
    expect(attributePairs({ container: 'default/a', operation: 'migrate', phase: '' })).toEqual([
      { key: SA.container, value: 'default/a' },
      { key: SA.operation, value: 'migrate' },
    ]);
  });
});

test('overhead from a history: wall time minus the union of activity intervals', () => {
  const t = (ms: number) => ({ seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 });
  const events = [
    { eventId: 1, eventType: 1, eventTime: t(0) },
    {
      eventId: 5,
      eventType: 10,
      eventTime: t(10),
      activityTaskScheduledEventAttributes: {
        activityType: { name: 'describeContainer' },
        taskQueue: { name: 'arch-node-a' },
      },
    },
    {
      eventId: 6,
      eventType: 10,
      eventTime: t(10),
      activityTaskScheduledEventAttributes: {
        activityType: { name: 'checkTarget' },
        taskQueue: { name: 'arch-node-b' },
      },
    },
    { eventId: 7, eventType: 11, eventTime: t(12), activityTaskStartedEventAttributes: { scheduledEventId: 5 } },
    { eventId: 8, eventType: 11, eventTime: t(14), activityTaskStartedEventAttributes: { scheduledEventId: 6 } },
    { eventId: 9, eventType: 12, eventTime: t(60), activityTaskCompletedEventAttributes: { scheduledEventId: 6 } },
    { eventId: 10, eventType: 12, eventTime: t(112), activityTaskCompletedEventAttributes: { scheduledEventId: 5 } },
    {
      eventId: 11,
      eventType: 10,
      eventTime: t(130),
      activityTaskScheduledEventAttributes: {
        activityType: { name: 'checkpointContainer' },
        taskQueue: { name: 'arch-node-a' },
      },
    },
    { eventId: 12, eventType: 11, eventTime: t(132), activityTaskStartedEventAttributes: { scheduledEventId: 11 } },
    { eventId: 13, eventType: 12, eventTime: t(1132), activityTaskCompletedEventAttributes: { scheduledEventId: 11 } },
    { eventId: 14, eventType: 2, eventTime: t(1150) },
  ];
  const o = overheadFromHistory(events);
  expect(o.totalMs).toBe(1150);
  expect(o.activityMs).toBe(100 + 1000);
  expect(o.overheadMs).toBe(50);
  expect(o.activities.map((a) => [a.activityType, a.queueMs, a.runMs])).toEqual([
    ['checkTarget', 4, 46],
    ['describeContainer', 2, 100],
    ['checkpointContainer', 2, 1000],
  ]);
});

test('overheadFromHistory: each workflow task started → completed, in order; a task that never completed is not counted', () => {
  const t = (ms: number) => ({ seconds: 1000, nanos: ms * 1e6 });
  const events: HistoryEvent[] = [
    { eventId: 1, eventType: 1, eventTime: t(0) },
    { eventId: 2, eventType: 5, eventTime: t(0) },
    { eventId: 3, eventType: 6, eventTime: t(4) },
    { eventId: 4, eventType: 7, eventTime: t(39) },
    { eventId: 5, eventType: 5, eventTime: t(50) },
    { eventId: 6, eventType: 6, eventTime: t(52) },
    { eventId: 7, eventType: 8, eventTime: t(60) }, // timed out: the worker never answered
    { eventId: 8, eventType: 5, eventTime: t(61) },
    { eventId: 9, eventType: 6, eventTime: t(63) },
    { eventId: 10, eventType: 7, eventTime: t(81) },
    { eventId: 11, eventType: 2, eventTime: t(82) },
  ];
  expect(overheadFromHistory(events).workflowTaskMs).toEqual([35, 18]);
  expect(overheadFromHistory(events).workflowTaskOutsideMs).toEqual([35, 18]);
});

test('overheadFromHistory: a workflow task while an activity runs adds nothing to the overhead', () => {
  const t = (ms: number) => ({ seconds: 1000, nanos: ms * 1e6 });
  const sched = (id: number, at: number): HistoryEvent => ({
    eventId: id,
    eventType: 10,
    eventTime: t(at),
    activityTaskScheduledEventAttributes: { activityType: { name: 'restoreContainer' }, taskQueue: { name: 'q' } },
  });
  const events: HistoryEvent[] = [
    { eventId: 1, eventType: 1, eventTime: t(0) },
    { eventId: 2, eventType: 6, eventTime: t(2) },
    { eventId: 3, eventType: 7, eventTime: t(22) },
    sched(4, 22),
    { eventId: 5, eventType: 11, eventTime: t(30), activityTaskStartedEventAttributes: { scheduledEventId: 4 } },
    // A signal's answer woke the workflow while the restore ran (10 ms inside it, 5 after it closed).
    { eventId: 6, eventType: 6, eventTime: t(90) },
    { eventId: 7, eventType: 12, eventTime: t(100), activityTaskCompletedEventAttributes: { scheduledEventId: 4 } },
    { eventId: 8, eventType: 7, eventTime: t(105) },
    { eventId: 9, eventType: 2, eventTime: t(106) },
  ];
  const o = overheadFromHistory(events);
  expect(o.workflowTaskMs).toEqual([20, 15]);
  expect(o.workflowTaskOutsideMs).toEqual([20, 5]);
  expect(o.overheadMs).toBe(106 - 70);
});
