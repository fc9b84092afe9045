// Row -> domain mappers for raw SQL results. node-postgres returns int8 as text
// and PGlite as number; both return timestamptz as Date, jsonb as objects.
import { DRIVER_KINDS } from '../drivers/descriptors.js';
import {
  CLEANUP_STATUSES,
  ENVIRONMENT_STATUSES,
  LEASE_POLICIES,
  LEASE_STATUSES,
  readEnum,
  type ResourceStatus,
} from '../domain/enums.js';
import { agentSecretPaths, environmentSecretPaths, redactSecrets } from '../secrets/config.js';
import type { PoolConfig } from '../domain/validators.js';
import type { ActivityEntry, Agent, ApiKeyRecord, Company, Environment, HeartbeatRun, Lease, ProviderResource, RunLogChunk } from '../domain/types.js';
import type { activityLog, agents, apiKeys, companies, environments, heartbeatRunLogs } from './schema.js';

type Row = Record<string, unknown>;

/**
 * `true` when every column of `Table` is a field of `Domain` or named in `NotShown` (shown
 * otherwise, or server-only); else the columns left out, which Mapped below refuses.
 */
type ColumnsShown<Table extends { $inferSelect: object }, Domain, NotShown extends keyof Table['$inferSelect'] = never> =
  [Exclude<keyof Table['$inferSelect'], keyof Domain | NotShown>] extends [never]
    ? true
    : { columnsNotInDomainType: Exclude<keyof Table['$inferSelect'], keyof Domain | NotShown> };
type Mapped<T extends true> = T;
/**
 * Compile-time check that the hand-written domain types (Lease and HeartbeatRun derive from
 * the schema) cannot drift from their tables: a new column fails here until it is added to
 * the type and mapped below, or named as not shown.
 */
export type DomainTypesCoverColumns = [
  Mapped<ColumnsShown<typeof companies, Company>>,
  // envVars: shown as envVarNames only (their values are secrets). poolStatus: shown through the pool's state (services/pools).
  Mapped<ColumnsShown<typeof environments, Environment, 'envVars' | 'poolStatus'>>,
  // lastTimerAt: the scheduler's own mark of the last timer run it queued.
  Mapped<ColumnsShown<typeof agents, Agent, 'lastTimerAt'>>,
  // keyHash: the key's hash, a credential.
  Mapped<ColumnsShown<typeof apiKeys, ApiKeyRecord, 'keyHash'>>,
  Mapped<ColumnsShown<typeof activityLog, ActivityEntry>>,
  // runId: a chunk is always read through its run.
  Mapped<ColumnsShown<typeof heartbeatRunLogs, RunLogChunk, 'runId'>>,
];

const str = (v: unknown): string => String(v);
const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));
const num = (v: unknown): number => Number(v);
const date = (v: unknown): Date => (v instanceof Date ? v : new Date(String(v)));
const dateOrNull = (v: unknown): Date | null => (v === null || v === undefined ? null : date(v));
/** A jsonb value as an object (PGlite and node-postgres give objects; text is parsed; null is {}). */
export const readJson = <T = Record<string, unknown>>(v: unknown): T => (v && typeof v === 'object' ? v : typeof v === 'string' ? JSON.parse(v) : {}) as T;
const obj = readJson;

function noteUnknown(target: { unknownValues?: Record<string, string> }, field: string, raw: string, known: string): void {
  if (known === 'unknown' && raw !== 'unknown') (target.unknownValues ??= {})[field] = raw;
}

/**
 * An environment's stored secrets ({config, envVars}) as reads show them, by its driver's
 * secret paths: envVars by name, config secrets by name or as `has...: true`.
 */
function shownEnvironmentSecrets(r: Row): { config: Record<string, unknown>; envVarNames: string[] } {
  const shown = redactSecrets({ config: obj(r.config), envVars: obj(r.env_vars) }, environmentSecretPaths(str(r.driver)));
  return { config: obj(shown.config), envVarNames: Array.isArray(shown.envVarNames) ? (shown.envVarNames as string[]) : [] };
}

