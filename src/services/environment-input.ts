// What a caller sends to create an environment: the fields every environment has, and a
// config its driver's descriptor validates (so a new engine brings its own schema).
import { z } from 'zod';
import type { DriverDescriptor } from '../drivers/contract.js';
import { descriptorOf, DRIVER_DESCRIPTORS, DRIVER_KINDS, type EnvironmentDriverKind } from '../drivers/descriptors.js';
import { ENVIRONMENT_STATUSES } from '../domain/enums.js';
import { envCommon, updateEnvironmentSchema as updateFields } from '../domain/validators.js';

const common = z.strictObject(envCommon);

function createBranch(d: DriverDescriptor) {
  return z.strictObject({
    ...envCommon,
    driver: z.literal(d.kind),
    config: d.configDefault ? d.configSchema.default(d.configDefault) : d.configSchema,
  });
}

const kinds = DRIVER_KINDS;
const branches = Object.values(DRIVER_DESCRIPTORS).map(createBranch);

export const createEnvironmentSchema = z.discriminatedUnion('driver', branches as [ReturnType<typeof createBranch>, ...ReturnType<typeof createBranch>[]], {
  error: `must be one of ${kinds.join(', ')}`,
});

export type CreateEnvironmentInput = z.input<typeof common> & { driver: EnvironmentDriverKind; config?: Record<string, unknown> };
export type CreateEnvironment = z.output<typeof common> & { driver: EnvironmentDriverKind; config: Record<string, unknown> };

/** The config schema of a driver this version knows; undefined for any other. */
export function configSchemaOf(driver: string): z.ZodType | undefined {
  return descriptorOf(driver)?.configSchema;
}

/** A listing's filter: by status, by driver. */
export const listEnvironmentsSchema = z.strictObject({
  status: z.enum(ENVIRONMENT_STATUSES).optional(),
  driver: z.enum(DRIVER_KINDS).optional(),
});

/** A partial update, its `driver` one of the drivers this version knows (the service checks a change of driver). */
export const updateEnvironmentSchema = z
  .strictObject({ ...updateFields.shape, driver: z.enum(DRIVER_KINDS, { error: `must be one of ${DRIVER_KINDS.join(', ')}` }).optional() })
  .refine((v) => Object.keys(v).length > 0, 'must change at least one field');
