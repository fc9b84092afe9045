// Ends every run with the one line CI reads: `N passed, N failed, N skipped`.
// A test that never ran because its file or suite failed (a beforeAll that threw,
// say) counts as failed, never as skipped.
import type { Reporter, TestCase, TestModule } from 'vitest/node';

/** True when a hook or the file itself failed around this test, so it never ran. */
function blockedByFailure(test: TestCase): boolean {
  for (let parent = test.parent; ; parent = parent.parent) {
    if (parent.errors().length > 0) return true;
    if (parent.type === 'module') return false;
  }
}

export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<unknown>): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const mod of testModules) {
      let tests = 0;
      for (const test of mod.children.allTests()) {
        tests++;
        const state = test.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed' || blockedByFailure(test)) failed++;
        else skipped++;
      }
      // A file that failed to load has no tests but is a failure.
      if (tests === 0 && mod.state() === 'failed') failed++;
    }
    failed += unhandledErrors.length;
    process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