/** The stored document of an environment's secrets, for sealing and opening (services/environments.ts). */
export function environmentSecretDoc(r: Row): { config: Record<string, unknown>; envVars: Record<string, unknown> } {
  return { config: obj(r.config), envVars: obj(r.env_vars) };
}

export function toApiKey(r: Row): ApiKeyRecord {
  return {
    id: str(r.id),
    companyId: str(r.company_id),
    name: str(r.name),
    prefix: str(r.prefix),
    createdAt: date(r.created_at),
    lastUsedAt: dateOrNull(r.last_used_at),
    revokedAt: dateOrNull(r.revoked_at),
  };
}

export function toCompany(r: Row): Company {
  return { id: str(r.id), name: str(r.name), createdAt: date(r.created_at), updatedAt: date(r.updated_at) };
}

export function toEnvironment(r: Row): Environment {
  const env: Environment = {
    id: str(r.id),
    companyId: str(r.company_id),
    name: str(r.name),
    description: strOrNull(r.description),
    driver: readEnum(DRIVER_KINDS, str(r.driver)),
    status: readEnum(ENVIRONMENT_STATUSES, str(r.status)),
    ...shownEnvironmentSecrets(r),
    metadata: obj(r.metadata),
    capacity: r.capacity === null || r.capacity === undefined ? null : num(r.capacity),
    pool: r.pool === null || r.pool === undefined ? null : (obj(r.pool) as unknown as PoolConfig),
    lastProbe: r.last_probe === null || r.last_probe === undefined ? null : obj(r.last_probe),
    createdAt: date(r.created_at),
    updatedAt: date(r.updated_at),
  };
  noteUnknown(env, 'driver', str(r.driver), env.driver);
  noteUnknown(env, 'status', str(r.status), env.status);
  return env;
}

export function toLease(r: Row): Lease {
  const cleanupRaw = strOrNull(r.cleanup_status);
  const lease: Lease = {
    id: str(r.id),
    companyId: str(r.company_id),
    environmentId: strOrNull(r.environment_id),
    resourceId: strOrNull(r.resource_id),
    executionWorkspaceId: strOrNull(r.execution_workspace_id),
    issueId: strOrNull(r.issue_id),
    heartbeatRunId: strOrNull(r.heartbeat_run_id),
    status: readEnum(LEASE_STATUSES, str(r.status)),
    leasePolicy: readEnum(LEASE_POLICIES, str(r.lease_policy)),
    provider: strOrNull(r.provider),
    providerLeaseId: strOrNull(r.provider_lease_id),
    fence: num(r.fence),
    idempotencyKey: strOrNull(r.idempotency_key),
    acquiredAt: date(r.acquired_at),
    lastUsedAt: date(r.last_used_at),
    expiresAt: dateOrNull(r.expires_at),
    maxExpiresAt: dateOrNull(r.max_expires_at),
    renewCount: num(r.renew_count),
    lastRenewedAt: dateOrNull(r.last_renewed_at),
    releasedAt: dateOrNull(r.released_at),
    failureReason: strOrNull(r.failure_reason),
    cleanupStatus: cleanupRaw === null ? null : readEnum(CLEANUP_STATUSES, cleanupRaw),
    releaseStatus: strOrNull(r.release_status),
    cleanupAttempts: num(r.cleanup_attempts),
    nextCleanupAt: dateOrNull(r.next_cleanup_at),
    lastCleanupError: strOrNull(r.last_cleanup_error),
    metadata: obj(r.metadata),
    driver: strOrNull(r.driver),
    driverState: r.driver_state === null || r.driver_state === undefined ? null : obj(r.driver_state),
    retainUntil: dateOrNull(r.retain_until),
    createdAt: date(r.created_at),
    updatedAt: date(r.updated_at),
  };
  noteUnknown(lease, 'status', str(r.status), lease.status);
  noteUnknown(lease, 'leasePolicy', str(r.lease_policy), lease.leasePolicy);
  if (cleanupRaw !== null) noteUnknown(lease, 'cleanupStatus', cleanupRaw, lease.cleanupStatus ?? 'unknown');
  return lease;
}

