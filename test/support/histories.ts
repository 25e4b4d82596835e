import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import type { History } from '@temporalio/common/lib/proto-utils.js';
import proto from '@temporalio/proto';
import { patchProtobufRoot } from '@temporalio/proto/lib/patch-protobuf-root.js';
import { AesGcmPayloadCodec, parseKey } from '../../core/temporal/codec.js';
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
  const line = fs
    .readFileSync(TEST_KEY_FILE, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l && !l.startsWith('#'));
  if (!line) throw new Error(`${TEST_KEY_FILE} holds no key`);
  return line;
}

/** The codec a worker with the test key has: it refuses plaintext, as the recording workers did. */
export function testCodec(): AesGcmPayloadCodec {
  return new AesGcmPayloadCodec([parseKey(testPayloadKey(), TEST_KEY_FILE)], { acceptPlaintext: false });
}

/**
 * History <-> JSON, in the form `temporal workflow show --output json`, the
 * UI's download and the SDK's historyFromJSON use. Not the SDK's own
 * historyToJSON/historyFromJSON: in this install @temporalio/common and
 * @temporalio/proto each carry their own copy of protobufjs, and common's
 * protojson refuses proto's message types ("type must be a Type"). The
 * protojson of the protobufjs that @temporalio/proto itself loads has no
 * such mismatch.
 */
const protoRequire = createRequire(createRequire(import.meta.url).resolve('@temporalio/proto'));
const protojson = protoRequire('protobufjs/ext/protojson') as {
  toJson(type: unknown, message: unknown): unknown;
  fromJson(type: unknown, json: unknown, options?: { ignoreUnknownFields?: boolean }): unknown;
};
const historyType = (
  patchProtobufRoot(proto as unknown as Record<string, unknown>) as unknown as { lookupType(n: string): unknown }
).lookupType('temporal.api.history.v1.History');

export function historyToJson(h: History): unknown {
  return protojson.toJson(historyType, proto.temporal.api.history.v1.History.fromObject(h));
}

export function historyFromJson(json: unknown): History {
  const h = protojson.fromJson(historyType, json, { ignoreUnknownFields: true }) as History | null;
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
