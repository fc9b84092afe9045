// The database schema: the single source of truth for tables, columns and indexes.
// Enum columns are plain text on purpose: a value written by a newer Berth must
// not make this version fail to read a row (the services validate every write).
import { sql } from 'drizzle-orm';
import { RESOURCE_STATUSES } from '../domain/enums.js';
import {
  bigint,
  boolean,
  check,
  index,
  integer,
  jsonb,
  pgSequence,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from 'drizzle-orm/pg-core';

const createdAt = () => timestamp('created_at', { withTimezone: true }).notNull().defaultNow();
const updatedAt = () => timestamp('updated_at', { withTimezone: true }).notNull().defaultNow();
const jsonObject = (name: string) => jsonb(name).$type<Record<string, unknown>>().notNull().default({});

export const companies = pgTable('companies', {
  id: uuid('id').primaryKey().defaultRandom(),
  name: text('name').notNull(),
  createdAt: createdAt(),
  updatedAt: updatedAt(),
});

export const environments = pgTable(
  'environments',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    companyId: uuid('company_id')
      .notNull()
      .references(() => companies.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    description: text('description'),
    driver: text('driver').notNull(),
    status: text('status').notNull().default('active'),
    config: jsonObject('config'),
    envVars: jsonb('env_vars').$type<Record<string, string>>().notNull().default({}),
    metadata: jsonObject('metadata'),
    /** Max concurrent active leases; null = unlimited. */
    capacity: integer('capacity'),
    /** The last probe's result ({ok, latencyMs, details, error, at}); null until probed. */
    lastProbe: jsonb('last_probe').$type<Record<string, unknown>>(),
    /** Warm pool ({minReady, maxReady, maxAgeSeconds, setup?}); null = none. Only for drivers whose descriptor says `pool`. */
    pool: jsonb('pool').$type<Record<string, unknown>>(),
    /** What the pool's refill last did wrong ({refillFailures, lastError, lastErrorAt}); server-written. */
    poolStatus: jsonObject('pool_status'),
    createdAt: createdAt(),
    updatedAt: updatedAt(),
  },
  (t) => [
    uniqueIndex('environments_company_name_uq').on(t.companyId, t.name),
    // At most one local environment per company: what makes ensureLocalEnvironment single-flight.
    uniqueIndex('environments_company_local_uq').on(t.companyId).where(sql`${t.driver} = 'local'`),
    index('environments_company_updated_idx').on(t.companyId, t.updatedAt.desc(), t.id.desc()),
    check('environments_capacity_ck', sql`${t.capacity} IS NULL OR ${t.capacity} >= 0`),
  ],
);

/**
 * Fences come from one sequence: nextval only grows, so a lease acquired after
 * another finished acquiring always holds the greater fence, on every environment,
 * without a hot counter row that every acquire would have to lock.
 */
export const leaseFenceSeq = pgSequence('environment_lease_fence_seq', { startWith: 1, increment: 1 });

export const environmentLeases = pgTable(
  'environment_leases',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    // No foreign key to companies: an acquire copies company_id from the environment
    // row it locks, in the same statement, so the two cannot disagree; leaving the
    // check out saves a trigger query on the hottest insert. Leases outlive neither
    // rule: there is no company delete.
    companyId: uuid('company_id').notNull(),
    // SET NULL keeps the lease history when its environment is deleted (deletion is
    // refused while any lease of it is not terminal).
    environmentId: uuid('environment_id').references(() => environments.id, { onDelete: 'set null' }),
    executionWorkspaceId: text('execution_workspace_id'),
    issueId: text('issue_id'),
    heartbeatRunId: uuid('heartbeat_run_id'),
    status: text('status').notNull(),
    leasePolicy: text('lease_policy').notNull(),
    provider: text('provider'),
    providerLeaseId: text('provider_lease_id'),
    fence: bigint('fence', { mode: 'number' }).notNull(),
    idempotencyKey: text('idempotency_key'),
    acquiredAt: timestamp('acquired_at', { withTimezone: true }).notNull().defaultNow(),
    lastUsedAt: timestamp('last_used_at', { withTimezone: true }).notNull().defaultNow(),
    expiresAt: timestamp('expires_at', { withTimezone: true }),
    /** Renewals never move expiresAt past this. */
    maxExpiresAt: timestamp('max_expires_at', { withTimezone: true }),
    renewCount: integer('renew_count').notNull().default(0),
    lastRenewedAt: timestamp('last_renewed_at', { withTimezone: true }),
    releasedAt: timestamp('released_at', { withTimezone: true }),
    failureReason: text('failure_reason'),
    cleanupStatus: text('cleanup_status'),
    /** While pending_cleanup: the terminal status the lease takes once cleanup succeeds. */
    releaseStatus: text('release_status'),
    cleanupAttempts: integer('cleanup_attempts').notNull().default(0),
    nextCleanupAt: timestamp('next_cleanup_at', { withTimezone: true }),
    lastCleanupError: text('last_cleanup_error'),
    /** The caller's metadata: free-form, never read by the server to decide anything. */
    metadata: jsonObject('metadata'),
    /**
     * The driver that owns the lease's resources (written by the server when a run takes the
     * lease, before any resource exists: the write-ahead record cleanup works from); null for a
     * lease taken through the API alone, which owes no cleanup. No API route writes it.
     */
    driver: text('driver'),
    /** What that driver made (workspace path, host...): server-written, never from a caller. */
    driverState: jsonb('driver_state').$type<Record<string, unknown>>(),
    /** A retained lease's resources are cleaned and the lease ends `expired` at this time. */
    retainUntil: timestamp('retain_until', { withTimezone: true }),
    /** The provider resource (provider_resources) its driver made for it, reserved in the statement that granted it. */
    resourceId: uuid('resource_id'),
    /**
     * While active on a capacity-limited environment: which of its `capacity` places the lease
     * holds, in [0, capacity). Server-only; null on an unlimited environment. A stale value on
     * a lease that is no longer active means nothing (the slot index looks at active leases).
     */
    slot: integer('slot'),
    createdAt: createdAt(),
    updatedAt: updatedAt(),
  },
  (t) => [
    // Guarantee 4: one lease per idempotency key per company, forever.
    uniqueIndex('environment_leases_idempotency_uq')
      .on(t.companyId, t.idempotencyKey)
      .where(sql`${t.idempotencyKey} IS NOT NULL`),
    // Guarantee 2: one active lease per (run, environment); also finds a run's active
    // leases when the run is finalized ...
    uniqueIndex('environment_leases_active_run_uq')
      .on(t.heartbeatRunId, t.environmentId)
      .where(sql`${t.status} = 'active' AND ${t.heartbeatRunId} IS NOT NULL`),
    // ... and one active ephemeral lease per (environment, execution workspace).
    uniqueIndex('environment_leases_active_workspace_uq')
      .on(t.environmentId, t.executionWorkspaceId)
      .where(sql`${t.status} = 'active' AND ${t.leasePolicy} = 'ephemeral' AND ${t.executionWorkspaceId} IS NOT NULL`),
    // Capacity: at most one active lease per (environment, slot), and a grant only takes a
    // slot below the capacity, so no number of concurrent acquirers on any number of servers
    // can hold more than `capacity` at once, and none waits on a lock held by another.
    // A warm pool's idle member holds its place too (a `pooled` lease row: see services/pools), so
    // idle members and active leases together never exceed the capacity.
    uniqueIndex('environment_leases_active_slot_uq')
      .on(t.environmentId, t.slot)
      .where(sql`${t.status} IN ('active', 'pooled') AND ${t.slot} IS NOT NULL`),
    // A pool's idle members (their placeholder leases), per environment.
    index('environment_leases_pooled_idx').on(t.environmentId).where(sql`${t.status} = 'pooled'`),
    // Listing an environment's leases, most recently used first (keyset paging), and
    // its active ones, which the capacity check counts. Partial indexes are touched
    // only while their predicate holds: releasing a lease does not write the second.
    index('environment_leases_env_used_idx').on(t.environmentId, t.lastUsedAt, t.id),
    index('environment_leases_env_active_idx').on(t.environmentId, t.lastUsedAt, t.id).where(sql`${t.status} = 'active'`),
    // The expiry sweep and the cleanup retry loop each read only their own rows
    // (next_cleanup_at is set only while a cleanup is owed).
    index('environment_leases_expiry_idx').on(t.expiresAt).where(sql`${t.status} = 'active' AND ${t.expiresAt} IS NOT NULL`),
    index('environment_leases_cleanup_due_idx').on(t.nextCleanupAt).where(sql`${t.nextCleanupAt} IS NOT NULL`),
    index('environment_leases_retention_idx').on(t.retainUntil).where(sql`${t.status} = 'retained' AND ${t.retainUntil} IS NOT NULL`),
    // GET /metrics counts the leases waiting for a cleanup per environment without reading the
    // ended ones (the active and retained ones are counted through the indexes above).
    index('environment_leases_pending_cleanup_idx').on(t.environmentId).where(sql`${t.status} = 'pending_cleanup'`),
    check('environment_leases_fence_ck', sql`${t.fence} > 0`),
  ],
);

