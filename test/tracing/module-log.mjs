// `node --import` this file (with BERTH_TEST_MODULE_LOG set to a file) to record the
// @opentelemetry modules a process loads: see module-hooks.mjs.
import { register } from 'node:module';

if (process.env.BERTH_TEST_MODULE_LOG) {
  register('./module-hooks.mjs', import.meta.url, { data: { file: process.env.BERTH_TEST_MODULE_LOG } });
}
