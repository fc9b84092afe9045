// The drivers this server runs, by kind: the code behind each descriptor in descriptors.ts.
// A descriptor without a driver here (sandbox: a provider plugin's) is accepted as an
// environment, and its runs end `no_driver`. Adding an engine adds one line here.
import type { DriverRegistry, EnvironmentDriver } from './contract.js';
import type { EnvironmentDriverKind } from './descriptors.js';
import { dockerDriver } from './docker/driver.js';
import { kubernetesDriver } from './kubernetes/driver.js';
import { localDriver } from './local/driver.js';
import { slurmDriver } from './slurm/driver.js';
import { sshDriver } from './ssh/driver.js';

const DRIVER_FACTORIES: Partial<Record<EnvironmentDriverKind, () => EnvironmentDriver>> = {
  local: localDriver,
  ssh: sshDriver,
  docker: dockerDriver,
  slurm: slurmDriver,
  kubernetes: kubernetesDriver,
};

/** A fresh instance of every driver this version has (each holds its own pools and clients). */
export function defaultDrivers(): DriverRegistry {
  return new Map(Object.entries(DRIVER_FACTORIES).map(([kind, make]) => [kind, make!()]));
}
