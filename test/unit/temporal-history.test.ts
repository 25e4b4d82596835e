import { randomBytes } from 'node:crypto';
import { defaultPayloadConverter } from '@temporalio/common';
import { AesGcmPayloadCodec, parseKey } from '../../temporal/codec.js';
import { decodeHistory, timesFromHistory, type HistoryEvent } from '../../temporal/history.js';

/**
 * Timings and activity inputs read from a workflow's history (benchmarks and
 * tests name each activity's container by its input). With a payload key the
 * history holds what the real AES-GCM codec wrote: it must be decoded first.
 */
const codec = new AesGcmPayloadCodec([parseKey(randomBytes(32).toString('hex'), 'ARCH_PAYLOAD_KEY')]);
const at = (ms: number) => ({ seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 });

async function encryptedHistory(): Promise<HistoryEvent[]> {
  const [input] = await codec.encode([defaultPayloadConverter.toPayload({ spec: { id: 'ntc0-3' } })]);
  const [result] = await codec.encode([defaultPayloadConverter.toPayload({ timings: { create: 40, verify: 1000 } })]);
  return [
    { eventId: 1, eventTime: at(1000), eventType: 1 },
    {
      eventId: 5,
      eventTime: at(1100),
      eventType: 10,
      activityTaskScheduledEventAttributes: {
        activityType: { name: 'restoreContainer' },
        taskQueue: { name: 'arch-node-b' },
        input: { payloads: [input!] },
      },
    },
    { eventId: 6, eventTime: at(1150), eventType: 11, activityTaskStartedEventAttributes: { scheduledEventId: 5 } },
    {
      eventId: 7,
      eventTime: at(2300),
      eventType: 12,
      activityTaskCompletedEventAttributes: { scheduledEventId: 5, result: { payloads: [result!] } },
    },
    { eventId: 9, eventTime: at(2400), eventType: 2 },
  ];
}

test('encrypted payloads: neither the input nor the result can be read undecoded', async () => {
  const [run] = timesFromHistory(await encryptedHistory()).activities;
  expect(run).toMatchObject({ type: 'restoreContainer', ok: true, input: undefined, result: undefined });
});

test("decoded with the client's codec: the activity's container and its timings are there", async () => {
  const t = timesFromHistory(await decodeHistory(await encryptedHistory(), [codec]));
  expect(t).toMatchObject({ startedAt: 1000, closedAt: 2400 });
  expect(t.activities).toEqual([
    {
      type: 'restoreContainer',
      taskQueue: 'arch-node-b',
      scheduledAt: 1100,
      startedAt: 1150,
      closedAt: 2300,
      ok: true,
      input: { spec: { id: 'ntc0-3' } },
      result: { timings: { create: 40, verify: 1000 } },
    },
  ]);
});

test('without a codec (plaintext cluster) the payloads are read as they are', async () => {
  const plain = defaultPayloadConverter.toPayload({ spec: { id: 'x' } });
  const events: HistoryEvent[] = [
    {
      eventId: 5,
      eventTime: at(1100),
      eventType: 10,
      activityTaskScheduledEventAttributes: { activityType: { name: 'a' }, input: { payloads: [plain] } },
    },
  ];
  expect(timesFromHistory(await decodeHistory(events, [])).activities[0]!.input).toEqual({ spec: { id: 'x' } });
});
