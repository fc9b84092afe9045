#!/usr/bin/env node
// The `berth` command: the compiled CLI in dist/ (built at install), or, when dist/ is
// missing or older than the sources, the TypeScript sources through tsx (slow, but
// never a stale build: whatever starts berth runs the code as it is now).
import { distState } from './dist-state.mjs';

const state = distState();
let main;
if (state.current) {
  process.setSourceMapsEnabled(true);
  ({ main } = await import('../dist/cli/main.js'));
} else {
  process.stderr.write(`berth: ${state.reason}; running the TypeScript sources (slow start): \`npm run build\` makes it fast\n`);
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../src/cli/main.ts'));
}
await main(process.argv);
