#!/usr/bin/env node
// The `berth` command: runs the TypeScript CLI through tsx (resolved next to this file).
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
await main(process.argv);
