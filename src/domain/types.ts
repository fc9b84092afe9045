// The objects the services hand out. Dates are Date, ids are strings.
import type {
  ActorType,
  CleanupStatus,
  EnvironmentDriverKind,
  EnvironmentStatus,
  Known,
  LeasePolicy,
  LeaseStatus,
} from './enums.js';

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
  /** The last probe's result ({ok, latencyMs, details, error, at}); null until probed. */
  lastProbe: Record<string, unknown> | null;
  createdAt: Date;
  updatedAt: Date;
  /** Raw values of enum columns this version does not know (written by a newer Berth). */
  unknownValues?: Record<string, string>;
}

export interface Lease {
  id: string;
  companyId: string;
  environmentId: string | null;
  executionWorkspaceId: string | null;
  issueId: string | null;
  heartbeatRunId: string | null;
  status: Known<LeaseStatus>;
  leasePolicy: Known<LeasePolicy>;
  provider: string | null;
  providerLeaseId: string | null;
  fence: number;
  idempotencyKey: string | null;
  acquiredAt: Date;
  lastUsedAt: Date;
  expiresAt: Date | null;
  maxExpiresAt: Date | null;
  renewCount: number;
  lastRenewedAt: Date | null;
  releasedAt: Date | null;
  failureReason: string | null;
  cleanupStatus: Known<CleanupStatus> | null;
  /** While pending_cleanup: the terminal status taken once cleanup succeeds. */
  releaseStatus: string | null;
  cleanupAttempts: number;
  nextCleanupAt: Date | null;
  lastCleanupError: string | null;
  /** The caller's own: free-form, never read by the server to decide anything. */
  metadata: Record<string, unknown>;
  /** The driver that owns the lease's resources (server-written); null: the lease owes no cleanup. */
  driver: string | null;
  /** What that driver made for it (workspace path, host...): server-written, read-only over the API. */
  driverState: Record<string, unknown> | null;
  /** A retained lease is cleaned up and ends `expired` at this time. */
  retainUntil: Date | null;
  createdAt: Date;
  updatedAt: Date;
  unknownValues?: Record<string, string>;
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

export interface HeartbeatRun {
  id: string;
  companyId: string;
  agentId: string;
  status: string;
  invocationSource: string;
  contextSnapshot: Record<string, unknown>;
  exitCode: number | null;
  signal: string | null;
  error: string | null;
  errorCode: string | null;
  environmentId: string | null;
  leaseId: string | null;
  serverId: string | null;
  hostname: string | null;
  pid: number | null;
  /** Who `pid` is ({bootId, pidNamespace, startTime}): recovery signals it only when all still match. */
  processIdentity: Record<string, unknown> | null;
  cancelRequestedAt: Date | null;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
}

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
