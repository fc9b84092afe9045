// Every driver this version knows, as pure data (config schema, secret paths, capabilities,
// the adapters it runs, its dashboard form): what the environment service validates with,
// the secrets layer seals by, the API lists at /api/drivers and the dashboard builds its
// form from. Adding an engine adds its folder, one line here and one in registry.ts.
// Descriptors import nothing but zod and types (this module is read by domain-level code).
import type { DriverDescriptor } from './contract.js';
import { dockerDescriptor } from './docker/descriptor.js';
import { kubernetesDescriptor } from './kubernetes/descriptor.js';
import { localDescriptor } from './local/descriptor.js';
import { sandboxDescriptor } from './sandbox/descriptor.js';
import { slurmDescriptor } from './slurm/descriptor.js';
import { sshDescriptor } from './ssh/descriptor.js';

export const DRIVER_DESCRIPTORS = {
  local: localDescriptor,
  ssh: sshDescriptor,
  docker: dockerDescriptor,
  sandbox: sandboxDescriptor,
  slurm: slurmDescriptor,
  kubernetes: kubernetesDescriptor,
} as const satisfies Record<string, DriverDescriptor>;

/** The kind of place an environment is (its `driver` column). */
export type EnvironmentDriverKind = keyof typeof DRIVER_DESCRIPTORS;

/** Every driver kind, in the order above. */
export const DRIVER_KINDS = Object.keys(DRIVER_DESCRIPTORS) as [EnvironmentDriverKind, ...EnvironmentDriverKind[]];

export function descriptorOf(kind: string): DriverDescriptor | undefined {
  return Object.hasOwn(DRIVER_DESCRIPTORS, kind) ? (DRIVER_DESCRIPTORS as Record<string, DriverDescriptor>)[kind] : undefined;
}

/** The drivers whose environments run an adapter's agents. */
export function driversForAdapter(adapter: string): EnvironmentDriverKind[] {
  return DRIVER_KINDS.filter((k) => (DRIVER_DESCRIPTORS[k] as DriverDescriptor).adapters.includes(adapter as 'process' | 'http'));
}
