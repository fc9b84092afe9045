// What the lease statements share: SQL fragments over a lease row, the activity row
// each change writes, and the reads that explain a refused change.
import { sql, type SQL } from 'drizzle-orm';
import { queryRows, sqlWordList, type Db } from '../../db/client.js';
import { TERMINAL_RUN_STATUSES } from '../../domain/enums.js';
import { BerthError, notFound, requireId } from '../../domain/errors.js';
import { activityFrom, LEASE_ENTITY, type ActorSql } from '../activity.js';
import type { z } from 'zod';
import type { Actor } from '../../domain/types.js';
import type { acquireLeaseSchema } from '../../domain/validators.js';

/** A named value in a compiled statement (see runStatement). */
export const P = (name: string) => sql.placeholder(name);
/** The actor of a compiled statement: filled from `actorType` and `actorId`. */
export const ACTOR_PLACEHOLDERS = { type: P('actorType'), id: P('actorId') };

export type Row = Record<string, unknown>;
export type Tx = Parameters<Parameters<Db['transaction']>[0]>[0];

/** How long a retained lease keeps its resources unless its environment says otherwise (24 h). */
export const DEFAULT_RETENTION_SECONDS = 86_400;
export const DEFAULT_CLEANUP_MAX_ATTEMPTS = 6;
/** Leases the expiry sweep ends per statement (of each kind: active past expiresAt, retained past retainUntil). */
export const EXPIRE_BATCH = 2000;

/**
 * The retention deadline of a lease `t` that becomes retained now, as SQL: its environment's
 * `metadata.retentionSeconds` when that is a positive number, else the default.
 */
export function retainUntilSql(t: string): SQL {
  return sql`now() + make_interval(secs => coalesce(
      (SELECT CASE WHEN jsonb_typeof(e.metadata->'retentionSeconds') = 'number' AND (e.metadata->>'retentionSeconds')::numeric > 0
                   THEN least((e.metadata->>'retentionSeconds')::numeric, 315360000)::float8 END
       FROM environments e WHERE e.id = ${sql.raw(t)}.environment_id),
      ${DEFAULT_RETENTION_SECONDS}))`;
}

/**
 * A lease whose holder is gone, as SQL over the lease row `t`: past its expiresAt, or held
 * for a run of this server's that has ended. Such a holder blocks nobody (SPEC). A run id
 * Berth does not know (an outside orchestrator's) is taken at its word: held until released
 * or expired.
 */
export function holderIsStaleSql(t: string): SQL {
  const l = sql.raw(t);
  return sql`((${l}.expires_at IS NOT NULL AND ${l}.expires_at <= now())
    OR EXISTS (SELECT 1 FROM heartbeat_runs r WHERE r.id = ${l}.heartbeat_run_id
               AND r.status IN ${sqlWordList(TERMINAL_RUN_STATUSES)}))`;
}

/** What a lease ending now owes: a cleanup when a driver made resources for it (SQL over `t`). */
export function cleanupOwedSql(t: string): SQL {
  return sql`(${sql.raw(t)}.driver IS NOT NULL)`;
}

/** Backoff before cleanup retry n (1-based, SQL): 2^n seconds, at most 5 minutes. The one place it is written. */
export function cleanupBackoffSql(attempt: SQL): SQL {
  return sql`make_interval(secs => least(power(2, ${attempt}), 300))`;
}

export function leaseActivity(source: string, actor: ActorSql, action: SQL | string, details: SQL): SQL {
  return activityFrom({
    source,
    actor,
    action,
    entityType: LEASE_ENTITY,
    entityId: sql.raw(`${source}.id::text`),
    runId: sql.raw(`${source}.heartbeat_run_id`),
    details,
  });
}

/** The status a release ends in, as SQL over the lease row `t`: reuse and retain policies keep resources. */
export function releasedStatusSql(t: string, requested: SQL): SQL {
  return sql`CASE
      WHEN ${sql.raw(t)}.status = 'active' AND ${requested} = 'released'
           AND ${sql.raw(t)}.lease_policy IN ('reuse_by_environment', 'reuse_by_execution_workspace') THEN 'retained'
      WHEN ${sql.raw(t)}.status = 'active' AND ${requested} = 'failed'
           AND ${sql.raw(t)}.lease_policy = 'retain_on_failure' THEN 'retained'
      ELSE ${requested} END`;
}

