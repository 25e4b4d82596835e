// ESLint for the TypeScript sources (flat config). Type-aware, because the
// rule that matters most here, no-floating-promises, needs types: an
// un-awaited checkpoint or cleanup is a lost job or a leaked mount.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import importX from 'eslint-plugin-import-x';
import globals from 'globals';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.bench/**', '.test-work/**', 'eslint.config.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  importX.flatConfigs.typescript,
  {
    files: ['**/*.ts', '**/*.cts'],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
      globals: { ...globals.node },
    },
    settings: { 'import-x/resolver-next': [createTypeScriptImportResolver({ project: './tsconfig.json' })] },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      'import-x/no-cycle': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // The shim's CommonJS starter must be CommonJS: Node's start-up snapshot
    // and V8 code cache load it before any ES module machinery.
    files: ['**/*.cts'],
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    // Workflow code runs in Temporal's deterministic sandbox: it may import
    // only the workflow SDK, the shared contract and other workflow modules
    // (as temporalio/samples-typescript enforces with the same rule).
    files: ['workflows/**/*.ts', 'contract/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*'], message: 'Workflow code runs in the Temporal sandbox: no Node modules.' },
            {
              group: ['**/core/**', '**/activities/**', '**/worker/**', '**/cli/**', '**/shim/**', '**/temporal/**'],
              message:
                'Workflow code imports only contract/ and workflows/ (type-only imports of activities are fine).',
              allowTypeImports: true,
            },
            {
              group: ['@temporalio/*', '!@temporalio/workflow', '!@temporalio/common'],
              message: 'Only @temporalio/workflow and @temporalio/common belong in workflow code.',
            },
            { group: ['execa', 'pino', 'tar', 'yaml', 'zod', 'commander'], message: 'Node-only library.' },
          ],
        },
      ],
    },
  },
);