export const activityLog = pgTable(
  'activity_log',
  {
    id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
    // History, not a live reference: no foreign keys (every writer takes company_id
    // from a row it has just read or written in the same statement).
    companyId: uuid('company_id').notNull(),
    actorType: text('actor_type').notNull(),
    actorId: text('actor_id'),
    action: text('action').notNull(),
    entityType: text('entity_type').notNull(),
    entityId: text('entity_id').notNull(),
    runId: uuid('run_id'),
    details: jsonObject('details'),
    createdAt: createdAt(),
  },
  (t) => [
    index('activity_log_company_idx').on(t.companyId, t.id.desc()),
    // Entity ids are UUIDs, so (company, entity id) finds an entity's history without its type.
    index('activity_log_entity_idx').on(t.companyId, t.entityId, t.id.desc()),
    index('activity_log_run_idx').on(t.companyId, t.runId, t.id.desc()).where(sql`${t.runId} IS NOT NULL`),
    index('activity_log_action_idx').on(t.companyId, t.action, t.id.desc()),
  ],
);

export const agents = pgTable(
  'agents',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    companyId: uuid('company_id')
      .notNull()
      .references(() => companies.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    /** `process` or `http`; its config is validated per adapter. */
    adapterType: text('adapter_type').notNull(),
    adapterConfig: jsonObject('adapter_config'),
    defaultEnvironmentId: uuid('default_environment_id').references(() => environments.id, { onDelete: 'set null' }),
    status: text('status').notNull().default('active'),
    maxConcurrentRuns: integer('max_concurrent_runs').notNull().default(1),
    /** Runs this agent has claimed and not finished: the scheduler's per-agent limit, kept in the row it locks. */
    runningCount: integer('running_count').notNull().default(0),
    /** When set, a timer invokes the agent every this many seconds. */
    intervalSec: integer('interval_sec'),
    lastTimerAt: timestamp('last_timer_at', { withTimezone: true }),
    createdAt: createdAt(),
    updatedAt: updatedAt(),
  },
  (t) => [
    uniqueIndex('agents_company_name_uq').on(t.companyId, t.name),
    index('agents_timer_idx').on(t.lastTimerAt).where(sql`${t.intervalSec} IS NOT NULL AND ${t.status} = 'active'`),
    check('agents_max_concurrent_ck', sql`${t.maxConcurrentRuns} >= 1`),
    check('agents_running_count_ck', sql`${t.runningCount} >= 0`),
  ],
);

