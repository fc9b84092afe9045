// The JSON shape of every success answer, for the OpenAPI document: what a client
// receives on the wire (dates as ISO strings), one schema per route, keyed like the
// route table. The contract test checks real answers against them.
import { z } from 'zod';

const ts = z.iso.datetime({ offset: true });
const tsOrNull = ts.nullable();
const id = z.uuid();
const record = z.record(z.string(), z.unknown());
/** Values the database holds that this version does not know, kept rather than hidden. */
const unknownValues = z.record(z.string(), z.string()).optional();

const company = z.strictObject({ id, name: z.string(), createdAt: ts, updatedAt: ts });

const apiKey = z.strictObject({ id, companyId: id, name: z.string(), prefix: z.string(), createdAt: ts, lastUsedAt: tsOrNull, revokedAt: tsOrNull });

/** driver and summary: absent only in a lastProbe recorded by an older Berth. */
const probe = z.strictObject({ ok: z.boolean(), driver: z.string().optional(), summary: z.string().optional(), latencyMs: z.number(), details: record, error: z.string().optional(), at: ts });

/** Secret-bearing values are shown by name only (envVarNames). */
const environment = z.strictObject({
  id,
  companyId: id,
  name: z.string(),
  description: z.string().nullable(),
  driver: z.string(),
  status: z.string(),
  config: record,
  envVarNames: z.array(z.string()),
  metadata: record,
  capacity: z.number().int().nullable(),
  pool: z
    .strictObject({
      minReady: z.number().int(),
      maxReady: z.number().int(),
      maxAgeSeconds: z.number().int(),
      setup: z.strictObject({ command: z.string(), timeoutSeconds: z.number().int() }).optional(),
    })
    .nullable(),
  poolState: z
    .strictObject({
      size: z.number().int(),
      ready: z.number().int(),
      provisioning: z.number().int(),
      claimed: z.number().int(),
      refillFailures: z.number().int(),
      lastError: z.string().nullable(),
      lastErrorAt: tsOrNull,
    })
    .optional(),
  lastProbe: probe.nullable(),
  activeLeases: z.number().int().optional(),
  createdAt: ts,
  updatedAt: ts,
  unknownValues,
});

const driver = z.strictObject({
  kind: z.string(),
  title: z.string(),
  runs: z.boolean(),
  adapters: z.array(z.string()),
  capabilities: z.record(z.string(), z.boolean()),
  secretFields: z.array(z.string()),
  form: z.array(z.strictObject({ path: z.string(), label: z.string(), type: z.string(), placeholder: z.string().optional() })),
  configSchema: record,
});

const supportWord = z.enum(['supported', 'unsupported']);

const lease = z.strictObject({
  id,
  companyId: id,
  environmentId: id.nullable(),
  executionWorkspaceId: z.string().nullable(),
  issueId: z.string().nullable(),
  heartbeatRunId: id.nullable(),
  status: z.string(),
  leasePolicy: z.string(),
  provider: z.string().nullable(),
  providerLeaseId: z.string().nullable(),
  fence: z.number().int(),
  idempotencyKey: z.string().nullable(),
  acquiredAt: ts,
  lastUsedAt: ts,
  expiresAt: tsOrNull,
  maxExpiresAt: tsOrNull,
  renewCount: z.number().int(),
  lastRenewedAt: tsOrNull,
  releasedAt: tsOrNull,
  failureReason: z.string().nullable(),
  cleanupStatus: z.string().nullable(),
  releaseStatus: z.string().nullable(),
  cleanupAttempts: z.number().int(),
  nextCleanupAt: tsOrNull,
  lastCleanupError: z.string().nullable(),
  metadata: record,
  /** Written by the server only: the driver owning the lease's resources and what it made. */
  driver: z.string().nullable(),
  driverState: record.nullable(),
  retainUntil: tsOrNull,
  /** The provider resource the server reserved for it (written by the server only). */
  resourceId: z.uuid().nullable(),
  createdAt: ts,
  updatedAt: ts,
  unknownValues,
});

/** adapterConfig shows env and headers by name only (envNames, headerNames). */
const agent = z.strictObject({
  id,
  companyId: id,
  name: z.string(),
  adapterType: z.string(),
  adapterConfig: record,
  defaultEnvironmentId: id.nullable(),
  status: z.string(),
  maxConcurrentRuns: z.number().int(),
  runningCount: z.number().int(),
  intervalSec: z.number().int().nullable(),
  createdAt: ts,
  updatedAt: ts,
});

const run = z.strictObject({
  id,
  companyId: id,
  agentId: id,
  status: z.string(),
  invocationSource: z.string(),
  contextSnapshot: record,
  exitCode: z.number().int().nullable(),
  signal: z.string().nullable(),
  error: z.string().nullable(),
  errorCode: z.string().nullable(),
  environmentId: id.nullable(),
  leaseId: id.nullable(),
  serverId: z.string().nullable(),
  hostname: z.string().nullable(),
  pid: z.number().int().nullable(),
  /** Who `pid` is on its host (boot id, pid namespace, start time), for recovery. */
  processIdentity: record.nullable(),
  cancelRequestedAt: tsOrNull,
  /** A queued run is not claimed before this: it waits for its environment's capacity. */
  notBefore: tsOrNull,
  /** The invocation's idempotency key: a repeat with it answered with this run. */
  idempotencyKey: z.string().nullable(),
  createdAt: ts,
  startedAt: tsOrNull,
  finishedAt: tsOrNull,
});

const logChunk = z.strictObject({ seq: z.number().int(), ts, stream: z.enum(['stdout', 'stderr', 'system']), chunk: z.string() });

