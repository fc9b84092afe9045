// zod validators for everything a caller may send to the environment and lease
// services. Strict objects: an unknown field is an error that names it.
import { z } from 'zod';
import { BerthError, type FieldIssue } from './errors.js';
import { CLEANUP_STATUSES, ENV_VAR_NAME_RE, ENVIRONMENT_STATUSES, LEASE_POLICIES, LEASE_STATUSES, RUN_STATUSES, TERMINAL_LEASE_STATUSES } from './enums.js';

export const MAX_LEASE_TTL_SECONDS = 7 * 24 * 3600;

const name = z.string().trim().min(1, 'must not be empty').max(200, 'must be at most 200 characters');
const description = z.string().max(2000, 'must be at most 2000 characters').nullable();
const jsonRecord = z.record(z.string(), z.unknown());
const envVarName = z.string().regex(ENV_VAR_NAME_RE, 'must be a valid environment variable name');
const envVars = z.record(envVarName, z.string().max(65536, 'must be at most 65536 characters'));
const capacity = z.number().int('must be an integer').min(0, 'must be 0 or more').max(1_000_000).nullable();

/** The most members a warm pool keeps idle. */
export const MAX_POOL_MEMBERS = 1000;

/**
 * A warm pool (services/pools): `minReady` members kept provisioned and ready with no lease,
 * never more than `maxReady` idle, each replaced once older than `maxAgeSeconds`; `setup` is
 * run once in each member before it is ready. That maxReady >= minReady is checked here;
 * the driver's `pool` capability and `minReady <= capacity` by the environment service.
 */
export const poolSchema = z
  .strictObject({
    minReady: z.number().int('must be an integer').min(0, 'must be 0 or more').max(MAX_POOL_MEMBERS, `must be at most ${MAX_POOL_MEMBERS}`),
    maxReady: z.number().int('must be an integer').min(0, 'must be 0 or more').max(MAX_POOL_MEMBERS, `must be at most ${MAX_POOL_MEMBERS}`).optional(),
    maxAgeSeconds: z.number().int('must be an integer').min(1, 'must be at least 1').max(30 * 86_400, `must be at most ${30 * 86_400}`).default(3600),
    setup: z
      .strictObject({
        command: z.string().trim().min(1, 'must not be empty').max(10_000, 'must be at most 10000 characters'),
        timeoutSeconds: z.number().int('must be an integer').min(1, 'must be at least 1').max(3600, 'must be at most 3600').default(300),
      })
      .optional(),
  })
  .superRefine((p, ctx) => {
    if (p.maxReady !== undefined && p.maxReady < p.minReady) {
      ctx.addIssue({ code: 'custom', path: ['maxReady'], message: `must be at least minReady (${p.minReady})` });
    }
  })
  .transform((p) => ({ ...p, maxReady: p.maxReady ?? p.minReady }));
export type PoolConfig = z.output<typeof poolSchema>;

/** The fields every environment has, whatever its driver (its config is the driver's: see drivers/descriptors.ts). */
export const envCommon = {
  pool: poolSchema.nullable().default(null),
  name,
  description: description.optional(),
  envVars: envVars.default({}),
  metadata: jsonRecord.default({}),
  capacity: capacity.default(null),
};

/** A partial update; `config` is validated against the environment's own driver by the service. */
export const updateEnvironmentSchema = z
  .strictObject({
    name: name.optional(),
    description: description.optional(),
    status: z.enum(ENVIRONMENT_STATUSES).optional(),
    /** Another driver (with its config): only while nothing of the old driver's is live (the service checks). */
    driver: z.string().max(100).optional(),
    config: z.unknown().optional(),
    envVars: envVars.optional(),
    metadata: jsonRecord.optional(),
    capacity: capacity.optional(),
    pool: poolSchema.nullable().optional(),
  })
  .refine((v) => Object.keys(v).length > 0, 'must change at least one field');
export type UpdateEnvironmentInput = z.input<typeof updateEnvironmentSchema>;

const opaqueId = z.string().trim().min(1, 'must not be empty').max(200, 'must be at most 200 characters');
const ttlSeconds = z.number().positive('must be greater than 0').max(MAX_LEASE_TTL_SECONDS, `must be at most ${MAX_LEASE_TTL_SECONDS}`);
const fence = z.number().int('must be an integer').positive('must be greater than 0').max(Number.MAX_SAFE_INTEGER, 'is too large');

export const acquireLeaseSchema = z
  .strictObject({
    environmentId: z.uuid('must be a UUID'),
    policy: z.enum(LEASE_POLICIES).default('ephemeral'),
    /** Paperclip's name for `policy` (the lease record's own field name); both given must agree. */
    leasePolicy: z.enum(LEASE_POLICIES).optional(),
    ttlSeconds: ttlSeconds.optional(),
    expiresAt: z.coerce
      .date({ error: 'must be a date' })
      .min(new Date('2000-01-01T00:00:00Z'), 'must be after 2000-01-01')
      .max(new Date('9999-12-31T23:59:59Z'), 'must be before 9999-12-31')
      .optional(),
    /** Renewals never push expiresAt past acquiredAt + this. */
    maxLifetimeSeconds: ttlSeconds.optional(),
    idempotencyKey: opaqueId.optional(),
    heartbeatRunId: z.uuid('must be a UUID').optional(),
    executionWorkspaceId: opaqueId.optional(),
    issueId: opaqueId.optional(),
    // No `provider`/`providerLeaseId`, no driver fields: the server writes those, never a caller.
    metadata: jsonRecord.default({}),
  })
  .superRefine((v, ctx) => {
    if (v.ttlSeconds !== undefined && v.expiresAt !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['expiresAt'], message: 'give ttlSeconds or expiresAt, not both' });
    }
  });
