/**
 * The shim bundle's entry (dist/shim/arch-runc.cjs), started one of two ways
 * by bin/arch-runc:
 *  - from its V8 start-up snapshot (dist/shim/arch-runc.blob, see
 *    scripts/build-shim-snapshot.ts): the modules are already loaded and the
 *    restore path compiled, so a call starts ~20-30 ms sooner. Building it
 *    runs this file under `node --build-snapshot`: warm up, then name the
 *    function the snapshot starts with. There argv is [node, ...runc args];
 *  - through start.cjs (V8 code cache), where no usable snapshot exists:
 *    the call runs at once, argv [node, start.cjs, ...runc args].
 */
import v8 from 'node:v8';
import { hashOnThisThreadOnly } from '../core/digest.js';
import { main, runShim } from './main.js';
import { warmUp } from './snapshot-warm-up.js';

// Digests on this thread (core/digest.ts says why); sealing and unsealing use worker threads.
hashOnThisThreadOnly();

if (v8.startupSnapshot.isBuildingSnapshot()) {
  // The snapshot is taken once the event loop is empty, i.e. after the warm-up.
  warmUp(main).catch((err: unknown) => {
    process.stderr.write(`arch-runc snapshot: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1); // no blob: bin/arch-runc keeps using start.cjs
  });
  v8.startupSnapshot.setDeserializeMainFunction(() => runShim(process.argv.slice(1)));
} else {
  runShim(process.argv.slice(2));
}
