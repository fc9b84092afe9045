// The objects the services hand out. Dates are Date, ids are strings.
import type {
  ActorType,
  CleanupStatus,
  EnvironmentDriverKind,
  EnvironmentStatus,
  Known,
  LeasePolicy,
  LeaseStatus,
  ResourceStatus,
} from './enums.js';
import type { PoolConfig } from './validators.js';
import type { environmentLeases, heartbeatRuns, providerResources, runExecutions } from '../db/schema.js';

/** Who caused a change; written into every activity row. */
export interface Actor {
  type: ActorType;
  id: string | null;
}
export const SYSTEM_ACTOR: Actor = { type: 'system', id: null };

export interface Company {
  id: string;
  name: string;
  createdAt: Date;
  updatedAt: Date;
}

export interface Environment {
  id: string;
  companyId: string;
  name: string;
  description: string | null;
  driver: Known<EnvironmentDriverKind>;
  status: Known<EnvironmentStatus>;
  /**
   * Driver config with its secrets (src/secrets/config.ts) shown by name only:
   * `privateKey` becomes `hasPrivateKey: true`, a sandbox's `options` become `optionNames`.
   */
  config: Record<string, unknown>;
  /** The names of the environment's variables; their values are secrets, never read back. */
  envVarNames: string[];
  metadata: Record<string, unknown>;
  capacity: number | null;
  /** Its warm pool (services/pools); null = none (absent in an environment built by hand). */
  pool?: PoolConfig | null;
  /** The last probe's result ({ok, latencyMs, details, error, at}); null until probed. */
  lastProbe: Record<string, unknown> | null;
  createdAt: Date;
  updatedAt: Date;
  /** Raw values of enum columns this version does not know (written by a newer Berth). */
  unknownValues?: Record<string, string>;
}

/** Columns of environment_leases a lease does not show: the capacity slot it holds (the server's bookkeeping). */
type LeaseServerOnlyColumn = 'slot';

/**
 * A lease: every other column of environment_leases (src/db/schema.ts documents them), with
 * its enum columns read as the values this version knows. Derived from the schema, so a column
 * added there is a field here unless it is named server-only above, and toLease
 * (src/db/rows.ts) does not compile until it maps it.
 */
export interface Lease extends Omit<typeof environmentLeases.$inferSelect, 'status' | 'leasePolicy' | 'cleanupStatus' | LeaseServerOnlyColumn> {
  status: Known<LeaseStatus>;
  leasePolicy: Known<LeasePolicy>;
  cleanupStatus: Known<CleanupStatus> | null;
  unknownValues?: Record<string, string>;
}

/**
 * What a driver made on a provider, as the server records it (provider_resources): every
 * column but the sealed config snapshot, which only resource GC opens.
 */
export interface ProviderResource extends Omit<typeof providerResources.$inferSelect, 'status' | 'configSnapshot'> {
  status: ResourceStatus;
}

/** A run's execution as its driver described it (run_executions.handle): the driver's ExecutionHandle, stored. */
export interface StoredExecution {
  driver: string;
  host: string | null;
  ref: Record<string, unknown>;
}

/** A run whose server is gone and whose execution this server can reattach to: what resuming it needs. */
export interface AdoptedRun extends Pick<typeof runExecutions.$inferSelect, 'resourceId' | 'outputOffset'> {
  run: HeartbeatRun;
  execution: StoredExecution;
  /** The last log seq its first server wrote: the resumed log goes on after it. */
  logSeq: number;
}

export interface ActivityEntry {
  id: number;
  companyId: string;
  actorType: string;
  actorId: string | null;
  action: string;
  entityType: string;
  entityId: string;
  runId: string | null;
  details: Record<string, unknown>;
  createdAt: Date;
}

export interface Page<T> {
  items: T[];
  /** Pass back to get the next page; null when there is none. */
  nextCursor: string | null;
}

export interface Agent {
  id: string;
  companyId: string;
  name: string;
  adapterType: string;
  /** As reads show it, secrets by name only (env → envNames, headers → headerNames); agents.getWithSecrets gives the clear config. */
  adapterConfig: Record<string, unknown>;
  defaultEnvironmentId: string | null;
  status: string;
  maxConcurrentRuns: number;
  runningCount: number;
  intervalSec: number | null;
  createdAt: Date;
  updatedAt: Date;
}

/**
 * Columns of heartbeat_runs a run does not show: the hash of its token (a credential), the
 * counter its log chunks are numbered by, and the row's own update time.
 */
type RunServerOnlyColumn = 'tokenHash' | 'logSeq' | 'updatedAt';

/**
 * A heartbeat run: every other column of heartbeat_runs (src/db/schema.ts documents them:
 * `processIdentity` says who `pid` is, `notBefore` until when a queued run waits). Derived
 * from the schema, so a new column is a field here unless it is named server-only above.
 */
export type HeartbeatRun = Omit<typeof heartbeatRuns.$inferSelect, RunServerOnlyColumn>;

export interface RunLogChunk {
  seq: number;
  ts: Date;
  stream: 'stdout' | 'stderr' | 'system';
  chunk: string;
}

/** A company API key as listed: never the key itself. */
export interface ApiKeyRecord {
  id: string;
  companyId: string;
  name: string;
  /** The key's first characters, to tell keys apart; never enough to use it. */
  prefix: string;
  createdAt: Date;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
}
