/**
 * Bundles the compiled workflow code once, at build time, into
 * dist/workflow-bundle.js. Workers then load that file
 * (Worker.create({ workflowBundle: { codePath } })) instead of running
 * webpack at every start, which costs seconds and needs the TypeScript
 * sources' dependency tree on the node.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleWorkflowCode } from '@temporalio/worker';

// This file runs as dist/scripts/bundle-workflows.js.
const distDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const WORKFLOW_BUNDLE = path.join(distDir, 'workflow-bundle.js');

async function main(): Promise<void> {
  const workflowsPath = path.join(distDir, 'workflows', 'index.js');
  const started = Date.now();
  const { code } = await bundleWorkflowCode({
    workflowsPath,
    // Failure messages encrypted like every payload (contract/failure-converter.ts);
    // the worker loads the same file for its activities.
    failureConverterPath: path.join(distDir, 'contract', 'failure-converter.js'),
    // Keep webpack's chatter out of the build output; errors still throw.
    logger: { log() {}, trace() {}, debug() {}, info() {}, warn: console.warn, error: console.error },
  });
  const tmp = `${WORKFLOW_BUNDLE}.tmp-${process.pid}`;
  await fs.writeFile(tmp, code);
  await fs.rename(tmp, WORKFLOW_BUNDLE);
  console.log(
    `workflow bundle: ${path.relative(process.cwd(), WORKFLOW_BUNDLE)} (${Math.round(code.length / 1024)} KiB, ${Date.now() - started} ms)`,
  );
}

main().catch((err: unknown) => {
  console.error('bundling workflows failed:', err);
  process.exit(1);
});
