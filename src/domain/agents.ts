// Validators for agents and their adapters.
import { z } from 'zod';
import { ADAPTER_TYPES, ENV_VAR_NAME_RE, INVOCATION_SOURCES } from './enums.js';
import { paperclipWakeFields } from './paperclip.js';

const envVarName = z.string().regex(ENV_VAR_NAME_RE, 'must be a valid environment variable name');

export const processAdapterSchema = z.strictObject({
  command: z.string().min(1, 'must not be empty').max(4096),
  args: z.array(z.string().max(65536)).max(1000).default([]),
  /** Absolute; default: a fresh workspace the environment's driver prepares for the lease. */
  cwd: z.string().regex(/^\//, 'must be an absolute path').optional(),
  env: z.record(envVarName, z.string().max(65536)).default({}),
  timeoutSec: z.number().positive('must be greater than 0').max(7 * 24 * 3600).default(3600),
  graceSec: z.number().min(0, 'must be 0 or more').max(3600).default(10),
});
export type ProcessAdapterConfig = z.output<typeof processAdapterSchema>;

export const httpAdapterSchema = z.strictObject({
  url: z.url({ protocol: /^https?$/, error: 'must be an http or https URL' }),
  method: z.enum(['POST', 'PUT', 'PATCH']).default('POST'),
  headers: z.record(z.string().regex(/^[A-Za-z0-9-]+$/, 'must be a header name'), z.string().max(8192)).default({}),
  timeoutMs: z.number().int('must be an integer').positive('must be greater than 0').max(24 * 3600 * 1000).default(30_000),
  payload: z.record(z.string(), z.unknown()).default({}),
});
export type HttpAdapterConfig = z.output<typeof httpAdapterSchema>;

export const adapterSchemas = { process: processAdapterSchema, http: httpAdapterSchema } as const;

// Field schemas without defaults: create adds its defaults; an update must not, or a
// field it does not name would be reset to its default (zod applies a default under .optional()).
const agentFields = {
  name: z.string().trim().min(1, 'must not be empty').max(200, 'must be at most 200 characters'),
  defaultEnvironmentId: z.uuid('must be a UUID').nullable(),
  maxConcurrentRuns: z.number().int('must be an integer').min(1, 'must be at least 1').max(1000),
  intervalSec: z.number().int('must be an integer').min(1, 'must be at least 1').max(30 * 24 * 3600).nullable(),
};

const agentCommon = {
  name: agentFields.name,
  defaultEnvironmentId: agentFields.defaultEnvironmentId.default(null),
  maxConcurrentRuns: agentFields.maxConcurrentRuns.default(1),
  intervalSec: agentFields.intervalSec.default(null),
};

export const createAgentSchema = z.discriminatedUnion(
  'adapterType',
  [
    z.strictObject({ ...agentCommon, adapterType: z.literal('process'), adapterConfig: processAdapterSchema }),
    z.strictObject({ ...agentCommon, adapterType: z.literal('http'), adapterConfig: httpAdapterSchema }),
  ],
  { error: `must be one of ${ADAPTER_TYPES.join(', ')}` },
);
export type CreateAgentInput = z.input<typeof createAgentSchema>;

export const AGENT_STATUSES = ['active', 'paused'] as const;

/** A partial update; `adapterConfig` replaces the whole config and is validated against the agent's adapter. */
export const updateAgentSchema = z
  .strictObject({
    name: agentFields.name.optional(),
    adapterConfig: z.record(z.string(), z.unknown()).optional(),
    defaultEnvironmentId: agentFields.defaultEnvironmentId.optional(),
    maxConcurrentRuns: agentFields.maxConcurrentRuns.optional(),
    intervalSec: agentFields.intervalSec.optional(),
    /** A paused agent takes no new runs (invoke and timers refuse it). */
    status: z.enum(AGENT_STATUSES).optional(),
  })
  .refine((v) => Object.keys(v).length > 0, 'must change at least one field');
export type UpdateAgentInput = z.input<typeof updateAgentSchema>;

export const invokeSchema = z.strictObject({
  source: z.enum(INVOCATION_SOURCES).default('on_demand'),
  /** Caller context kept in the run's contextSnapshot (an issue, a trigger...). */
  context: z.record(z.string(), z.unknown()).default({}),
  // Paperclip's wakeup fields (src/domain/paperclip.ts says what each becomes).
  ...paperclipWakeFields,
});
export type InvokeInput = z.input<typeof invokeSchema>;
