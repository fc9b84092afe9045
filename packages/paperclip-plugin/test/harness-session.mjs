// The plugin under the SDK's own environment test harness, in a process of its own (the
// SDK needs Node >= 24; Berth's tests run on Node 20): the worker's real hooks
// (dist/worker.js's plugin definition) behind createEnvironmentTestHarness, driven over
// stdin/stdout, one JSON request a line, one JSON answer a line:
//   {"id": 1, "op": "acquireLease", "params": {...}}  ->  {"id": 1, "ok": true, "result": ...}
// ops: the harness's hooks (validateConfig, probe, acquireLease, resumeLease, releaseLease,
// destroyLease, realizeWorkspace, execute), its assertions (assertLeaseLifecycle,
// assertExecutionLifecycle, assertEnvironmentError, assertEnvironmentEventOrder), events,
// manifest (the manifest checked by Paperclip's own schema), renewing, stopRenewals.
// Killing this process is killing a plugin worker that holds leases.
import { createInterface } from 'node:readline';
import {
  assertEnvironmentError,
  assertEnvironmentEventOrder,
  assertExecutionLifecycle,
  assertLeaseLifecycle,
  createEnvironmentTestHarness,
} from '@paperclipai/plugin-sdk/testing';
import { pluginManifestV1Schema } from '@paperclipai/shared';
import manifest from '../dist/manifest.js';
import plugin, { berthDriver } from '../dist/worker.js';

const d = plugin.definition;
const harness = createEnvironmentTestHarness({
  manifest,
  environmentDriver: {
    driverKey: manifest.environmentDrivers[0].driverKey,
    onValidateConfig: d.onEnvironmentValidateConfig,
    onProbe: d.onEnvironmentProbe,
    onAcquireLease: d.onEnvironmentAcquireLease,
    onResumeLease: d.onEnvironmentResumeLease,
    onReleaseLease: d.onEnvironmentReleaseLease,
    onDestroyLease: d.onEnvironmentDestroyLease,
    onRealizeWorkspace: d.onEnvironmentRealizeWorkspace,
    onExecute: d.onEnvironmentExecute,
  },
});
await d.setup(harness.ctx);

const hooks = new Set(['validateConfig', 'probe', 'acquireLease', 'resumeLease', 'releaseLease', 'destroyLease', 'realizeWorkspace', 'execute']);
async function handle(op, p) {
  if (hooks.has(op)) return (await harness[op](p)) ?? null;
  switch (op) {
    case 'assertLeaseLifecycle':
      return assertLeaseLifecycle(harness.environmentEvents, p.environmentId);
    case 'assertExecutionLifecycle':
      return assertExecutionLifecycle(harness.environmentEvents, p.environmentId);
    case 'assertEnvironmentError':
      return assertEnvironmentError(harness.environmentEvents, p.type, p.environmentId);
    case 'assertEnvironmentEventOrder':
      assertEnvironmentEventOrder(harness.environmentEvents, p.order);
      return true;
    case 'events':
      return harness.environmentEvents;
    case 'manifest': {
      const parsed = pluginManifestV1Schema.safeParse(manifest);
      return { manifest, valid: parsed.success, issues: parsed.success ? [] : parsed.error.issues };
    }
    case 'renewing':
      return berthDriver.renewing();
    case 'stopRenewals':
      berthDriver.stopAll();
      return berthDriver.renewing();
    case 'logs':
      return harness.logs;
    default:
      throw new Error(`unknown op ${op}`);
  }
}

const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
createInterface({ input: process.stdin }).on('line', (line) => {
  let req;
  try {
    req = JSON.parse(line);
  } catch {
    return out({ id: null, ok: false, error: 'not JSON' });
  }
  handle(req.op, req.params ?? {}).then(
    (result) => out({ id: req.id, ok: true, result }),
    (err) => out({ id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) }),
  );
});
process.stdin.on('end', () => process.exit(0));
out({ ready: true, node: process.version });