/**
 * Company API keys. The key itself is shown once, at creation; only its sha256 is
 * kept (keys are 32 random bytes, so a fast hash is enough: nothing to brute-force).
 */
export const apiKeys = pgTable(
  'api_keys',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    companyId: uuid('company_id')
      .notNull()
      .references(() => companies.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    keyHash: text('key_hash').notNull(),
    /** The key's first characters, to tell keys apart in a listing. */
    prefix: text('prefix').notNull(),
    createdAt: createdAt(),
    lastUsedAt: timestamp('last_used_at', { withTimezone: true }),
    revokedAt: timestamp('revoked_at', { withTimezone: true }),
  },
  (t) => [uniqueIndex('api_keys_hash_uq').on(t.keyHash), index('api_keys_company_idx').on(t.companyId)],
);

/**
 * The id of the key the database's secrets are sealed with (one row): a server whose key
 * differs refuses to start, instead of failing later on each secret it cannot open.
 */
export const berthSecretKey = pgTable(
  'berth_secret_key',
  {
    singleton: boolean('singleton').primaryKey().default(true),
    /** cipher.ts's key id: 8 hex characters of SHA-256 of the key, never the key. */
    keyId: text('key_id').notNull(),
    recordedAt: timestamp('recorded_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [check('berth_secret_key_singleton_ck', sql`${t.singleton}`)],
);

/** One row per Berth server process: what recovery reads to find runs whose server died. */
export const berthServers = pgTable('berth_servers', {
  id: text('id').primaryKey(),
  hostname: text('hostname').notNull(),
  pid: integer('pid').notNull(),
  startedAt: timestamp('started_at', { withTimezone: true }).notNull().defaultNow(),
  heartbeatAt: timestamp('heartbeat_at', { withTimezone: true }).notNull().defaultNow(),
  stoppedAt: timestamp('stopped_at', { withTimezone: true }),
});

/**
 * Maintenance tasks that one server runs per interval for all servers sharing the
 * database (scheduler gate 'one'): the server whose update moves last_run_at wins the interval.
 */
export const berthTaskRuns = pgTable('berth_task_runs', {
  name: text('name').primaryKey(),
  lastRunAt: timestamp('last_run_at', { withTimezone: true }).notNull().defaultNow(),
  serverId: text('server_id'),
});

export const heartbeatRuns = pgTable(
  'heartbeat_runs',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    companyId: uuid('company_id')
      .notNull()
      .references(() => companies.id, { onDelete: 'cascade' }),
    agentId: uuid('agent_id')
      .notNull()
      .references(() => agents.id, { onDelete: 'cascade' }),
    status: text('status').notNull().default('queued'),
    invocationSource: text('invocation_source').notNull(),
    contextSnapshot: jsonObject('context_snapshot'),
    exitCode: integer('exit_code'),
    signal: text('signal'),
    error: text('error'),
    errorCode: text('error_code'),
    environmentId: uuid('environment_id'),
    leaseId: uuid('lease_id'),
    /** sha256 of the run's PAPERCLIP_API_KEY: the token acts only on this run. */
    tokenHash: text('token_hash'),
    serverId: text('server_id'),
    /** Where the run's process group lives, so a later server on the same host can kill leftovers. */
    hostname: text('hostname'),
    pid: integer('pid'),
    /**
     * Who that pid is: {bootId, pidNamespace, startTime} (the kernel's boot id, the pid
     * namespace's inode, field 22 of /proc/<pid>/stat). Recovery signals the pid only when
     * all three still match, so a reused pid (after a reboot, in another container) is never hit.
     */
    processIdentity: jsonb('process_identity').$type<Record<string, unknown>>(),
    cancelRequestedAt: timestamp('cancel_requested_at', { withTimezone: true }),
    /** A queued run is not claimed before this (set when it had to wait for its environment's capacity). */
    notBefore: timestamp('not_before', { withTimezone: true }),
    logSeq: integer('log_seq').notNull().default(0),
    /** The invocation's idempotency key (Paperclip's wakeup `idempotencyKey`): one run per agent and key. */
    idempotencyKey: text('idempotency_key'),
    createdAt: createdAt(),
    startedAt: timestamp('started_at', { withTimezone: true }),
    finishedAt: timestamp('finished_at', { withTimezone: true }),
    updatedAt: updatedAt(),
  },
  (t) => [
    index('heartbeat_runs_queued_idx').on(t.createdAt).where(sql`${t.status} = 'queued'`),
    index('heartbeat_runs_running_idx').on(t.serverId).where(sql`${t.status} = 'running'`),
    index('heartbeat_runs_company_created_idx').on(t.companyId, t.createdAt.desc(), t.id.desc()),
    index('heartbeat_runs_agent_created_idx').on(t.agentId, t.createdAt.desc()),
    // A run's PAPERCLIP_API_KEY is looked up by its hash on every request it makes.
    uniqueIndex('heartbeat_runs_token_hash_uq').on(t.tokenHash).where(sql`${t.tokenHash} IS NOT NULL`),
    uniqueIndex('heartbeat_runs_idempotency_uq').on(t.agentId, t.idempotencyKey).where(sql`${t.idempotencyKey} IS NOT NULL`),
  ],
);

export const heartbeatRunLogs = pgTable(
  'heartbeat_run_logs',
  {
    runId: uuid('run_id')
      .notNull()
      .references(() => heartbeatRuns.id, { onDelete: 'cascade' }),
    seq: integer('seq').notNull(),
    ts: timestamp('ts', { withTimezone: true }).notNull(),
    stream: text('stream').notNull(),
    chunk: text('chunk').notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.seq] })],
);