const activity = z.strictObject({
  id: z.number().int(),
  companyId: id,
  actorType: z.string(),
  actorId: z.string().nullable(),
  action: z.string(),
  entityType: z.string(),
  entityId: z.string(),
  runId: id.nullable(),
  details: record,
  createdAt: ts,
});

export const RESPONSES: Record<string, z.ZodType> = {
  'GET /health': z.strictObject({ ok: z.literal(true), version: z.string(), database: z.enum(['pglite', 'postgres']) }),
  'POST /api/companies': z.strictObject({ company, apiKey: z.string(), apiKeyRecord: apiKey }),
  'GET /api/companies': z.array(company),
  'GET /api/companies/:companyId': company,
  'GET /api/companies/:companyId/api-keys': z.array(apiKey),
  'POST /api/companies/:companyId/api-keys': z.strictObject({ apiKey: z.string(), apiKeyRecord: apiKey }),
  'DELETE /api/api-keys/:id': apiKey,
  'GET /api/drivers': z.array(driver),
  'GET /api/companies/:companyId/environments': z.array(environment),
  'POST /api/companies/:companyId/environments': environment,
  'GET /api/environments/:id': environment,
  'PATCH /api/environments/:id': environment,
  'POST /api/environments/:id/archive': environment,
  'DELETE /api/environments/:id': environment,
  'POST /api/environments/:id/probe': probe,
  'GET /api/environments/:id/leases': z.array(lease),
  'POST /api/environments/:id/leases': z.strictObject({ lease, created: z.boolean(), reacquired: z.boolean() }),
  'GET /api/environment-leases/:leaseId': lease,
  'POST /api/environment-leases/:leaseId/renew': lease,
  'PATCH /api/environment-leases/:leaseId/metadata': lease,
  'POST /api/environment-leases/:leaseId/exec': z.strictObject({
    exitCode: z.number().int().nullable(),
    signal: z.string().nullable(),
    timedOut: z.boolean(),
    stdout: z.string(),
    stderr: z.string(),
    stdoutTruncatedBytes: z.number().int(),
    stderrTruncatedBytes: z.number().int(),
    durationMs: z.number().int(),
    error: z.string().optional(),
  }),
  'POST /api/environment-leases/:leaseId/files': z.strictObject({
    path: z.string(),
    files: z.number().int(),
    directories: z.number().int(),
    links: z.number().int(),
    bytes: z.number().int(),
  }),
  'POST /api/environment-leases/:leaseId/release': z.strictObject({ lease, changed: z.boolean() }),
  'GET /api/companies/:companyId/agents': z.array(agent),
  'POST /api/companies/:companyId/agents': agent,
  'GET /api/agents/:id': agent,
  'PATCH /api/agents/:id': agent,
  'DELETE /api/agents/:id': agent,
  'POST /api/agents/:id/wakeup': run,
  'GET /api/companies/:companyId/heartbeat-runs': z.array(run),
  'GET /api/heartbeat-runs/:id': run,
  'POST /api/heartbeat-runs/:id/cancel': run,
  'GET /api/heartbeat-runs/:id/log': z.union([
    z.strictObject({ run, chunks: z.array(logChunk), lastSeq: z.number().int() }),
    // With offset/limitBytes: Paperclip's NDJSON log by byte offset.
    z.strictObject({ runId: id, store: z.literal('berth'), logRef: id, content: z.string(), nextOffset: z.number().int(), endOffset: z.number().int() }),
  ]),
  'GET /api/companies/:companyId/activity': z.array(activity),
  // Paperclip's names and shapes (src/http/routes/paperclip.ts).
  'GET /api/health': z.strictObject({ ok: z.literal(true), status: z.literal('ok'), version: z.string(), database: z.enum(['pglite', 'postgres']) }),
  'GET /api/agents/me': agent.extend({ runId: id.nullable() }),
  'POST /api/agents/:id/heartbeat/invoke': run,
  'POST /api/agents/:id/pause': agent,
  'POST /api/agents/:id/resume': agent,
  'GET /api/companies/:companyId/environments/capabilities': z.strictObject({
    adapters: z.array(z.strictObject({ adapterType: z.string(), drivers: z.record(z.string(), supportWord), sandboxProviders: record })),
    drivers: z.record(z.string(), supportWord),
    sandboxProviders: record,
    berthDrivers: z.array(z.strictObject({ kind: z.string(), title: z.string(), runs: z.boolean(), adapters: z.array(z.string()), capabilities: z.record(z.string(), z.boolean()) })),
  }),
  'POST /api/companies/:companyId/environments/probe-config': z.strictObject({
    ok: z.boolean(),
    driver: z.string(),
    summary: z.string(),
    latencyMs: z.number(),
    details: record,
    error: z.string().optional(),
  }),
  'GET /api/environments/:id/delete-blast-radius': z.strictObject({
    environmentId: id,
    driver: z.string(),
    canDelete: z.boolean(),
    deleteBlockedReasons: z.array(z.string()),
    blockingLeases: z.record(z.string(), z.number().int()),
    blockingResources: z.record(z.string(), z.number().int()),
    leaseHistory: z.number().int(),
    agentsDefaulting: z.number().int(),
  }),
  'GET /api/heartbeat-runs/:id/events': z.array(
    z.strictObject({
      id: z.number().int(),
      companyId: id,
      runId: id.nullable(),
      seq: z.number().int(),
      eventType: z.string(),
      stream: z.literal('system'),
      level: z.enum(['info', 'error']),
      message: z.string(),
      payload: record,
      action: z.string(),
      createdAt: ts,
    }),
  ),
};

/** For routes that only stream (their JSON answer is the event stream itself). */
export const STREAM_ONLY = new Set(['GET /api/companies/:companyId/events', 'GET /api/environment-leases/:leaseId/files']);
