// Acquire: grant a lease (reactivate a retained one, or insert a new one) under the
// environment's capacity, or hand back the lease an earlier acquire already gave.
import { sql, type SQL } from 'drizzle-orm';
import { queryRows, runStatement, type Db } from '../../db/client.js';
import { pgErrorOf, PG_FOREIGN_KEY_VIOLATION, PG_UNIQUE_VIOLATION } from '../../db/errors.js';
import { toLease } from '../../db/rows.js';
import { ACTIONS, type LeasePolicy } from '../../domain/enums.js';
import { BerthError, notFound, requireId } from '../../domain/errors.js';
import { SYSTEM_ACTOR, type Actor, type Lease } from '../../domain/types.js';
import { acquireLeaseSchema, parseInput, type AcquireLeaseInput } from '../../domain/validators.js';
import type { ExpireOperations } from './expire.js';
import { ACTOR_PLACEHOLDERS, grantParams, holderIsStaleSql, leaseActivity, P } from './sql.js';
import { claimWarm, type WarmMember } from './claim.js';

export interface AcquireResult {
  lease: Lease;
  /** False when an earlier acquire (same idempotency key, or same run) already holds it. */
  created: boolean;
  /** True when a retained lease's resources were handed to this caller. */
  reacquired: boolean;
  /** Asked for a warm claim (owner.warm): whether a ready pool member was taken (true) or the lease is cold (false). */
  warm?: boolean;
  /** The pool member a warm claim took: what the run uses instead of provisioning. */
  member?: WarmMember;
}

/**
 * Server-side facts about who owns a lease's resources: given by the executor, never by an
 * API caller (no route passes it). `driver` is the environment's own driver, written in the
 * same statement that grants the lease, before the driver makes anything: the write-ahead
 * record that cleanup and the sweeps work from.
 */
export interface LeaseOwner {
  driver?: string;
  /**
   * Reserve the resource the driver will make, in the grant statement: a provider_resources
   * row (provisioning, labelled with Berth's ids, with the environment's sealed config as it
   * is now) that the lease points at. The lease counts toward capacity from here.
   */
  reserveResource?: boolean;
  /**
   * The environment has a warm pool: try to claim a ready member first (claim.ts), in one
   * statement; with none ready, the normal (cold) grant. Either way the lease's metadata says
   * `warm: true|false`. Only with reserveResource, and not for the reuse policies.
   */
  warm?: boolean;
}

/** `leasePolicy` (Paperclip's name) is `policy`: one value, whichever name the caller used. */
function withPolicy(input: AcquireLeaseInput): AcquireLeaseInput {
  if (input === null || typeof input !== 'object' || input.leasePolicy === undefined) return input;
  const { leasePolicy, ...rest } = input;
  if (rest.policy !== undefined && rest.policy !== leasePolicy) {
    throw new BerthError('invalid', `invalid lease acquire: leasePolicy: ${String(leasePolicy).slice(0, 50)} is not the policy given (${String(rest.policy).slice(0, 50)})`, {
      fields: [{ path: 'leasePolicy', message: 'must equal policy when both are given' }],
    });
  }
  return { ...rest, policy: leasePolicy };
}

type AcquireValues = ReturnType<typeof acquireLeaseSchema.parse>;
/** How many free slots one grant tries (from a random one on) before it looks again. */
const SLOT_CANDIDATES = 16;
const REUSE_POLICIES: readonly LeasePolicy[] = ['reuse_by_environment', 'reuse_by_execution_workspace'];

/** What the grant may reactivate: nothing (a new lease only), a retained lease of the environment, or of the workspace. */
type GrantReuse = 'new' | 'reuse-environment' | 'reuse-workspace';
/** Where expiresAt comes from: ttlSeconds, expiresAt, or none. */
type GrantExpiry = 'ttl' | 'at' | 'no-expiry';
/** One compiled grant statement: everything that changes its text is in its name. */
type GrantVariant = `lease.acquire.${GrantReuse}.${GrantExpiry}${'' | '.max-lifetime'}${'' | '.reserve'}`;

function grantVariant(v: AcquireValues, owner: LeaseOwner): GrantVariant {
  const reuse: GrantReuse = v.policy === 'reuse_by_environment' ? 'reuse-environment' : v.policy === 'reuse_by_execution_workspace' ? 'reuse-workspace' : 'new';
  const expiry: GrantExpiry = v.ttlSeconds !== undefined ? 'ttl' : v.expiresAt !== undefined ? 'at' : 'no-expiry';
  return `lease.acquire.${reuse}.${expiry}${v.maxLifetimeSeconds !== undefined ? '.max-lifetime' : ''}${owner.reserveResource ? '.reserve' : ''}`;
}

