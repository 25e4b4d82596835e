import fs from 'node:fs';
import path from 'node:path';
import { pino, destination, stdTimeFunctions, type DestinationStream, type Logger } from 'pino';
import type { Settings } from './settings.js';

export type { Logger };

/**
 * One JSON line per event. The shim's stdout/stderr belong to containerd, so
 * with a log file configured everything goes there (synchronously: the shim
 * exits or execs right after logging).
 */
export function createLogger(settings: Pick<Settings, 'logFile' | 'logLevel' | 'nodeName'>, component: string): Logger {
  let dest: DestinationStream;
  if (settings.logFile) {
    fs.mkdirSync(path.dirname(settings.logFile), { recursive: true });
    dest = destination({ dest: settings.logFile, sync: true, append: true, mkdir: true });
  } else {
    dest = destination({ dest: 2, sync: true });
  }
  return pino(
    { level: settings.logLevel, base: { node: settings.nodeName, component }, timestamp: stdTimeFunctions.isoTime },
    dest,
  );
}

/**
 * A logger that creates its pino logger on its first use: for a command that
 * mostly logs nothing (`arch-cli ls --local`), whose bundle then loads pino
 * only for a line to log (scripts/bundle-cli.ts).
 */
export function createLazyLogger(
  settings: Pick<Settings, 'logFile' | 'logLevel' | 'nodeName'>,
  component: string,
): Logger {
  let real: Logger | undefined;
  return new Proxy({} as Logger, {
    get(_, key) {
      real ??= createLogger(settings, component);
      const v = (real as unknown as Record<PropertyKey, unknown>)[key];
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(real) : v;
    },
  });
}
