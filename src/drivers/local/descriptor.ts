// What a `local` environment is: this machine, no config, nothing secret but its variables.
import { z } from 'zod';
import type { DriverDescriptor } from '../contract.js';

export const localConfigSchema = z.strictObject({});

export const localDescriptor: DriverDescriptor = {
  kind: 'local',
  title: 'this machine',
  adapters: ['process', 'http'],
  configSchema: localConfigSchema,
  configDefault: {},
  secretPaths: [],
  // A local run's output comes through this server's spawner helper: it dies with the server.
  capabilities: { reattach: false, pool: true, list: true, streamOutput: true, hostLocal: true },
};
