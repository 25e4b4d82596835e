import { AwsNoticeWatcher } from '../../core/cloud/aws.js';
import { AzureNoticeWatcher } from '../../core/cloud/azure.js';
import { CLOUD_ENV, createWatcher, DEFAULT_METADATA_URL, loadCloudConfig } from '../../core/cloud/detect.js';
import { GcpNoticeWatcher } from '../../core/cloud/gcp.js';
import type { ReclaimNotice } from '../../core/cloud/types.js';
import {
  captureLogger,
  FakeAwsImds,
  FakeAzureImds,
  FakeGcpMetadata,
  unusedPort,
  waitUntil,
  useCloudTestHooks,
} from '../support/fake-metadata.js';
import { inputError } from '../support/input-error.js';

const cleanups = useCloudTestHooks();

describe('loadCloudConfig', () => {
  test('defaults: provider none, link-local metadata origin, 2 s polls, rebalance logged', () => {
    expect(loadCloudConfig({})).toEqual({
      provider: 'none',
      baseUrl: DEFAULT_METADATA_URL,
      pollMs: 2000,
      rebalance: 'log',
    });
    expect(DEFAULT_METADATA_URL).toBe('http://169.254.169.254');
  });

  test('reads every variable', () => {
    expect(
      loadCloudConfig({
        ARCH_CLOUD_PROVIDER: 'Azure',
        ARCH_METADATA_URL: 'http://127.0.0.1:8080/',
        ARCH_REBALANCE: 'act',
        ARCH_NOTICE_POLL_MS: '500',
        ARCH_AZURE_VM_NAME: 'spot-vm_01',
      }),
    ).toEqual({
      provider: 'azure',
      baseUrl: 'http://127.0.0.1:8080',
      pollMs: 500,
      rebalance: 'act',
      azureVmName: 'spot-vm_01',
    });
  });

  test.each([
    [CLOUD_ENV.provider, 'ec2'],
    [CLOUD_ENV.metadataUrl, '169.254.169.254'],
    [CLOUD_ENV.metadataUrl, 'ftp://127.0.0.1'],
    [CLOUD_ENV.rebalance, 'maybe'],
    [CLOUD_ENV.pollMs, '5s'],
    [CLOUD_ENV.pollMs, '600000'],
    [CLOUD_ENV.pollMs, '0'],
    [CLOUD_ENV.azureVmName, 'bad name!'],
  ])('rejects %s=%s naming the variable and the fix', (name, value) => {
    const err = inputError(() => loadCloudConfig({ [name]: value }));
    expect(err.field).toBe(name);
    expect(err.message).toContain(value);
    expect(err.fix).toContain(name);
  });
});

describe('createWatcher', () => {
  const { logger } = captureLogger();

  test('builds the named provider without touching the network', async () => {
    const refused = `http://127.0.0.1:${await unusedPort()}`;
    expect(await createWatcher({ provider: 'aws', baseUrl: refused, logger })).toBeInstanceOf(AwsNoticeWatcher);
    expect(await createWatcher({ provider: 'gcp', baseUrl: refused, logger })).toBeInstanceOf(GcpNoticeWatcher);
    expect(await createWatcher({ provider: 'azure', baseUrl: refused, logger })).toBeInstanceOf(AzureNoticeWatcher);
    const none = await createWatcher({ provider: 'none', baseUrl: refused, logger });
    expect(none.provider).toBe('none');
    none.start(async () => {});
    await none.stop();
  });

  test('auto: finds each provider by its own protocol, and none when nothing answers', async () => {
    const aws = await FakeAwsImds.start();
    const gcp = await FakeGcpMetadata.start();
    const azure = await FakeAzureImds.start();
    cleanups.push(
      () => aws.close(),
      () => gcp.close(),
      () => azure.close(),
    );
    const refused = `http://127.0.0.1:${await unusedPort()}`;

    // One origin answering for one provider: the other probes get 4xx there.
    for (const [fakeServer, expected] of [
      [aws, 'aws'],
      [gcp, 'gcp'],
      [azure, 'azure'],
    ] as const) {
      const w = await createWatcher({ provider: 'auto', baseUrl: fakeServer.url, logger, probeTimeoutMs: 1000 });
      expect(w.provider).toBe(expected);
    }
    const none = await createWatcher({ provider: 'auto', baseUrl: refused, logger, probeTimeoutMs: 1000 });
    expect(none.provider).toBe('none');
  });

  test('auto with per-provider origins, then end to end: detected watcher delivers a notice', async () => {
    const azure = await FakeAzureImds.start({ vmName: 'auto-vm' });
    cleanups.push(() => azure.close());
    const refused = `http://127.0.0.1:${await unusedPort()}`;
    const watcher = await createWatcher({
      provider: 'auto',
      baseUrl: refused,
      baseUrls: { azure: azure.url },
      logger,
      pollMs: 50,
      probeTimeoutMs: 1000,
    });
    expect(watcher.provider).toBe('azure');
    const notices: ReclaimNotice[] = [];
    watcher.start(async (n) => void notices.push(n));
    cleanups.push(() => watcher.stop());
    const id = azure.scheduleEvent();
    await waitUntil(() => notices.length === 1 && azure.acks.length === 1, 'notice and ack');
    expect(notices[0]!.eventId).toBe(id);
  });

  test('passes pollMs and rebalance through to the AWS watcher', async () => {
    const aws = await FakeAwsImds.start();
    cleanups.push(() => aws.close());
    aws.scheduleRebalance('2026-11-28T16:58:00Z');
    const watcher = await createWatcher({ provider: 'aws', baseUrl: aws.url, logger, pollMs: 50, rebalance: 'act' });
    const notices: ReclaimNotice[] = [];
    watcher.start(async (n) => void notices.push(n));
    cleanups.push(() => watcher.stop());
    await waitUntil(() => notices.length === 1, 'rebalance acted on');
    expect(notices[0]!.deadline.toISOString()).toBe('2026-11-28T17:00:00.000Z');
  });
});
