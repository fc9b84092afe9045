// Leases: one run's claim on an environment. The database enforces every
// guarantee of SPEC ("What a lease guarantees"):
//  - state machine: each change names the statuses it may leave in its WHERE
//    clause, on a row it has locked, so a terminal lease is never changed;
//  - capacity: an acquire on a capacity-limited environment holds the
//    environment row lock (FOR NO KEY UPDATE) while it counts active leases
//    with a fresh snapshot; unlimited environments take only FOR KEY SHARE, and
//    capacity changes take FOR UPDATE, which orders them against both;
//  - single-flight and idempotency: partial unique indexes, ON CONFLICT DO NOTHING;
//  - fencing: every grant takes nextval of one sequence;
//  - audit: the activity row is written by the same statement as the change.
import { sql, type SQL } from 'drizzle-orm';
import { queryRows, runStatement, sqlWordList, type Db } from '../db/client.js';
import { pgErrorOf, PG_FOREIGN_KEY_VIOLATION, PG_UNIQUE_VIOLATION } from '../db/errors.js';
import { toLease } from '../db/rows.js';
import { ACTIONS, TERMINAL_RUN_STATUSES, type LeasePolicy, type TerminalLeaseStatus } from '../domain/enums.js';
import { BerthError, notFound, requireId, UUID_RE } from '../domain/errors.js';
import { SYSTEM_ACTOR, type Actor, type Lease, type Page } from '../domain/types.js';
import {
  acquireLeaseSchema,
  listLeasesSchema,
  parseInput,
  releaseLeaseSchema,
  renewLeaseSchema,
  updateLeaseMetadataSchema,
  type AcquireLeaseInput,
  type ReleaseLeaseInput,
  type RenewLeaseInput,
  type UpdateLeaseMetadataInput,
} from '../domain/validators.js';
import { activityFrom, LEASE_ENTITY, type ActorSql } from './activity.js';

/** A named value in a compiled statement (see runStatement). */
const P = (name: string) => sql.placeholder(name);
const ACTOR_PLACEHOLDERS = { type: P('actorType'), id: P('actorId') };

type Row = Record<string, unknown>;
type Tx = Parameters<Parameters<Db['transaction']>[0]>[0];

export interface AcquireResult {
  lease: Lease;
  /** False when an earlier acquire (same idempotency key, or same run) already holds it. */
  created: boolean;
  /** True when a retained lease's resources were handed to this caller. */
  reacquired: boolean;
}

export interface ReleaseResult {
  lease: Lease;
  /** False when the lease was already released: its final state is returned unchanged. */
  changed: boolean;
}

const REUSE_POLICIES: readonly LeasePolicy[] = ['reuse_by_environment', 'reuse_by_execution_workspace'];

/**
 * Server-side facts about who owns a lease's resources: given by the executor, never by an
 * API caller (no route passes it). `driver` is the environment's own driver, written in the
 * same statement that grants the lease, before the driver makes anything: the write-ahead
 * record that cleanup and the sweeps work from.
 */
export interface LeaseOwner {
  driver?: string;
}

/** How long a retained lease keeps its resources unless its environment says otherwise (24 h). */
export const DEFAULT_RETENTION_SECONDS = 86_400;

/**
 * The retention deadline of a lease `t` that becomes retained now, as SQL: its environment's
 * `metadata.retentionSeconds` when that is a positive number, else the default.
 */
