/** The Temporal SDK's logger interface on top of the node's pino logger. */
import type { Logger as SdkLogger, LogLevel, LogMetadata } from '@temporalio/worker';
import type { Logger } from '../core/log.js';

const LEVELS: Record<LogLevel, 'trace' | 'debug' | 'info' | 'warn' | 'error'> = {
  TRACE: 'trace',
  DEBUG: 'debug',
  INFO: 'info',
  WARN: 'warn',
  ERROR: 'error',
};

/** Errors in the SDK's metadata would log as {} (no enumerable fields): their message says why. */
function plain(meta: LogMetadata | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(meta ?? {})) {
    out[k] =
      v instanceof Error
        ? { name: v.name, message: v.message, ...(v.cause instanceof Error ? { cause: v.cause.message } : {}) }
        : v;
  }
  return out;
}

export function sdkLogger(log: Logger): SdkLogger {
  const emit = (level: LogLevel, message: string, meta?: LogMetadata) =>
    log[LEVELS[level] ?? 'info'](plain(meta), message);
  return {
    log: emit,
    trace: (m, meta) => emit('TRACE', m, meta),
    debug: (m, meta) => emit('DEBUG', m, meta),
    info: (m, meta) => emit('INFO', m, meta),
    warn: (m, meta) => emit('WARN', m, meta),
    error: (m, meta) => emit('ERROR', m, meta),
  };
}
