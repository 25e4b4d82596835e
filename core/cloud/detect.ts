import type { Logger } from 'pino';
import { AwsNoticeWatcher, TOKEN_PATH, TOKEN_TTL_HEADER, type AwsWatcherOptions } from './aws.js';
import { AzureNoticeWatcher, VM_NAME_PATH, type AzureWatcherOptions } from './azure.js';
import type { ProviderChoice } from './config.js';
import { GcpNoticeWatcher, type GcpWatcherOptions } from './gcp.js';
import { joinUrl, metadataRequest } from './http.js';
import { checkBaseUrl } from './options.js';
import type { CloudProvider, NoticeWatcher, ReclaimNotice } from './types.js';

export { loadCloudConfig, CLOUD_ENV, DEFAULT_METADATA_URL, type CloudConfig, type ProviderChoice } from './config.js';

/** A watcher that also says which provider it watches ('none' never delivers). */
export type CloudWatcher = NoticeWatcher & { readonly provider: CloudProvider | 'none' };

type Extra<T> = Partial<Omit<T, 'baseUrl' | 'logger'>>;

export interface CreateWatcherConfig {
  provider: ProviderChoice;
  logger: Logger;
  /** Required: production passes loadCloudConfig().baseUrl; tests pass a loopback URL. */
  baseUrl: string;
  /** Per-provider origin overrides (e.g. one fake server per provider in tests). */
  baseUrls?: Partial<Record<CloudProvider, string>>;
  pollMs?: number;
  rebalance?: 'act' | 'log';
  azureVmName?: string;
  requestTimeoutMs?: number;
  maxBackoffMs?: number;
  /** How long 'auto' waits for each probe. Default 1000 ms. */
  probeTimeoutMs?: number;
  aws?: Extra<AwsWatcherOptions>;
  gcp?: Extra<GcpWatcherOptions>;
  azure?: Extra<AzureWatcherOptions>;
}

export class NoneWatcher implements CloudWatcher {
  readonly provider = 'none' as const;
  constructor(private readonly logger: Logger) {}
  start(_onNotice: (n: ReclaimNotice) => Promise<void>): void {
    this.logger.info({ event: 'cloud.watch.disabled' }, 'no cloud provider: reclaim notices are not watched');
  }
  async stop(): Promise<void> {}
}

export async function createWatcher(config: CreateWatcherConfig): Promise<CloudWatcher> {
  let provider = config.provider;
  if (provider === 'auto') {
    provider = (await detectProvider(config)) ?? 'none';
  }
  const base = (p: CloudProvider): string => config.baseUrls?.[p] ?? config.baseUrl;
  const common = {
    logger: config.logger,
    pollMs: config.pollMs,
    requestTimeoutMs: config.requestTimeoutMs,
    maxBackoffMs: config.maxBackoffMs,
  };
  switch (provider) {
    case 'aws':
      return new AwsNoticeWatcher({ ...common, onRebalance: config.rebalance, ...config.aws, baseUrl: base('aws') });
    case 'gcp':
      return new GcpNoticeWatcher({ ...common, ...config.gcp, baseUrl: base('gcp') });
    case 'azure':
      return new AzureNoticeWatcher({ ...common, vmName: config.azureVmName, ...config.azure, baseUrl: base('azure') });
    case 'none':
      return new NoneWatcher(config.logger);
  }
}

/**
 * Ask each provider's metadata service a question only it answers, all at
 * once with a short timeout. Returns undefined when none answers (not a
 * cloud VM, or metadata blocked). Order of preference when several answer:
 * GCP (its response header is the strongest evidence), AWS, Azure.
 */
export async function detectProvider(
  config: Pick<CreateWatcherConfig, 'baseUrl' | 'baseUrls' | 'probeTimeoutMs' | 'logger'>,
): Promise<CloudProvider | undefined> {
  const timeoutMs = config.probeTimeoutMs ?? 1000;
  const base = (p: CloudProvider): string => checkBaseUrl(config.baseUrls?.[p] ?? config.baseUrl, 'baseUrl');
  const order: CloudProvider[] = ['gcp', 'aws', 'azure'];
  const probes: Record<CloudProvider, () => Promise<boolean>> = {
    gcp: async () => {
      const res = await metadataRequest(joinUrl(base('gcp'), '/computeMetadata/v1/'), {
        headers: { 'Metadata-Flavor': 'Google' },
        timeoutMs,
      });
      return res.status === 200 && res.headers.get('metadata-flavor') === 'Google';
    },
    aws: async () => {
      const res = await metadataRequest(joinUrl(base('aws'), TOKEN_PATH), {
        method: 'PUT',
        headers: { [TOKEN_TTL_HEADER]: '60' },
        timeoutMs,
      });
      return res.status === 200 && res.body.trim().length > 0;
    },
    azure: async () => {
      const res = await metadataRequest(joinUrl(base('azure'), VM_NAME_PATH), {
        headers: { Metadata: 'true' },
        timeoutMs,
      });
      return res.status === 200 && res.body.trim().length > 0;
    },
  };
  const results = await Promise.all(order.map((p) => probes[p]().catch(() => false)));
  const found = order.find((_, i) => results[i]);
  config.logger.info(
    {
      event: 'cloud.detect',
      provider: found ?? 'none',
      probes: Object.fromEntries(order.map((p, i) => [p, results[i]])),
    },
    found ? `cloud provider detected: ${found}` : 'no cloud metadata service answered',
  );
  return found;
}