function retainUntilSql(t: string): SQL {
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
function holderIsStaleSql(t: string): SQL {
  const l = sql.raw(t);
  return sql`((${l}.expires_at IS NOT NULL AND ${l}.expires_at <= now())
    OR EXISTS (SELECT 1 FROM heartbeat_runs r WHERE r.id = ${l}.heartbeat_run_id
               AND r.status IN ${sqlWordList(TERMINAL_RUN_STATUSES)}))`;
}

/** What a lease ending now owes: a cleanup when a driver made resources for it (SQL over `t`). */
function cleanupOwedSql(t: string): SQL {
  return sql`(${sql.raw(t)}.driver IS NOT NULL)`;
}

/** Backoff before cleanup retry n (1-based, SQL): 2^n seconds, at most 5 minutes. The one place it is written. */
function cleanupBackoffSql(attempt: SQL): SQL {
  return sql`make_interval(secs => least(power(2, ${attempt}), 300))`;
}
export const DEFAULT_CLEANUP_MAX_ATTEMPTS = 6;
/** Leases the expiry sweep ends per statement (of each kind: active past expiresAt, retained past retainUntil). */
export const EXPIRE_BATCH = 2000;

function leaseActivity(source: string, actor: ActorSql, action: SQL | string, details: SQL): SQL {
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
function releasedStatusSql(t: string, requested: SQL): SQL {
  return sql`CASE
      WHEN ${sql.raw(t)}.status = 'active' AND ${requested} = 'released'
           AND ${sql.raw(t)}.lease_policy IN ('reuse_by_environment', 'reuse_by_execution_workspace') THEN 'retained'
      WHEN ${sql.raw(t)}.status = 'active' AND ${requested} = 'failed'
           AND ${sql.raw(t)}.lease_policy = 'retain_on_failure' THEN 'retained'
      ELSE ${requested} END`;
}

function releaseDetails(src: string): SQL {
  const s = sql.raw(src);
  return sql`jsonb_build_object('environmentId', ${s}.environment_id, 'fence', ${s}.fence, 'status', ${s}.status,
    'policy', ${s}.lease_policy, 'failureReason', ${s}.failure_reason, 'cleanupStatus', ${s}.cleanup_status,
    'releaseStatus', ${s}.release_status)`;
}

/** A holder presented a fence the lease no longer has: it was handed to someone else. */
function staleFence(leaseId: string, currentFence: number, presented: number, status: string): BerthError {
  return new BerthError('stale_fence', `lease ${leaseId} is held under fence ${currentFence}; fence ${presented} is stale`, {
    details: { currentFence, status },
  });
}

export function leaseService(db: Db) {
  /**
   * One attempt to grant a lease: reactivate a retained lease (reuse policies) or
   * insert a new one. `capacity_checked` mode runs inside a transaction that already holds
   * the environment row lock, so its count of active leases is exact.
   */
  async function grant(
    conn: Db | Tx,
    companyId: string,
    v: ReturnType<typeof acquireLeaseSchema.parse>,
    actor: Actor,
    mode: 'unlimited' | 'capacity_checked',
    owner: LeaseOwner,
  ): Promise<{ envFound: boolean; envStatus?: string; envCapacity?: number | null; activeCount?: number; lease?: Lease; reacquired?: boolean }> {
    const ttlKind = v.ttlSeconds !== undefined ? 'ttl' : v.expiresAt !== undefined ? 'at' : 'none';
    const reuse = REUSE_POLICIES.includes(v.policy);
    const shape = `grant:${mode}:${reuse ? v.policy : '-'}:${ttlKind}:${v.maxLifetimeSeconds !== undefined}`;
    const rows = await runStatement(conn, shape, () => {
      const expires = ttlKind === 'ttl'
        ? sql`now() + make_interval(secs => ${P('ttl')})`
        : ttlKind === 'at' ? sql`${P('expiresAt')}::timestamptz` : sql`NULL::timestamptz`;
      const maxExpires = v.maxLifetimeSeconds !== undefined ? sql`now() + make_interval(secs => ${P('maxLifetime')})` : sql`NULL::timestamptz`;
      const expiresAt = sql`LEAST(${expires}, ${maxExpires})`;
      const guard = mode === 'unlimited'
        ? sql`env.capacity IS NULL`
        : sql`(SELECT count(*) FROM environment_leases c WHERE c.environment_id = env.id AND c.status = 'active') < env.capacity`;
      const reused = sql`UPDATE environment_leases l SET status = 'active', fence = nextval('environment_lease_fence_seq'),
                heartbeat_run_id = ${P('runId')}, issue_id = coalesce(${P('issueId')}, l.issue_id),
                idempotency_key = coalesce(l.idempotency_key, ${P('key')}),
                acquired_at = now(), last_used_at = now(), expires_at = ${expiresAt}, max_expires_at = ${maxExpires},
                renew_count = 0, last_renewed_at = NULL, released_at = NULL, failure_reason = NULL,
                cleanup_status = NULL, release_status = NULL, retain_until = NULL, metadata = l.metadata || ${P('meta')}::jsonb, updated_at = now()
              FROM ok
              WHERE l.id = (SELECT c.id FROM environment_leases c
                            WHERE c.environment_id = ok.id AND c.company_id = ok.company_id AND c.status = 'retained'
                              AND c.lease_policy = ${P('policy')}
                              ${v.policy === 'reuse_by_execution_workspace' ? sql`AND c.execution_workspace_id = ${P('wsId')}` : sql``}
                            ORDER BY c.last_used_at DESC LIMIT 1 FOR UPDATE SKIP LOCKED)
                AND l.status = 'retained'
              RETURNING l.*`;
      return sql`WITH env AS (
            SELECT id, company_id, status, capacity FROM environments
            WHERE id = ${P('envId')} AND company_id = ${P('companyId')}
            ${mode === 'unlimited' ? sql`FOR KEY SHARE` : sql``}),
          ok AS (SELECT env.* FROM env WHERE env.status = 'active' AND ${guard}),
          ${reuse ? sql`reused AS (${reused}),` : sql``}
          ins AS (
            INSERT INTO environment_leases (company_id, environment_id, execution_workspace_id, issue_id, heartbeat_run_id,
              status, lease_policy, driver, fence, idempotency_key, expires_at, max_expires_at, metadata)
            SELECT ok.company_id, ok.id, ${P('wsId')}, ${P('issueId')}, ${P('runId')},
              'active', ${P('policy')}, ${P('driver')}::text, nextval('environment_lease_fence_seq'),
              ${P('key')}, ${expiresAt}, ${maxExpires}, ${P('meta')}::jsonb
            FROM ok ${reuse ? sql`WHERE NOT EXISTS (SELECT 1 FROM reused)` : sql``}
            ON CONFLICT DO NOTHING
            RETURNING *),
          granted AS (SELECT ins.*, false AS reacquired FROM ins
                      ${reuse ? sql`UNION ALL SELECT reused.*, true AS reacquired FROM reused` : sql``}),
          act AS (${leaseActivity(
            'granted',
            ACTOR_PLACEHOLDERS,
            sql`CASE WHEN granted.reacquired THEN ${ACTIONS.leaseReacquired} ELSE ${ACTIONS.leaseAcquired} END`,
            sql`jsonb_build_object('environmentId', granted.environment_id, 'fence', granted.fence, 'policy', granted.lease_policy,
                  'expiresAt', granted.expires_at, 'executionWorkspaceId', granted.execution_workspace_id,
                  'issueId', granted.issue_id, 'idempotencyKey', granted.idempotency_key)`,
          )})
          SELECT env.status AS env_status, env.capacity AS env_capacity,
                 ${mode === 'capacity_checked' ? sql`(SELECT count(*) FROM environment_leases c WHERE c.environment_id = env.id AND c.status = 'active')` : sql`NULL`} AS env_active_count,
                 granted.*
          FROM env LEFT JOIN granted ON true`;
    }, {
      envId: v.environmentId,
      companyId,
      runId: v.heartbeatRunId ?? null,
      wsId: v.executionWorkspaceId ?? null,
      issueId: v.issueId ?? null,
      key: v.idempotencyKey ?? null,
      policy: v.policy,
      driver: owner.driver ?? null,
      meta: JSON.stringify(v.metadata),
      ttl: v.ttlSeconds,
      expiresAt: v.expiresAt?.toISOString(),
      maxLifetime: v.maxLifetimeSeconds,
      actorType: actor.type,
      actorId: actor.id,
    });
    const row = rows[0];
    if (!row) return { envFound: false };
    const out = {
      envFound: true,
      envStatus: String(row.env_status),
      envCapacity: row.env_capacity === null ? null : Number(row.env_capacity),
      ...(row.env_active_count !== null && row.env_active_count !== undefined ? { activeCount: Number(row.env_active_count) } : {}),
    };
    return row.id ? { ...out, lease: toLease(row), reacquired: Boolean(row.reacquired) } : out;
  }

  /** The lease an earlier acquire already gave this caller: same idempotency key, or same run on this environment. */
  async function findExisting(companyId: string, v: ReturnType<typeof acquireLeaseSchema.parse>): Promise<Lease | null> {
    const conds: SQL[] = [];
    if (v.idempotencyKey !== undefined) conds.push(sql`idempotency_key = ${v.idempotencyKey}`);
    if (v.heartbeatRunId !== undefined) {
      conds.push(sql`(environment_id = ${v.environmentId} AND heartbeat_run_id = ${v.heartbeatRunId} AND status = 'active')`);
    }
    if (conds.length === 0) return null;
    const rows = await queryRows(
      db,
      sql`SELECT * FROM environment_leases WHERE company_id = ${companyId} AND (${sql.join(conds, sql` OR `)})
          ORDER BY (idempotency_key IS NOT DISTINCT FROM ${v.idempotencyKey ?? null}::text) DESC LIMIT 1`,
    );
    if (!rows[0]) return null;
    const lease = toLease(rows[0]);
    if (v.idempotencyKey !== undefined && lease.idempotencyKey === v.idempotencyKey && lease.environmentId !== v.environmentId) {
      throw new BerthError('conflict', `idempotency key "${v.idempotencyKey}" was already used to acquire a lease on another environment`, {
        fields: [{ path: 'idempotencyKey', message: 'was used for another environment' }],
        details: { leaseId: lease.id },
      });
    }
    return lease;
  }

  /**
   * End the leases `due` selects (a CTE of ids, locked) as expired, with one activity row
   * each: past expiresAt, past retainUntil (retained), or held for a run that has ended.
   * What a driver made for them is owed its cleanup.
   */
  async function expire(due: SQL): Promise<Lease[]> {
    const rows = await queryRows(
      db,
      sql`WITH ${due},
          changed AS (
            UPDATE environment_leases l SET
              failure_reason = coalesce(l.failure_reason, CASE
                WHEN l.status = 'retained' THEN 'retention ended: its resources are cleaned up'
                WHEN l.expires_at IS NOT NULL AND l.expires_at <= now() THEN 'lease expired: not renewed before its expiresAt'
                ELSE 'lease expired: its run has ended' END),
              status = 'expired', released_at = now(), updated_at = now(), retain_until = NULL,
              cleanup_status = CASE WHEN ${cleanupOwedSql('l')} THEN 'pending' END,
              next_cleanup_at = CASE WHEN ${cleanupOwedSql('l')} THEN now() END
            FROM due WHERE l.id = due.id
            RETURNING l.*),
          act AS (${leaseActivity(
            'changed',
            SYSTEM_ACTOR,
            ACTIONS.leaseExpired,
            sql`jsonb_build_object('environmentId', changed.environment_id, 'fence', changed.fence, 'status', changed.status,
                  'expiresAt', changed.expires_at, 'lateByMs', round(extract(epoch FROM now() - changed.expires_at) * 1000),
                  'cleanupStatus', changed.cleanup_status, 'reason', changed.failure_reason)`,
          )})
          SELECT * FROM changed`,
    );
    return rows.map(toLease);
  }

  /** The sweep: active leases past expiresAt and retained ones past retainUntil, oldest first, `limit` of each. */
  function expireDue(opts: { limit?: number } = {}): Promise<Lease[]> {
    const limit = opts.limit ?? EXPIRE_BATCH;
    return expire(sql`due_active AS (
            SELECT id FROM environment_leases
            WHERE status = 'active' AND expires_at <= now()
            ORDER BY expires_at LIMIT ${limit}
            FOR UPDATE SKIP LOCKED),
          due_retained AS (
            SELECT id FROM environment_leases
            WHERE status = 'retained' AND retain_until <= now()
            ORDER BY retain_until LIMIT ${limit}
            FOR UPDATE SKIP LOCKED),
          due AS (SELECT id FROM due_active UNION ALL SELECT id FROM due_retained)`);
  }

  /** Expire one active lease whose holder is gone (holderIsStaleSql, re-checked under the row lock). */
  async function expireStaleHolder(leaseId: string): Promise<void> {
    await expire(sql`due AS (
            SELECT id FROM environment_leases l WHERE l.id = ${leaseId} AND l.status = 'active' AND ${holderIsStaleSql('l')}
            FOR UPDATE SKIP LOCKED)`);
  }

  async function getRow(companyId: string, leaseId: string): Promise<Row> {
    requireId(leaseId, 'lease');
    const [row] = await queryRows(db, sql`SELECT *, (expires_at IS NOT NULL AND expires_at <= now()) AS overdue FROM environment_leases WHERE id = ${leaseId} AND company_id = ${companyId}`);
    if (!row) throw notFound('lease', leaseId);
    return row;
  }

  /** Why a fenced change to an active lease did not apply. */
  async function refusal(companyId: string, leaseId: string, fence: number, allowed: readonly string[]): Promise<never> {
    const row = await getRow(companyId, leaseId);
    if (Number(row.fence) !== fence) {
      throw staleFence(leaseId, Number(row.fence), fence, String(row.status));
    }
    if (!allowed.includes(String(row.status))) {
      throw new BerthError('lease_not_active', `lease ${leaseId} is ${row.status}`, { details: { status: row.status } });
    }
    if (row.overdue) throw new BerthError('lease_expired', `lease ${leaseId} expired at ${(row.expires_at as Date).toISOString?.() ?? row.expires_at}`);
    throw new BerthError('conflict', `lease ${leaseId} changed concurrently; try again`);
  }

  const service = {
    /**
     * Acquire a lease on an environment. Idempotent per idempotency key; a run that
     * already holds an active lease on the environment gets that lease back.
     */
    async acquire(companyId: string, input: AcquireLeaseInput, actor: Actor = SYSTEM_ACTOR, owner: LeaseOwner = {}): Promise<AcquireResult> {
      requireId(companyId, 'company');
      const v = parseInput(acquireLeaseSchema, input, 'lease acquire');
      for (let attempt = 0; attempt < 10; attempt++) {
        let res: Awaited<ReturnType<typeof grant>>;
        try {
          res = await grant(db, companyId, v, actor, 'unlimited', owner);
          if (res.envFound && !res.lease && res.envStatus === 'active' && res.envCapacity !== null) {
            res = await db.transaction(async (tx) => {
              await queryRows(tx, sql`SELECT 1 FROM environments WHERE id = ${v.environmentId} AND company_id = ${companyId} FOR NO KEY UPDATE`);
              return grant(tx, companyId, v, actor, 'capacity_checked', owner);
            });
          }
        } catch (err) {
          const pgErr = pgErrorOf(err);
          // A reactivated lease may collide with one the same run took meanwhile: look again.
          if (pgErr?.code === PG_UNIQUE_VIOLATION) continue;
          if (pgErr?.code === PG_FOREIGN_KEY_VIOLATION) throw notFound('environment', v.environmentId);
          throw err;
        }
        if (!res.envFound) throw notFound('environment', v.environmentId);
        if (res.lease) return { lease: res.lease, created: true, reacquired: res.reacquired ?? false };

        const existing = await findExisting(companyId, v);
        if (existing) return { lease: existing, created: false, reacquired: false };
        if (res.envStatus !== 'active') {
          throw new BerthError('environment_archived', `environment ${v.environmentId} is ${res.envStatus} and takes no new leases`);
        }
        if (res.envCapacity !== null && res.envCapacity !== undefined && res.activeCount !== undefined && res.activeCount >= res.envCapacity) {
          throw new BerthError('capacity_exhausted', `environment ${v.environmentId} is at capacity (${res.activeCount} of ${res.envCapacity} leases active)`, {
            details: { capacity: res.envCapacity, active: res.activeCount },
          });
        }
        if (v.executionWorkspaceId !== undefined && v.policy === 'ephemeral') {
          const [holder] = await queryRows(
            db,
            sql`SELECT l.id, l.heartbeat_run_id, ${holderIsStaleSql('l')} AS stale FROM environment_leases l
                WHERE l.environment_id = ${v.environmentId} AND l.execution_workspace_id = ${v.executionWorkspaceId}
                  AND l.status = 'active' AND l.lease_policy = 'ephemeral'`,
          );
          if (holder?.stale) {
            await expireStaleHolder(String(holder.id));
            continue;
          }
          if (holder) {
            throw new BerthError('workspace_busy', `execution workspace "${v.executionWorkspaceId}" is held by lease ${holder.id} of run ${holder.heartbeat_run_id ?? '(none)'}`, {
              details: { leaseId: holder.id, heartbeatRunId: holder.heartbeat_run_id },
            });
          }
        }
        // The conflicting lease ended between our insert and our look: try again.
      }
      throw new BerthError('conflict', `could not acquire a lease on environment ${v.environmentId}: it kept changing; try again`);
    },

    /** Extend expiresAt to now + ttl (database clock), never past the lease's maxExpiresAt. */
    async renew(companyId: string, leaseId: string, input: RenewLeaseInput): Promise<Lease> {
      requireId(leaseId, 'lease');
      const v = parseInput(renewLeaseSchema, input, 'lease renew');
      const [row] = await queryRows(
        db,
        sql`UPDATE environment_leases SET
              expires_at = LEAST(now() + make_interval(secs => ${v.ttlSeconds}), max_expires_at),
              renew_count = renew_count + 1, last_renewed_at = now(), last_used_at = now(), updated_at = now()
            WHERE id = ${leaseId} AND company_id = ${companyId} AND fence = ${v.fence} AND status = 'active'
              AND (expires_at IS NULL OR expires_at > now())
            RETURNING *`,
      );
      if (row) return toLease(row);
      return refusal(companyId, leaseId, v.fence, ['active']);
    },

    /**
     * Merge into (or replace) the caller's metadata of a lease that is not terminal. The
     * server never reads it to decide anything: what a driver made lives in driverState.
     */
    async updateMetadata(companyId: string, leaseId: string, input: UpdateLeaseMetadataInput): Promise<Lease> {
      requireId(leaseId, 'lease');
      const v = parseInput(updateLeaseMetadataSchema, input, 'lease metadata');
      const meta = JSON.stringify(v.metadata);
      const [row] = await queryRows(
        db,
        sql`UPDATE environment_leases SET
              metadata = ${v.replace ? sql`${meta}::jsonb` : sql`metadata || ${meta}::jsonb`}, updated_at = now()
            WHERE id = ${leaseId} AND company_id = ${companyId} AND fence = ${v.fence}
              AND status IN ('active', 'retained', 'pending_cleanup')
            RETURNING *`,
      );
      if (row) return toLease(row);
      return refusal(companyId, leaseId, v.fence, ['active', 'retained', 'pending_cleanup']);
    },

    /**
     * The executor records what the lease's driver made (its workspace, the provider's own
     * id of it). Server-only: no route calls this, so no caller can point cleanup elsewhere.
     */
    async recordDriverState(
      companyId: string,
      leaseId: string,
      fence: number,
      state: { driverState: Record<string, unknown>; provider?: string; providerLeaseId?: string },
    ): Promise<Lease> {
      requireId(leaseId, 'lease');
      const [row] = await queryRows(
        db,
        sql`UPDATE environment_leases SET driver_state = ${JSON.stringify(state.driverState)}::jsonb,
              provider = coalesce(${state.provider ?? null}::text, provider),
              provider_lease_id = coalesce(${state.providerLeaseId?.slice(0, 2000) ?? null}::text, provider_lease_id), updated_at = now()
            WHERE id = ${leaseId} AND company_id = ${companyId} AND fence = ${fence} AND status = 'active'
            RETURNING *`,
      );
      if (row) return toLease(row);
      return refusal(companyId, leaseId, fence, ['active']);
    },

    /**
     * End a lease: released, expired or failed (retained where its policy keeps
     * resources, until its retention deadline). `cleanupStatus: 'failed'` means the
     * driver could not clean up: the lease goes to pending_cleanup and is retried;
     * `success` that the caller cleaned up; `skipped` that the resources are to be
     * left as they are. Without one, a lease whose driver made resources owes their
     * cleanup (pending: the sweep does it), a retained lease's too. Releasing a lease
     * that has already ended changes nothing and returns its final state.
     */
    async release(companyId: string, leaseId: string, input: ReleaseLeaseInput, actor: Actor = SYSTEM_ACTOR): Promise<ReleaseResult> {
      requireId(leaseId, 'lease');
      const v = parseInput(releaseLeaseSchema, input, 'lease release');
      const cleanupFailed = v.cleanupStatus === 'failed';
      // No explicit row lock: the UPDATE's WHERE names the statuses it may leave and is
      // re-checked against the newest row version if another release got there first.
      const cleanupKind = v.cleanupStatus === 'failed' ? 'failed' : v.cleanupStatus === undefined ? 'owed' : v.cleanupStatus === 'pending' ? 'pending' : 'other';
      const [row] = await runStatement(db, `release:${cleanupKind}`, () => {
        const requested = sql`${P('status')}::text`;
        const next = releasedStatusSql('l', requested);
        // Unsaid, cleanup is owed when the lease ends (not when it becomes retained) and a driver made resources.
        const owed = sql`(${cleanupOwedSql('l')} AND ${next} <> 'retained')`;
        return sql`WITH changed AS (
              UPDATE environment_leases l SET
                status = ${cleanupFailed ? sql`'pending_cleanup'` : next},
                release_status = ${cleanupFailed ? requested : sql`NULL`},
                cleanup_status = ${cleanupKind === 'owed' ? sql`CASE WHEN ${owed} THEN 'pending' END` : sql`${P('cleanupStatus')}::text`},
                cleanup_attempts = ${cleanupFailed ? sql`l.cleanup_attempts + 1` : sql`l.cleanup_attempts`},
                next_cleanup_at = ${cleanupFailed
                  ? sql`now() + ${cleanupBackoffSql(sql`1`)}`
                  : cleanupKind === 'pending' ? sql`now()` : cleanupKind === 'owed' ? sql`CASE WHEN ${owed} THEN now() END` : sql`NULL`},
                retain_until = ${cleanupFailed ? sql`NULL` : sql`CASE WHEN ${next} = 'retained' THEN ${retainUntilSql('l')} END`},
                failure_reason = coalesce(${P('failureReason')}, l.failure_reason),
                released_at = now(), last_used_at = now(), updated_at = now()
              WHERE l.id = ${P('leaseId')} AND l.company_id = ${P('companyId')} AND l.fence = ${P('fence')}
                AND l.status IN ('active', 'retained')
              RETURNING l.*),
            act AS (${leaseActivity('changed', ACTOR_PLACEHOLDERS, ACTIONS.leaseReleased, releaseDetails('changed'))})
            SELECT * FROM changed`;
      }, {
        status: v.status,
        cleanupStatus: v.cleanupStatus ?? null,
        failureReason: v.failureReason ?? null,
        leaseId,
        companyId,
        fence: v.fence,
        actorType: actor.type,
        actorId: actor.id,
      });
      if (row) return { lease: toLease(row), changed: true };
      // Not applied: a fresh read (this statement's snapshot is newer than any release
      // that beat us) tells why, or returns the final state.
      const current = toLease(await getRow(companyId, leaseId));
      if (current.fence !== v.fence) {
        throw staleFence(leaseId, current.fence, v.fence, current.status);
      }
      return { lease: current, changed: false };
    },

    /**
     * Finalize a run: release every active lease it holds, with one activity row each;
     * those a driver made resources for owe their cleanup (the sweep does it).
     */
    async releaseForRun(
      companyId: string,
      runId: string,
      outcome: { status: TerminalLeaseStatus; failureReason?: string },
      actor: Actor = SYSTEM_ACTOR,
    ): Promise<Lease[]> {
      requireId(runId, 'run');
      const v = parseInput(releaseLeaseSchema.omit({ fence: true, cleanupStatus: true }), outcome, 'run release');
      const requested = sql`${v.status}::text`;
      const next = releasedStatusSql('l', requested);
      // What a driver made for the lease is cleaned up by the sweep, unless the lease is retained.
      const owed = sql`(${cleanupOwedSql('l')} AND ${next} <> 'retained')`;
      const rows = await queryRows(
        db,
        sql`WITH changed AS (
              UPDATE environment_leases l SET status = ${next},
                failure_reason = coalesce(${v.failureReason ?? null}, l.failure_reason),
                cleanup_status = CASE WHEN ${owed} THEN 'pending' END,
                next_cleanup_at = CASE WHEN ${owed} THEN now() END,
                retain_until = CASE WHEN ${next} = 'retained' THEN ${retainUntilSql('l')} END,
                released_at = now(), last_used_at = now(), updated_at = now()
              WHERE l.company_id = ${companyId} AND l.heartbeat_run_id = ${runId} AND l.status = 'active'
              RETURNING l.*),
            act AS (${leaseActivity('changed', actor, ACTIONS.leaseReleased, releaseDetails('changed'))})
            SELECT * FROM changed`,
      );
      return rows.map(toLease);
    },

    /** The sweep: expire active leases past expiresAt, oldest first, at most `limit` per call. */
    expireDue: (opts: { limit?: number } = {}) => expireDue(opts),

    /**
     * Claim leases whose cleanup is due (pending_cleanup, or expired with cleanup
     * pending) for one worker: their next_cleanup_at moves `claimSeconds` ahead so
     * another worker skips them until then.
     */
    async claimDueCleanups(opts: { limit?: number; claimSeconds?: number } = {}): Promise<Lease[]> {
      const rows = await queryRows(
        db,
        sql`UPDATE environment_leases l SET next_cleanup_at = now() + make_interval(secs => ${opts.claimSeconds ?? 60})
            WHERE l.id IN (SELECT id FROM environment_leases WHERE next_cleanup_at <= now()
                           ORDER BY next_cleanup_at LIMIT ${opts.limit ?? 50} FOR UPDATE SKIP LOCKED)
            RETURNING l.*`,
      );
      return rows.map(toLease);
    },

    /**
     * Record one driver cleanup attempt. Success ends a pending_cleanup lease in its
     * release status; failure schedules the next try with backoff, and after
     * `maxAttempts` gives up visibly: status failed, cleanupStatus failed. One
     * activity row per attempt.
     */
    async recordCleanupAttempt(
      companyId: string,
      leaseId: string,
      attempt: { fence: number; ok: boolean; error?: string; maxAttempts?: number; done?: Record<string, unknown> },
      actor: Actor = SYSTEM_ACTOR,
    ): Promise<Lease> {
      requireId(leaseId, 'lease');
      const max = attempt.maxAttempts ?? DEFAULT_CLEANUP_MAX_ATTEMPTS;
      const ok = attempt.ok;
      const error = ok ? null : (attempt.error ?? 'cleanup failed').slice(0, 4000);
      const n = sql`(t.cleanup_attempts + 1)`;
      const done = ok ? sql`true` : sql`${n} >= ${max}`;
      const rows = await queryRows(
        db,
        sql`WITH target AS (
              SELECT * FROM environment_leases WHERE id = ${leaseId} AND company_id = ${companyId} FOR UPDATE),
            changed AS (
              UPDATE environment_leases l SET
                cleanup_attempts = ${n},
                status = CASE WHEN t.status = 'pending_cleanup' AND ${done}
                              THEN ${ok ? sql`coalesce(t.release_status, 'released')` : sql`'failed'`} ELSE t.status END,
                release_status = CASE WHEN ${done} THEN NULL ELSE t.release_status END,
                cleanup_status = ${ok ? 'success' : 'failed'},
                next_cleanup_at = CASE WHEN ${done} THEN NULL
                                       ELSE now() + ${cleanupBackoffSql(n)} END,
                last_cleanup_error = ${ok ? sql`t.last_cleanup_error` : sql`${error}`},
                failure_reason = ${ok ? sql`t.failure_reason` : sql`CASE WHEN ${done}
                  THEN concat_ws('; ', t.failure_reason, 'cleanup gave up after ' || ${n} || ' attempts: ' || ${error}::text)
                  ELSE t.failure_reason END`},
                updated_at = now()
              FROM target t
              WHERE l.id = t.id AND t.fence = ${attempt.fence} AND t.next_cleanup_at IS NOT NULL
              RETURNING l.*, ${done} AS gave_up_or_done),
            act AS (${leaseActivity(
              'changed',
              actor,
              ok ? ACTIONS.leaseCleanupSucceeded : ACTIONS.leaseCleanupFailed,
              sql`jsonb_build_object('environmentId', changed.environment_id, 'fence', changed.fence, 'status', changed.status,
                    'attempt', changed.cleanup_attempts, 'error', changed.last_cleanup_error,
                    'gaveUp', ${ok ? sql`false` : sql`changed.gave_up_or_done`}, 'nextCleanupAt', changed.next_cleanup_at,
                    'driver', changed.driver, 'done', ${JSON.stringify(attempt.done ?? {})}::jsonb)`,
            )})
            SELECT true AS changed, changed.* FROM changed
            UNION ALL
            SELECT false AS changed, target.*, false FROM target WHERE NOT EXISTS (SELECT 1 FROM changed)`,
      );
      const row = rows[0];
      if (!row) throw notFound('lease', leaseId);
      const lease = toLease(row);
      if (row.changed) return lease;
      if (lease.fence !== attempt.fence) {
        throw staleFence(leaseId, lease.fence, attempt.fence, lease.status);
      }
      throw new BerthError('conflict', `lease ${leaseId} owes no cleanup (status ${lease.status}, cleanup ${lease.cleanupStatus ?? 'none'})`);
    },

    /** Active leases per environment of a company (environments with none are absent). */
    async countActiveByEnvironment(companyId: string): Promise<Map<string, number>> {
      const rows = await queryRows<{ environment_id: string; n: number }>(
        db,
        sql`SELECT environment_id, count(*)::int AS n FROM environment_leases
            WHERE company_id = ${companyId} AND status = 'active' AND environment_id IS NOT NULL GROUP BY environment_id`,
      );
      return new Map(rows.map((r) => [String(r.environment_id), Number(r.n)]));
    },

    async get(companyId: string, leaseId: string): Promise<Lease> {
      return toLease(await getRow(companyId, leaseId));
    },

    /** Leases of one environment, most recently used first, keyset-paged. */
    async listByEnvironment(
      companyId: string,
      environmentId: string,
      filter: { status?: string; limit?: number; cursor?: string } = {},
    ): Promise<Page<Lease>> {
      requireId(environmentId, 'environment');
      const f = parseInput(listLeasesSchema, filter, 'lease filter');
      const conds: SQL[] = [sql`environment_id = ${environmentId}`, sql`company_id = ${companyId}`];
      if (f.status) conds.push(sql`status = ${f.status}`);
      if (f.cursor) {
        const [ts, id] = decodeCursor(f.cursor);
        conds.push(sql`(last_used_at, id) < (${ts}::timestamptz, ${id}::uuid)`);
      }
      const rows = await queryRows(
        db,
        sql`SELECT *, to_char(last_used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_ts FROM environment_leases
            WHERE ${sql.join(conds, sql` AND `)}
            ORDER BY last_used_at DESC, id DESC LIMIT ${f.limit + 1}`,
      );
      if (rows.length === 0) {
        const [env] = await queryRows(db, sql`SELECT 1 FROM environments WHERE id = ${environmentId} AND company_id = ${companyId}`);
        if (!env) throw notFound('environment', environmentId);
      }
      const page = rows.slice(0, f.limit);
      const last = page[page.length - 1];
      return {
        items: page.map(toLease),
        nextCursor: rows.length > f.limit && last ? encodeCursor(String(last.cursor_ts), String(last.id)) : null,
      };
    },
  };
  return service;
}
export type LeaseService = ReturnType<typeof leaseService>;

function encodeCursor(ts: string, id: string): string {
  return Buffer.from(`${ts}|${id}`).toString('base64url');
}

function decodeCursor(cursor: string): [string, string] {
  const [ts, id] = Buffer.from(cursor, 'base64url').toString().split('|');
  // Exactly the shape encodeCursor writes: anything else could not be cast by PostgreSQL.
  if (!ts || !id || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/.test(ts) || Number.isNaN(Date.parse(ts)) || !UUID_RE.test(id)) {
    throw new BerthError('invalid', 'invalid lease filter: cursor: is not a cursor this list returned', {
      fields: [{ path: 'cursor', message: 'is not a cursor this list returned' }],
    });
  }
  return [ts, id];
}
