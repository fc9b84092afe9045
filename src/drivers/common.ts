// What every driver does the same way: its errors (a code the run's errorCode takes), its
// stored config parsed without quoting a value, and a resource id checked before it names
// anything the driver makes or removes.
import type { z } from 'zod';
import { UUID_RE } from '../domain/errors.js';
import type { DriverEnvironment, EnvironmentDriver, ProbeResult } from './contract.js';

/** A driver's failure with its code (`docker_config`, `slurm_submit`...), which a run's errorCode takes. */
export class DriverError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The environment's stored config (secrets in clear) as the driver's schema reads it. A config
 * that no longer parses fails with `<kind>_config`, naming each field and its message only:
 * never a value (it may be a key).
 */
export function storedConfig<S extends z.ZodType>(schema: S, env: DriverEnvironment, kind: string): z.output<S> {
  const parsed = schema.safeParse(env.secretConfig);
  if (!parsed.success) {
    throw new DriverError(`${kind}_config`, `environment ${env.id} has an invalid ${kind} config: ${parsed.error.issues.map((i) => `config.${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}

/** The resource id, refused unless it is a UUID (the server made it): so no stored or caller-written text names a provider object. */
export function checkedResourceId(resourceId: string): string {
  if (typeof resourceId !== 'string' || !UUID_RE.test(resourceId)) throw new Error(`refusing resource id ${JSON.stringify(resourceId)}: not a resource id (a UUID)`);
  return resourceId;
}

/** Probe through the environment's driver: a driver that throws, or none on this server, is a failed probe saying why. */
export async function probeThrough(driver: EnvironmentDriver | undefined, env: DriverEnvironment): Promise<ProbeResult> {
  if (!driver) return { ok: false, latencyMs: 0, details: {}, error: `this server has no ${env.driver} driver` };
  const started = performance.now();
  return driver.probe(env).catch((err: unknown) => ({ ok: false, latencyMs: performance.now() - started, details: {}, error: (err as Error).message }));
}
