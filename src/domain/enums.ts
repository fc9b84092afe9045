// The closed vocabularies of SPEC as constants and types, plus a reader that
// tolerates values written by a newer Berth (it must never break a listing).

/** The kind of place an environment is (its `driver` column): the drivers are listed once, in drivers/descriptors.ts. */
export type { EnvironmentDriverKind } from '../drivers/descriptors.js';

export const ENVIRONMENT_STATUSES = ['active', 'archived'] as const;
export type EnvironmentStatus = (typeof ENVIRONMENT_STATUSES)[number];

export const LEASE_STATUSES = ['active', 'released', 'expired', 'failed', 'retained', 'pending_cleanup'] as const;
export type LeaseStatus = (typeof LEASE_STATUSES)[number];

/** What an environment variable's name may be, wherever one is given (envVars, an agent's env, the SSH wrapper). */
export const ENV_VAR_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A terminal lease never changes status again (SPEC guarantee 1). */
export const TERMINAL_LEASE_STATUSES = ['released', 'expired', 'failed'] as const;
export type TerminalLeaseStatus = (typeof TERMINAL_LEASE_STATUSES)[number];

export const LEASE_POLICIES = [
  'ephemeral',
  'reuse_by_environment',
  'reuse_by_execution_workspace',
  'retain_on_failure',
] as const;
export type LeasePolicy = (typeof LEASE_POLICIES)[number];

/** pending: owed, the sweep does it; success: done; failed: tried and failed; skipped: resources left as they are, by request. */
export const CLEANUP_STATUSES = ['pending', 'success', 'failed', 'skipped'] as const;
export type CleanupStatus = (typeof CLEANUP_STATUSES)[number];

export const RUN_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out'] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];

export const INVOCATION_SOURCES = ['on_demand', 'timer', 'assignment', 'automation'] as const;
export type InvocationSource = (typeof INVOCATION_SOURCES)[number];

export const ACTOR_TYPES = ['system', 'user', 'agent', 'run', 'api_key'] as const;
export type ActorType = (typeof ACTOR_TYPES)[number];

/**
 * A value read from the database that this version may not know. Known values
 * keep their literal type; an unknown one becomes 'unknown' so that a listing
 * still renders, and the raw text is kept beside it by the mappers.
 */
export type Known<T extends string> = T | 'unknown';

export function readEnum<T extends string>(values: readonly T[], raw: string): Known<T> {
  return (values as readonly string[]).includes(raw) ? (raw as T) : 'unknown';
}


/** Activity actions written by the lease and environment services. */
export const ACTIONS = {
  environmentCreated: 'environment.created',
  environmentUpdated: 'environment.updated',
  environmentArchived: 'environment.archived',
  environmentDeleted: 'environment.deleted',
  leaseAcquired: 'environment.lease_acquired',
  leaseReacquired: 'environment.lease_reacquired',
  leaseReleased: 'environment.lease_released',
  leaseExpired: 'environment.lease_expired',
  leaseCleanupFailed: 'environment.lease_cleanup_failed',
  leaseCleanupSucceeded: 'environment.lease_cleanup_succeeded',
  /** The lease's resource is provisioned: its TTL counts from here. */
  leaseActivated: 'environment.lease_activated',
  /** A holder ran a command in a provisioned lease's workspace (the program, its exit, never its arguments). */
  leaseCommand: 'environment.lease_command',
  /** A holder moved files into or out of a provisioned lease's workspace (the path, the bytes). */
  leaseFiles: 'environment.lease_files',
  /** Reconciliation destroyed what a provider held under Berth's labels with no record. */
  resourceOrphanDestroyed: 'environment.resource_orphan_destroyed',
  /** A warm pool's setup command ran in a new member (its exit, time and output tail). */
  poolMemberSetUp: 'environment.pool_member_set_up',
  /** A warm pool's refill could not make a member (the error). */
  poolRefillFailed: 'environment.pool_refill_failed',
} as const;

/** A provider resource's life (provider_resources.status): see src/db/schema.ts. */
export const RESOURCE_STATUSES = ['provisioning', 'ready', 'leased', 'draining', 'destroying', 'destroyed', 'lost'] as const;
export type ResourceStatus = (typeof RESOURCE_STATUSES)[number];

export const ADAPTER_TYPES = ['process', 'http'] as const;
export type AdapterType = (typeof ADAPTER_TYPES)[number];


export const TERMINAL_RUN_STATUSES = ['succeeded', 'failed', 'cancelled', 'timed_out'] as const;
export type TerminalRunStatus = (typeof TERMINAL_RUN_STATUSES)[number];

/** What a run's outcome makes of its leases (SPEC, run lifecycle step 5). */
export function leaseStatusForRunOutcome(status: TerminalRunStatus): TerminalLeaseStatus {
  switch (status) {
    case 'succeeded':
      return 'released';
    case 'cancelled':
      return 'expired';
    default:
      return 'failed';
  }
}

export const RUN_ACTIONS = {
  queued: 'heartbeat_run.queued',
  finished: 'heartbeat_run.finished',
  cancelRequested: 'heartbeat_run.cancel_requested',
  deferred: 'heartbeat_run.deferred',
} as const;
