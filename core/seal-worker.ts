/**
 * The worker thread of core/seal.ts's SealFollower (loaded by path: new
 * Worker(URL)): runs a SealLoop over workerData until the parent posts
 * 'finish' (reply { files }) or 'cancel' (reply { cancelled }); every file it
 * opened is closed before it replies.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { SealLoop, type SealWorkerData } from './seal.js';

const port = parentPort!;
const d = workerData as SealWorkerData;
const loop = new SealLoop(d.sources, d.dest, { id: d.key.id, key: Buffer.from(d.key.key) }, d.sealId, d.opts);
port.on('message', (m: 'finish' | 'cancel') => {
  if (m === 'finish')
    loop.finish().then(
      (files) => port.postMessage({ files }),
      (err: Error) => port.postMessage({ error: err.message }),
    );
  else void loop.cancel().then(() => port.postMessage({ cancelled: true }));
});