/** The activity details of a release, over the changed row `src`. */
export function releaseDetails(src: string): SQL {
  const s = sql.raw(src);
  return sql`jsonb_build_object('environmentId', ${s}.environment_id, 'fence', ${s}.fence, 'status', ${s}.status,
    'policy', ${s}.lease_policy, 'failureReason', ${s}.failure_reason, 'cleanupStatus', ${s}.cleanup_status,
    'releaseStatus', ${s}.release_status)`;
}

/** A holder presented a fence the lease no longer has: it was handed to someone else. */
export function staleFence(leaseId: string, currentFence: number, presented: number, status: string): BerthError {
  return new BerthError('stale_fence', `lease ${leaseId} is held under fence ${currentFence}; fence ${presented} is stale`, {
    details: { currentFence, status },
  });
}

/** The lease row as it is now, with `overdue` (past expiresAt); not found when another company's. */
export async function getRow(db: Db, companyId: string, leaseId: string): Promise<Row> {
  requireId(leaseId, 'lease');
  const [row] = await queryRows(db, sql`SELECT *, (expires_at IS NOT NULL AND expires_at <= now()) AS overdue FROM environment_leases WHERE id = ${leaseId} AND company_id = ${companyId} AND status <> 'pooled'`);
  if (!row) throw notFound('lease', leaseId);
  return row;
}

/** Why a fenced change to an active lease did not apply. */
export async function refusal(db: Db, companyId: string, leaseId: string, fence: number, allowed: readonly string[]): Promise<never> {
  const row = await getRow(db, companyId, leaseId);
  if (Number(row.fence) !== fence) {
    throw staleFence(leaseId, Number(row.fence), fence, String(row.status));
  }
  if (!allowed.includes(String(row.status))) {
    throw new BerthError('lease_not_active', `lease ${leaseId} is ${row.status}`, { details: { status: row.status } });
  }
  if (row.overdue) throw new BerthError('lease_expired', `lease ${leaseId} expired at ${(row.expires_at as Date).toISOString?.() ?? row.expires_at}`);
  throw new BerthError('conflict', `lease ${leaseId} changed concurrently; try again`);
}

/**
 * The lease's resource follows its lease in the same statement (over the CTE `src` of
 * changed leases): a lease that ended owes its resource a destroy (resource GC does it,
 * unless the executor records its own destroy in the same transaction); a retained lease,
 * or one whose cleanup the caller said to skip, keeps it until its retention deadline.
 */
export function resourceFollowsLeaseSql(src: string): SQL {
  const c = sql.raw(src);
  const kept = sql`(${c}.status = 'retained' OR ${c}.cleanup_status = 'skipped')`;
  return sql`UPDATE provider_resources p SET
        status = CASE WHEN ${kept} THEN 'draining' ELSE 'destroying' END,
        next_attempt_at = CASE WHEN ${kept} THEN NULL ELSE now() END,
        destroy_after = CASE WHEN ${c}.status = 'retained' THEN ${c}.retain_until
                             WHEN ${kept} THEN ${retainUntilSql(src)} END,
        updated_at = now()
      FROM ${c} WHERE p.id = ${c}.resource_id AND p.status IN ('provisioning', 'ready', 'leased', 'draining')
      RETURNING p.id`;
}

/** The values a grant statement (a cold grant, or a warm pool claim) takes for its placeholders. */
export function grantParams(companyId: string, v: z.output<typeof acquireLeaseSchema>, actor: Actor): Record<string, unknown> {
  return {
    envId: v.environmentId,
    companyId,
    runId: v.heartbeatRunId ?? null,
    wsId: v.executionWorkspaceId ?? null,
    issueId: v.issueId ?? null,
    key: v.idempotencyKey ?? null,
    policy: v.policy,
    meta: JSON.stringify(v.metadata),
    ttl: v.ttlSeconds,
    expiresAt: v.expiresAt?.toISOString(),
    maxLifetime: v.maxLifetimeSeconds,
    actorType: actor.type,
    actorId: actor.id,
  };
}