export function toActivity(r: Row): ActivityEntry {
  return {
    id: num(r.id),
    companyId: str(r.company_id),
    actorType: str(r.actor_type),
    actorId: strOrNull(r.actor_id),
    action: str(r.action),
    entityType: str(r.entity_type),
    entityId: str(r.entity_id),
    runId: strOrNull(r.run_id),
    details: obj(r.details),
    createdAt: date(r.created_at),
  };
}

const intOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

/** An agent as reads show it: its adapter's secrets (env, headers) by name only. */
export function toAgent(r: Row): Agent {
  const shown = redactSecrets({ adapterConfig: obj(r.adapter_config) }, agentSecretPaths(str(r.adapter_type)));
  return { ...toAgentStored(r), adapterConfig: obj(shown.adapterConfig) };
}

/** The agent with its adapter config as stored (secrets sealed): only for opening them. */
export function toAgentStored(r: Row): Agent {
  return {
    id: str(r.id),
    companyId: str(r.company_id),
    name: str(r.name),
    adapterType: str(r.adapter_type),
    adapterConfig: obj(r.adapter_config),
    defaultEnvironmentId: strOrNull(r.default_environment_id),
    status: str(r.status),
    maxConcurrentRuns: num(r.max_concurrent_runs),
    runningCount: num(r.running_count),
    intervalSec: intOrNull(r.interval_sec),
    createdAt: date(r.created_at),
    updatedAt: date(r.updated_at),
  };
}

export function toRun(r: Row): HeartbeatRun {
  return {
    id: str(r.id),
    companyId: str(r.company_id),
    agentId: str(r.agent_id),
    status: str(r.status),
    invocationSource: str(r.invocation_source),
    contextSnapshot: obj(r.context_snapshot),
    exitCode: intOrNull(r.exit_code),
    signal: strOrNull(r.signal),
    error: strOrNull(r.error),
    errorCode: strOrNull(r.error_code),
    environmentId: strOrNull(r.environment_id),
    leaseId: strOrNull(r.lease_id),
    serverId: strOrNull(r.server_id),
    hostname: strOrNull(r.hostname),
    pid: intOrNull(r.pid),
    processIdentity: r.process_identity === null || r.process_identity === undefined ? null : obj(r.process_identity),
    cancelRequestedAt: dateOrNull(r.cancel_requested_at),
    notBefore: dateOrNull(r.not_before),
    idempotencyKey: strOrNull(r.idempotency_key),
    createdAt: date(r.created_at),
    startedAt: dateOrNull(r.started_at),
    finishedAt: dateOrNull(r.finished_at),
  };
}

export function toLogChunk(r: Row): RunLogChunk {
  return { seq: num(r.seq), ts: date(r.ts), stream: str(r.stream) as RunLogChunk['stream'], chunk: str(r.chunk) };
}

export function toResource(r: Row): ProviderResource {
  return {
    id: str(r.id),
    companyId: str(r.company_id),
    environmentId: strOrNull(r.environment_id),
    driver: str(r.driver),
    providerId: strOrNull(r.provider_id),
    labels: obj(r.labels),
    state: obj(r.state),
    // Written by the server only, under a CHECK of the same list: no unknown value to note.
    status: str(r.status) as ResourceStatus,
    leaseId: strOrNull(r.lease_id),
    attempts: num(r.attempts),
    nextAttemptAt: dateOrNull(r.next_attempt_at),
    lastError: strOrNull(r.last_error),
    createdAt: date(r.created_at),
    readyAt: dateOrNull(r.ready_at),
    destroyAfter: dateOrNull(r.destroy_after),
    destroyedAt: dateOrNull(r.destroyed_at),
    poolMember: r.pool_member === true,
    madeBy: strOrNull(r.made_by),
    readyDetails: r.ready_details === null || r.ready_details === undefined ? null : obj(r.ready_details),
    updatedAt: date(r.updated_at),
  };
}
