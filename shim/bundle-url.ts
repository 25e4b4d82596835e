/**
 * Injected into the shim's CommonJS bundle (package.json's bundle:shim:
 * --inject, with import.meta.url defined as archBundleUrl), which has no
 * import.meta of its own: the bundle's file URL, so that the modules bundled
 * from dist/ find their sibling files from dist/shim/ (core/digest.ts's
 * worker: '../core/digest-worker.js'). Never imported as a module.
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports -- runs inside the CommonJS bundle, where require is the only loader
export const archBundleUrl: string = require('node:url').pathToFileURL(__filename).href;
