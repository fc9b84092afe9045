// The plugin's manifest: one environment driver, a sandbox provider named "berth", whose
// leases are Berth leases. Paperclip reads it from dist/manifest.js (package.json's
// paperclipPlugin.manifest).
import type { JsonSchema, PaperclipPluginManifestV1 } from '@paperclipai/plugin-sdk';
import { configSchema } from './config.js';
import { DRIVER_KEY } from './driver.js';

export const PLUGIN_VERSION = '0.1.0';

const manifest: PaperclipPluginManifestV1 = {
  id: 'berth.sandbox-provider',
  apiVersion: 1,
  version: PLUGIN_VERSION,
  displayName: 'Berth',
  description:
    'Runs Paperclip environments on Berth leases: acquired with an idempotency key per run, renewed while Paperclip holds them, released with a receipt only once Berth has cleaned up.',
  author: 'Berth',
  categories: ['workspace'],
  capabilities: ['environment.drivers.register'],
  entrypoints: { worker: './dist/worker.js' },
  environmentDrivers: [
    {
      driverKey: DRIVER_KEY,
      kind: 'sandbox_provider',
      displayName: 'Berth',
      description: 'A lease on a Berth environment (local, SSH, container, Slurm…), renewed by the plugin while held.',
      // Every run takes and releases its own Berth lease.
      supportsReusableLeases: false,
      configSchema: configSchema as unknown as JsonSchema,
    },
  ],
};

export default manifest;
