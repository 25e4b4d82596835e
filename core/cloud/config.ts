import { ArchInputError } from '../../contract/errors.js';
import { checkBaseUrl } from './options.js';
import { DEFAULT_POLL_MS, type CloudProvider } from './types.js';

/**
 * Environment for the notice watcher (read by the worker on each node):
 *
 *   ARCH_CLOUD_PROVIDER  aws | gcp | azure | auto | none   (default none)
 *                        auto probes the metadata service once at start-up.
 *   ARCH_METADATA_URL    metadata service origin (default http://169.254.169.254,
 *                        the link-local address all three clouds serve; GCP's
 *                        metadata.google.internal resolves to it too).
 *   ARCH_REBALANCE       act | log (default log): whether an AWS rebalance
 *                        recommendation starts a drain or is only logged.
 *   ARCH_NOTICE_POLL_MS  poll interval in ms, 10..30000 (default 2000).
 *   ARCH_AZURE_VM_NAME   this VM's name in Azure Scheduled Events (default:
 *                        looked up from IMDS compute/name).
 *
 * The default provider is "none" so that nothing ever probes a metadata
 * address unless the operator asked for it.
 */
export const CLOUD_ENV = {
  provider: 'ARCH_CLOUD_PROVIDER',
  metadataUrl: 'ARCH_METADATA_URL',
  rebalance: 'ARCH_REBALANCE',
  pollMs: 'ARCH_NOTICE_POLL_MS',
  azureVmName: 'ARCH_AZURE_VM_NAME',
} as const;

/** Production default only; tests always pass a loopback URL. */
export const DEFAULT_METADATA_URL = 'http://169.254.169.254';

export type ProviderChoice = CloudProvider | 'none' | 'auto';
const PROVIDERS: readonly ProviderChoice[] = ['aws', 'gcp', 'azure', 'auto', 'none'];

/** The poll interval must leave most of a 30 s notice for the drain. */
const MIN_POLL_MS = 10;
const MAX_POLL_MS = 30_000;

export interface CloudConfig {
  provider: ProviderChoice;
  baseUrl: string;
  pollMs: number;
  rebalance: 'act' | 'log';
  azureVmName?: string;
}

export function loadCloudConfig(env: Record<string, string | undefined> = process.env): CloudConfig {
  const get = (k: string): string | undefined => {
    const v = env[k]?.trim();
    return v ? v : undefined;
  };

  const provider = (get(CLOUD_ENV.provider) ?? 'none').toLowerCase() as ProviderChoice;
  if (!PROVIDERS.includes(provider)) {
    throw new ArchInputError(
      CLOUD_ENV.provider,
      `"${get(CLOUD_ENV.provider)}" is not a known provider`,
      `set ${CLOUD_ENV.provider} to one of ${PROVIDERS.join(', ')}`,
    );
  }

  const rawUrl = get(CLOUD_ENV.metadataUrl) ?? DEFAULT_METADATA_URL;
  let baseUrl: string;
  try {
    baseUrl = checkBaseUrl(rawUrl, CLOUD_ENV.metadataUrl);
  } catch {
    throw new ArchInputError(
      CLOUD_ENV.metadataUrl,
      `"${rawUrl}" is not an http(s) origin`,
      `set ${CLOUD_ENV.metadataUrl} to e.g. ${DEFAULT_METADATA_URL}, or unset it`,
    );
  }

  const rebalance = (get(CLOUD_ENV.rebalance) ?? 'log').toLowerCase();
  if (rebalance !== 'act' && rebalance !== 'log') {
    throw new ArchInputError(
      CLOUD_ENV.rebalance,
      `"${get(CLOUD_ENV.rebalance)}" is not act or log`,
      `set ${CLOUD_ENV.rebalance}=act to drain on AWS rebalance recommendations or ${CLOUD_ENV.rebalance}=log to only log them`,
    );
  }

  const rawPoll = get(CLOUD_ENV.pollMs);
  const pollMs = rawPoll === undefined ? DEFAULT_POLL_MS : Number(rawPoll);
  if (!Number.isInteger(pollMs) || pollMs < MIN_POLL_MS || pollMs > MAX_POLL_MS) {
    throw new ArchInputError(
      CLOUD_ENV.pollMs,
      `"${rawPoll}" is not a whole number of milliseconds in ${MIN_POLL_MS}..${MAX_POLL_MS}`,
      `set ${CLOUD_ENV.pollMs}=${DEFAULT_POLL_MS} (notices give only 30 s on GCP and Azure)`,
    );
  }

  const azureVmName = get(CLOUD_ENV.azureVmName);
  // Azure VM and scale-set instance names: letters, digits, '-', '_', '.', at most 64.
  if (azureVmName !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(azureVmName)) {
    throw new ArchInputError(
      CLOUD_ENV.azureVmName,
      `"${azureVmName}" is not a valid Azure VM name`,
      `set ${CLOUD_ENV.azureVmName} to the name shown in the portal, or unset it to look it up from IMDS`,
    );
  }

  return { provider, baseUrl, pollMs, rebalance, ...(azureVmName ? { azureVmName } : {}) };
}
