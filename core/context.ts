import type { Logger } from './log.js';
import { createLogger } from './log.js';
import { loadSettings, type Settings } from './settings.js';

/** What every node-side operation needs: the node's settings and a logger. */
export interface NodeContext {
  settings: Settings;
  log: Logger;
}

export function createNodeContext(component: string, env: NodeJS.ProcessEnv = process.env): NodeContext {
  const settings = loadSettings(env);
  return { settings, log: createLogger(settings, component) };
}
