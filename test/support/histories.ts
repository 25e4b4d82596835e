import fs from 'node:fs';
import path from 'node:path';
import { historyFromJSON, historyToJSON, type History } from '@temporalio/common/lib/proto-utils.js';
import { keyLines } from '../../core/key-text.js';
import { AesGcmPayloadCodec, parseKey } from '../../temporal/codec.js';
import { REPO_ROOT } from './images.js';

/**
 * Recorded workflow histories (test/fixtures/histories/<workflowType>-<case>.json):
 * scripts/record-histories.ts writes them from real runs, the replay test
 * replays every one against today's workflow code.
 */

export const HISTORIES_DIR = path.join(REPO_ROOT, 'test', 'fixtures', 'histories');

/**
 * The payload key the histories were recorded with: a TEST key, committed on
 * purpose (a replay must decode the payloads), never a cluster's.
 */
export const TEST_KEY_FILE = path.join(HISTORIES_DIR, 'payload-test.key');

/** The key as ARCH_PAYLOAD_KEY takes it (the file's comment lines left out). */
export function testPayloadKey(): string {
  const line = keyLines(fs.readFileSync(TEST_KEY_FILE, 'utf8'))[0];
  if (!line) throw new Error(`${TEST_KEY_FILE} holds no key`);
  return line;
}

/** The codec a worker with the test key has: it refuses plaintext, as the recording workers did. */
export function testCodec(): AesGcmPayloadCodec {
  return new AesGcmPayloadCodec([parseKey(testPayloadKey(), TEST_KEY_FILE)], { acceptPlaintext: false });
}

/**
 * History <-> JSON, in the form `temporal workflow show --output json`, the
 * UI's download and the SDK's historyFromJSON use. (The SDK's helpers need
 * one protobufjs shared by @temporalio/common and @temporalio/proto: hence
 * protobufjs as a direct dependency in package.json.)
 */
export function historyToJson(h: History): unknown {
  return JSON.parse(historyToJSON(h));
}

export function historyFromJson(json: unknown): History {
  const h = historyFromJSON(json);
  if (!h?.events?.length) throw new Error('not a workflow history (no events)');
  return h;
}

export const historyFile = (workflowType: string, kase: string): string =>
  path.join(HISTORIES_DIR, `${workflowType}-${kase}.json`);

export interface RecordedHistory {
  file: string;
  /** The workflow type, from the file name (what the history's start event also says). */
  workflowType: string;
  history: History;
}

/** Every recorded history in the folder. */
export function recordedHistories(): RecordedHistory[] {
  return fs
    .readdirSync(HISTORIES_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => ({
      file: f,
      workflowType: f.slice(0, f.indexOf('-')),
      history: historyFromJson(JSON.parse(fs.readFileSync(path.join(HISTORIES_DIR, f), 'utf8'))),
    }));
}

/** The workflow type a history's first event started. */
export function startedType(h: History): string | undefined {
  return h.events?.[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name ?? undefined;
}
