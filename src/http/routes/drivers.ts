// What drivers this server knows: each one's kind, what its environments are, the adapters
// it runs, its capabilities, its config as a JSON Schema (secret fields named), and whether
// this server has the code to run it. The dashboard builds its environment form from it.
import { z } from 'zod';
import type { DriverDescriptor } from '../../drivers/contract.js';
import { DRIVER_DESCRIPTORS } from '../../drivers/descriptors.js';
import { defineRoutes } from '../route.js';

function present(d: DriverDescriptor, runs: boolean) {
  return {
    kind: d.kind,
    title: d.title,
    runs,
    adapters: d.adapters,
    capabilities: d.capabilities,
    secretFields: d.secretPaths.map((p) => p.path),
    form: d.form ?? [],
    configSchema: z.toJSONSchema(d.configSchema, { io: 'input', unrepresentable: 'any' }),
  };
}

export const driverRoutes = () =>
  defineRoutes([
    {
      method: 'GET',
      path: '/api/drivers',
      summary: 'The drivers this server knows: kind, title, adapters, capabilities, config schema, and whether it runs them',
      tag: 'environments',
      access: 'company',
      returns: 'Driver[]',
      async handle({ deps }) {
        return Object.values(DRIVER_DESCRIPTORS as Record<string, DriverDescriptor>).map((d) => present(d, deps.drivers.has(d.kind)));
      },
    },
  ]);