interface Grant {
  envFound: boolean;
  envStatus?: string;
  envCapacity?: number | null;
  activeCount?: number;
  /** Capacity-limited environments: the slots free in this attempt's snapshot. When some were and nothing was granted, other acquires took them first. */
  freeSlots?: number;
  /** Idle warm-pool members holding places (they count toward the capacity). */
  pooledCount?: number;
  lease?: Lease;
  reacquired?: boolean;
}

export function acquireOperations(db: Db, expiry: Pick<ExpireOperations, 'expireStaleHolder'>) {
  /**
   * One attempt to grant a lease, in one autocommit statement: reactivate a retained lease
   * (reuse policies) or insert a new one. The statement holds FOR KEY SHARE on the
   * environment row until it commits, so the capacity it reads cannot change under it (a
   * capacity change takes FOR UPDATE) while acquires do not wait for each other. On a
   * capacity-limited environment the lease takes a free slot below the capacity, picked at
   * random among the free ones its snapshot shows; the unique index on active slots refuses
   * a slot another acquire took meanwhile (nothing is granted: the caller tries again).
   */
  async function grant(conn: Db, companyId: string, v: AcquireValues, actor: Actor, owner: LeaseOwner): Promise<Grant> {
    const ttlKind = v.ttlSeconds !== undefined ? 'ttl' : v.expiresAt !== undefined ? 'at' : 'none';
    const reuse = REUSE_POLICIES.includes(v.policy);
    const reserve = owner.reserveResource === true;
    const rows = await runStatement(conn, grantVariant(v, owner), () => {
      const expires = ttlKind === 'ttl'
        ? sql`now() + make_interval(secs => ${P('ttl')})`
        : ttlKind === 'at' ? sql`${P('expiresAt')}::timestamptz` : sql`NULL::timestamptz`;
      const maxExpires = v.maxLifetimeSeconds !== undefined ? sql`now() + make_interval(secs => ${P('maxLifetime')})` : sql`NULL::timestamptz`;
      const expiresAt = sql`LEAST(${expires}, ${maxExpires})`;
      const reused = sql`UPDATE environment_leases l SET status = 'active', fence = nextval('environment_lease_fence_seq'),
                slot = ok.slot, heartbeat_run_id = ${P('runId')}, issue_id = coalesce(${P('issueId')}, l.issue_id),
                idempotency_key = coalesce(l.idempotency_key, ${P('key')}),
                acquired_at = now(), last_used_at = now(), expires_at = ${expiresAt}, max_expires_at = ${maxExpires},
                renew_count = 0, last_renewed_at = NULL, released_at = NULL, failure_reason = NULL,
                cleanup_status = NULL, release_status = NULL, retain_until = NULL, metadata = l.metadata || ${P('meta')}::jsonb, updated_at = now()
              FROM ok
              WHERE l.id = (SELECT c.id FROM environment_leases c
                            WHERE c.environment_id = ok.id AND c.company_id = ok.company_id AND c.status = 'retained'
                              AND c.lease_policy = ${P('policy')}
                              ${v.policy === 'reuse_by_execution_workspace' ? sql`AND c.execution_workspace_id = ${P('wsId')}` : sql``}
                              ${reserve ? sql`AND EXISTS (SELECT 1 FROM provider_resources p JOIN environments e ON e.id = c.environment_id
                                                 WHERE p.id = c.resource_id AND p.status = 'draining'
                                                   AND p.config_snapshot = jsonb_build_object('driver', e.driver, 'config', e.config))` : sql``}
                            ORDER BY c.last_used_at DESC LIMIT 1 FOR UPDATE SKIP LOCKED)
                AND l.status = 'retained'
              RETURNING l.*`;
      // The slots in use below the capacity, in order: used slot u_i (0-based rank i) has
      // u_i - i free slots below it, so the k-th free slot is k + #{i : u_i - i <= k}. This
      // reads the active leases only (never every slot up to the capacity), and not at all
      // on an unlimited environment. The candidates are up to SLOT_CANDIDATES free slots from
      // a random one on; the grant takes the first that no other acquire in flight has
      // claimed (a transaction-scoped advisory lock on (environment, slot), tried without
      // waiting and let go at commit), so acquirers racing for the free slots skip each
      // other's instead of colliding on the unique index. The lock only spares a retry: the
      // index is what guarantees the capacity (two environments whose ids hash alike only
      // skip each other's slots). OFFSET 0 keeps the candidates in order and
      // the lock tried one candidate at a time, up to the first it gets.
      return sql`WITH env AS (
            SELECT id, company_id, status, capacity FROM environments
            WHERE id = ${P('envId')} AND company_id = ${P('companyId')}
            FOR KEY SHARE),
          used AS (
            SELECT c.slot AS u, (row_number() OVER (ORDER BY c.slot) - 1)::int AS i
            FROM env JOIN environment_leases c ON c.environment_id = env.id
            WHERE env.capacity IS NOT NULL AND c.status IN ('active', 'pooled') AND c.slot IS NOT NULL AND c.slot < env.capacity),
          pick AS (
            SELECT env.*, n.free, CASE WHEN n.free > 0 THEN (
                SELECT c.slot FROM (
                  SELECT k + (SELECT count(*)::int FROM used WHERE used.u - used.i <= k) AS slot
                  FROM (SELECT (r.k0 + j) % n.free AS k FROM generate_series(0, least(n.free, ${sql.raw(String(SLOT_CANDIDATES))}) - 1) j) ks
                  OFFSET 0) c
                WHERE pg_try_advisory_xact_lock(hashtext(env.id::text), c.slot)
                LIMIT 1) END AS slot
            FROM env, LATERAL (SELECT env.capacity - count(*)::int AS free FROM used) n,
                 LATERAL (SELECT floor(random() * n.free)::int AS k0) r),
          ok AS (SELECT pick.* FROM pick WHERE pick.status = 'active' AND (pick.capacity IS NULL OR pick.slot IS NOT NULL)),
          ${reuse ? sql`reused AS (${reused}),` : sql``}
          ${reuse && reserve ? sql`kept AS (
            -- A reused lease takes its kept resource back (only one made under the environment's
            -- config as it is now: see the reuse above): provisioned again (the driver finds it by
            -- its id and starts it), no longer due for a destroy.
            UPDATE provider_resources p SET status = 'provisioning', destroy_after = NULL, next_attempt_at = NULL, updated_at = now()
            FROM reused WHERE p.id = reused.resource_id AND p.status = 'draining'
            RETURNING p.id),` : sql``}
          ins AS (
            INSERT INTO environment_leases (company_id, environment_id, execution_workspace_id, issue_id, heartbeat_run_id,
              status, lease_policy, driver, fence, idempotency_key, expires_at, max_expires_at, metadata, resource_id, slot)
            SELECT ok.company_id, ok.id, ${P('wsId')}, ${P('issueId')}, ${P('runId')},
              'active', ${P('policy')}, ${P('driver')}::text, nextval('environment_lease_fence_seq'),
              ${P('key')}, ${expiresAt}, ${maxExpires}, ${P('meta')}::jsonb, ${reserve ? sql`gen_random_uuid()` : sql`NULL::uuid`}, ok.slot
            FROM ok ${reuse ? sql`WHERE NOT EXISTS (SELECT 1 FROM reused)` : sql``}
            ON CONFLICT DO NOTHING
            RETURNING *),
          ${reserve ? sql`res AS (
            -- The write-ahead record of what the driver will make: before it makes anything.
            INSERT INTO provider_resources (id, company_id, environment_id, driver, labels, status, lease_id, config_snapshot)
            SELECT ins.resource_id, ins.company_id, ins.environment_id, ins.driver,
              jsonb_build_object('berth.resource', ins.resource_id::text, 'berth.lease', ins.id::text,
                                 'berth.environment', ins.environment_id::text, 'berth.company', ins.company_id::text),
              'provisioning', ins.id,
              (SELECT jsonb_build_object('driver', e.driver, 'config', e.config) FROM environments e WHERE e.id = ins.environment_id)
            FROM ins
            RETURNING id),` : sql``}
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
          SELECT pick.status AS env_status, pick.capacity AS env_capacity, pick.free AS env_free_slots,
                 CASE WHEN pick.capacity IS NOT NULL AND granted.id IS NULL
                   THEN (SELECT count(*) FROM environment_leases c WHERE c.environment_id = pick.id AND c.status = 'active') END AS env_active_count,
                 CASE WHEN pick.capacity IS NOT NULL AND granted.id IS NULL
                   THEN (SELECT count(*) FROM environment_leases c WHERE c.environment_id = pick.id AND c.status = 'pooled') END AS env_pooled_count,
                 granted.*
          FROM pick LEFT JOIN granted ON true`;
    }, { ...grantParams(companyId, v, actor), driver: owner.driver ?? null });
    const row = rows[0];
    if (!row) return { envFound: false };
    const out = {
      envFound: true,
      envStatus: String(row.env_status),
      envCapacity: row.env_capacity === null ? null : Number(row.env_capacity),
      ...(row.env_active_count !== null && row.env_active_count !== undefined ? { activeCount: Number(row.env_active_count) } : {}),
      ...(row.env_free_slots !== null && row.env_free_slots !== undefined ? { freeSlots: Number(row.env_free_slots) } : {}),
      ...(row.env_pooled_count !== null && row.env_pooled_count !== undefined ? { pooledCount: Number(row.env_pooled_count) } : {}),
    };
    return row.id ? { ...out, lease: toLease(row), reacquired: Boolean(row.reacquired) } : out;
  }

  /** The lease an earlier acquire already gave this caller: same idempotency key, or same run on this environment. */
  async function findExisting(companyId: string, v: AcquireValues): Promise<Lease | null> {
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

  return {
    /**
     * Acquire a lease on an environment. Idempotent per idempotency key; a run that
     * already holds an active lease on the environment gets that lease back.
     */
    async acquire(companyId: string, input: AcquireLeaseInput, actor: Actor = SYSTEM_ACTOR, owner: LeaseOwner = {}): Promise<AcquireResult> {
      requireId(companyId, 'company');
      let v = parseInput(acquireLeaseSchema, withPolicy(input), 'lease acquire');
      const warm = owner.warm === true && owner.reserveResource === true && !REUSE_POLICIES.includes(v.policy);
      if (warm) {
        try {
          const claimed = await claimWarm(db, companyId, v, actor);
          if (claimed) return { lease: claimed.lease, created: true, reacquired: false, warm: true, member: claimed.member };
        } catch (err) {
          // Another acquire of the same caller (key, run or workspace) won meanwhile: the normal acquire below sorts it out.
          if (pgErrorOf(err)?.code !== PG_UNIQUE_VIOLATION) throw err;
        }
        v = { ...v, metadata: { ...v.metadata, warm: false } };
      }
      const cold = (r: AcquireResult): AcquireResult => (warm ? { ...r, warm: r.lease.metadata.warm === true } : r);
      // Every attempt that grants nothing found a reason that has since gone away: a slot or a
      // retained lease another acquire took first, a conflicting lease that ended. Many
      // acquirers racing for the last free slots lose it to one another a few times.
      for (let attempt = 0; attempt < 32; attempt++) {
        let res: Grant;
        try {
          res = await grant(db, companyId, v, actor, owner);
        } catch (err) {
          const pgErr = pgErrorOf(err);
          // A reactivated lease may collide with one the same run took meanwhile: look again.
          if (pgErr?.code === PG_UNIQUE_VIOLATION) continue;
          if (pgErr?.code === PG_FOREIGN_KEY_VIOLATION) throw notFound('environment', v.environmentId);
          throw err;
        }
        if (!res.envFound) throw notFound('environment', v.environmentId);
        if (res.lease) return cold({ lease: res.lease, created: true, reacquired: res.reacquired ?? false });

        const existing = await findExisting(companyId, v);
        if (existing) return cold({ lease: existing, created: false, reacquired: false });
        if (res.envStatus !== 'active') {
          throw new BerthError('environment_archived', `environment ${v.environmentId} is ${res.envStatus} and takes no new leases`);
        }
        // At capacity when this attempt's snapshot showed no free slot and counts as many
        // active leases as the capacity; free slots other acquires took first mean try again.
        const pooled = res.pooledCount ?? 0;
        if (res.envCapacity !== null && res.envCapacity !== undefined && res.freeSlots !== undefined && res.freeSlots <= 0 && res.activeCount !== undefined && res.activeCount + pooled >= res.envCapacity) {
          const members = pooled > 0 ? ` and ${pooled} idle pool member${pooled === 1 ? '' : 's'}` : '';
          throw new BerthError('capacity_exhausted', `environment ${v.environmentId} is at capacity (${res.activeCount} of ${res.envCapacity} leases active${members})`, {
            details: { capacity: res.envCapacity, active: res.activeCount, ...(pooled > 0 ? { pooled } : {}) },
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
            await expiry.expireStaleHolder(String(holder.id));
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
  };
}
