/**
 * How bin/arch-cli starts: the one-file bundle dist/cli/arch-cli.cjs
 * (scripts/bundle-cli.ts) with V8's code cache, as the shim starts. Loading
 * the CLI's modules one by one took most of a second before any command ran
 * on these VMs; `finalize` on a reclaim notice cannot spare that.
 */
import path = require('node:path');
import start = require('../shim/start.cjs');

start.runBundle(path.join(__dirname, 'arch-cli.cjs'));