const RESOURCE_STATUSES_SQL = sql.raw(`(${RESOURCE_STATUSES.map((st) => `'${st}'`).join(', ')})`);

/**
 * What a driver made on a provider (a workspace directory, a container, a job, a pod): the
 * record is written before the driver is asked to make it (the write-ahead record), so a
 * crash at any point leaves a row a sweep finds. Only the server writes it: no API caller
 * can name what cleanup destroys.
 *   provisioning -> ready (a pool's, no lease) -> leased -> draining (its lease is retained)
 *   -> destroying (owed a destroy; retried with backoff) -> destroyed | lost (gave up)
 */
export const providerResources = pgTable(
  'provider_resources',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    companyId: uuid('company_id').notNull(),
    // Deleting an environment is refused while any of its resources is not destroyed (the
    // environment service checks in its delete statement); destroyed ones keep their history.
    environmentId: uuid('environment_id').references(() => environments.id, { onDelete: 'set null' }),
    driver: text('driver').notNull(),
    /** The provider's own id (a directory, a container id); null until provision returned. */
    providerId: text('provider_id'),
    labels: jsonb('labels').$type<Record<string, string>>().notNull().default({}),
    /** The driver's handle state (ResourceHandle.state). */
    state: jsonObject('state'),
    status: text('status').notNull(),
    leaseId: uuid('lease_id'),
    /** The environment's driver and sealed config when the resource was made: destroy works after the environment changed or went. */
    configSnapshot: jsonObject('config_snapshot'),
    attempts: integer('attempts').notNull().default(0),
    nextAttemptAt: timestamp('next_attempt_at', { withTimezone: true }),
    lastError: text('last_error'),
    createdAt: createdAt(),
    readyAt: timestamp('ready_at', { withTimezone: true }),
    /** A draining resource is destroyed at this time (its lease's retention). */
    destroyAfter: timestamp('destroy_after', { withTimezone: true }),
    destroyedAt: timestamp('destroyed_at', { withTimezone: true }),
    /** Made ahead of any lease by a warm pool's refill (services/pools). */
    poolMember: boolean('pool_member').notNull().default(false),
    /** The server whose refill is provisioning it: a member whose maker is gone is retired. */
    madeBy: text('made_by'),
    /** A pool member's ready workspace ({cwd, details}): what a warm claim hands the run instead of provisioning. */
    readyDetails: jsonb('ready_details').$type<Record<string, unknown>>(),
    updatedAt: updatedAt(),
  },
  (t) => [
    // A pool's ready members, oldest ready first (what a warm claim takes).
    index('provider_resources_pool_ready_idx').on(t.environmentId, t.readyAt).where(sql`${t.status} = 'ready' AND ${t.poolMember}`),
    uniqueIndex('provider_resources_lease_uq').on(t.leaseId).where(sql`${t.leaseId} IS NOT NULL`),
    // Resource GC reads only what is owed a destroy, due first.
    index('provider_resources_due_idx').on(t.nextAttemptAt).where(sql`${t.status} = 'destroying'`),
    index('provider_resources_draining_idx').on(t.destroyAfter).where(sql`${t.status} = 'draining'`),
    // What an environment still holds (environment delete, reconciliation, pools).
    index('provider_resources_env_live_idx').on(t.environmentId, t.status).where(sql`${t.status} NOT IN ('destroyed', 'lost')`),
    check('provider_resources_status_ck', sql`${t.status} IN ${RESOURCE_STATUSES_SQL}`),
  ],
);

/**
 * A run's execution as its driver described it (ExecutionHandle): where it lives and how far
 * its output was logged, so recovery can signal it through the driver, and a driver with
 * reattach lets another server resume watching it from that offset.
 */
export const runExecutions = pgTable('run_executions', {
  runId: uuid('run_id')
    .primaryKey()
    .references(() => heartbeatRuns.id, { onDelete: 'cascade' }),
  resourceId: uuid('resource_id'),
  driver: text('driver').notNull(),
  handle: jsonObject('handle'),
  /** Where it runs (ExecutionHandle.host): a boot id for this machine, user@host:port for SSH. */
  host: text('host'),
  /** The driver's output offset up to which the run's log holds the output (written with each log batch). */
  outputOffset: text('output_offset'),
  createdAt: createdAt(),
  updatedAt: updatedAt(),
});
