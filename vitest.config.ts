import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// The same suite runs twice: on PGlite and on PostgreSQL. Tests about concurrency
// (test/postgres/) run on PostgreSQL only: PGlite has one session and proves nothing there;
// test/pglite/ covers what only the embedded database has (its data-dir lock) and the quick
// start; test/browser/ (the dashboard in Chromium) runs once, against the embedded database.
// Tests never touch the user's ~/.berth: whatever a test does not place itself lands here.
const testHome = fileURLToPath(new URL('./.berth-test', import.meta.url));

export default defineConfig({
  test: {
    env: { BERTH_HOME: testHome },
    reporters: ['default', './test/support/summary-reporter.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: 'pglite',
          include: ['test/**/*.test.ts'],
          // Engine tests (a real dockerd, podman, bwrap, prometheus, Paperclip's CLI) need no second database: they run once, on PostgreSQL.
          exclude: ['test/postgres/**', 'test/docker/**', 'test/bwrap/**', 'test/slurm/**', 'test/prometheus/**', 'test/paperclip/**', 'test/kubernetes/**'],
          env: { BERTH_TEST_BACKEND: 'pglite' },
        },
      },
      {
        extends: true,
        test: {
          name: 'postgres',
          include: ['test/**/*.test.ts'],
          exclude: ['test/pglite/**', 'test/browser/**'],
          env: { BERTH_TEST_BACKEND: 'postgres' },
        },
      },
    ],
  },
});
