// Every driver this version knows, as pure data (config schema, secret paths, capabilities):
// what the environment service validates with and the secrets layer seals by. Adding an
// engine adds its folder and one line here.
import type { DriverDescriptor } from './contract.js';
import { localDescriptor } from './local/descriptor.js';
import { sandboxDescriptor } from './sandbox/descriptor.js';
import { sshDescriptor } from './ssh/descriptor.js';

export const DRIVER_DESCRIPTORS: Readonly<Record<string, DriverDescriptor>> = {
  local: localDescriptor,
  ssh: sshDescriptor,
  sandbox: sandboxDescriptor,
};

export function descriptorOf(kind: string): DriverDescriptor | undefined {
  return Object.hasOwn(DRIVER_DESCRIPTORS, kind) ? DRIVER_DESCRIPTORS[kind] : undefined;
}