export type AcquireLeaseInput = z.input<typeof acquireLeaseSchema>;

/** A command in a provisioned lease's workspace (POST /api/environment-leases/:id/exec). */
export const leaseExecSchema = z.strictObject({
  fence,
  /** argv: the program, then its arguments (no shell unless named: ["sh", "-c", "..."]). */
  command: z.array(z.string().min(1, 'must not be empty').max(65536, 'must be at most 65536 characters')).min(1, 'must name the program').max(4096, 'must have at most 4096 items')
    .refine((a) => a[0] !== undefined && a[0].length <= 4096, 'the program must be at most 4096 characters'),
  /** A directory inside the workspace, relative to it. */
  cwd: z.string().max(4096, 'must be at most 4096 characters').optional(),
  env: envVars.refine((e) => Object.keys(e).length <= 256, 'must have at most 256 variables').optional(),
  timeoutSeconds: z.number().int('must be an integer').min(1, 'must be 1-86400').max(86400, 'must be 1-86400').default(60),
  /** Bytes of stdout, and of stderr, the answer keeps (the rest is counted and dropped); ignored when streamed. */
  maxOutputBytes: z.number().int('must be an integer').min(1, 'must be 1-16777216').max(16 * 1024 * 1024, 'must be 1-16777216').default(1024 * 1024),
  /** Answer with server-sent events (`stdout`, `stderr`, then `exit`) as the command runs (also: Accept: text/event-stream). */
  stream: z.boolean().default(false),
});
export type LeaseExecBody = z.input<typeof leaseExecSchema>;

export const renewLeaseSchema = z.strictObject({ fence, ttlSeconds });
export type RenewLeaseInput = z.input<typeof renewLeaseSchema>;

export const releaseLeaseSchema = z.strictObject({
  fence,
  status: z.enum(TERMINAL_LEASE_STATUSES).default('released'),
  failureReason: z.string().max(4000, 'must be at most 4000 characters').optional(),
  /** `failed` means the driver could not clean up: the lease goes to pending_cleanup and is retried. */
  cleanupStatus: z.enum(CLEANUP_STATUSES).optional(),
});
export type ReleaseLeaseInput = z.input<typeof releaseLeaseSchema>;

export const updateLeaseMetadataSchema = z.strictObject({
  fence,
  metadata: jsonRecord,
  /** Merge into the existing metadata (default) or replace it. */
  replace: z.boolean().default(false),
});
export type UpdateLeaseMetadataInput = z.input<typeof updateLeaseMetadataSchema>;

export const listLeasesSchema = z.strictObject({
  status: z.enum(LEASE_STATUSES).optional(),
  limit: z.number().int().min(1).max(500).default(50),
  /** Opaque cursor from a previous page. */
  cursor: z.string().max(200).optional(),
});

export const RUN_PAGE_MAX = 500;

export const listRunsSchema = z.strictObject({
  agentId: z.uuid('must be a UUID').optional(),
  status: z.enum(RUN_STATUSES).optional(),
  limit: z.number().int('must be an integer').min(1, `must be 1-${RUN_PAGE_MAX}`).max(RUN_PAGE_MAX, `must be 1-${RUN_PAGE_MAX}`).default(50),
  /** Opaque cursor from a previous page (its X-Next-Cursor). */
  cursor: z.string().max(200).optional(),
});
export type ListRunsInput = z.input<typeof listRunsSchema>;

export const listActivitySchema = z.strictObject({
  entityType: z.string().max(100).optional(),
  entityId: z.string().max(200).optional(),
  runId: z.uuid('must be a UUID').optional(),
  action: z.string().max(200).optional(),
  limit: z.number().int().min(1).max(500).default(50),
  /** Return rows older than this activity id (keyset paging). */
  before: z.number().int().positive().max(Number.MAX_SAFE_INTEGER).optional(),
});

/** A zod error as one issue per bad field (each unknown key its own), dotted paths. */
export function fieldIssues(error: z.ZodError, opts: { unknown?: string; root?: string } = {}): FieldIssue[] {
  return error.issues.flatMap((issue) => {
    const at = issue.path.map(String);
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => ({ path: [...at, key].join('.'), message: opts.unknown ?? 'is not a known field' }));
    }
    return [{ path: at.join('.') || (opts.root ?? '(input)'), message: issue.message }];
  });
}

/** Parse or throw an `invalid` BerthError whose message and fields name each bad field. */
export function parseInput<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const fields = fieldIssues(result.error);
  const text = fields.map((f) => `${f.path}: ${f.message}`).join('; ');
  throw new BerthError('invalid', `invalid ${what}: ${text}`, { fields });
}
