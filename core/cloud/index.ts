export type { CloudProvider, NoticeWatcher, ReclaimNotice, WatcherOptions } from './types.js';
export { AwsNoticeWatcher, type AwsWatcherOptions } from './aws.js';
export { GcpNoticeWatcher, type GcpWatcherOptions } from './gcp.js';
export { AzureNoticeWatcher, type AzureWatcherOptions } from './azure.js';
export { createWatcher, detectProvider, NoneWatcher, type CloudWatcher, type CreateWatcherConfig } from './detect.js';
export { loadCloudConfig, CLOUD_ENV, DEFAULT_METADATA_URL, type CloudConfig, type ProviderChoice } from './config.js';
