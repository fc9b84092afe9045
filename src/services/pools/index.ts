// Warm pools: an environment keeps resources provisioned and ready ahead of any lease, so a
// run's acquire takes one in a single statement instead of waiting for its driver.
//
// Design
// ------
// Config. `environments.pool` = {minReady, maxReady, maxAgeSeconds, setup?} (validated in
// domain/validators.ts; allowed only for drivers whose descriptor says `capabilities.pool`;
// minReady <= capacity when a capacity is set: services/pools/config.ts). PATCH changes it.
//
// A member is two rows, written together by one statement (the write-ahead record, before
// the driver is asked to make anything):
//   - provider_resources: pool_member = true, status provisioning -> ready, made_by = the
//     refilling server, labels with Berth's ids (no lease label: it has no lease yet), the
//     environment's sealed config snapshot (so its destroy works after the config changed);
//   - a placeholder lease in environment_leases with status `pooled` (never shown by the
//     lease reads), pointing at the resource and holding a capacity slot.
// Why a placeholder lease: capacity is the partial unique index on (environment, slot) for
// active leases; widening it to `status IN ('active', 'pooled')` makes idle members and
// active leases share the one set of slots below the capacity, so "members count toward the
// capacity" is enforced by the same index that enforces it for leases, across any number of
// servers, with no lock that acquires wait on. Cold acquires see pooled slots as taken.
//
// Claim (leases/claim.ts), ONE autocommit statement: the oldest ready member of the
// environment (FOR UPDATE SKIP LOCKED on its resource row, so concurrent claimers on every
// server skip each other's and none waits), its placeholder turned into the caller's active
// lease (new fence, its TTL, metadata.warm = true; the slot stays, so a claim never changes
// how many places are held), the resource marked leased, the lease's activity row, and,
// when it took the last ready member, a NOTIFY on POOLS_CHANNEL that wakes every server's
// refill at commit (the claiming server wakes its own in process after every claim; a NOTIFY
// per claim would serialize all claims' commits on PostgreSQL's notification queue: measured
// in bench:pools, about half the claim rate at 16 clients). None ready (or the caller already has
// its lease): the normal cold acquire, with metadata.warm = false. The run's
// paperclipEnvironment says `warm: true|false` too. Idempotent acquire keeps working: the
// claim skips a caller whose idempotency key or run already has a lease, and the cold path
// then hands that lease back.
//
// Refill (heartbeat/pool-refill.ts): a scheduled task (interval, and woken by POOLS_CHANNEL
// after each claim or pool change), on every server that has the driver:
//   1. retire (one statement): idle ready members older than maxAgeSeconds, beyond maxReady,
//      made under a config the environment no longer has (a claim never takes those either),
//      or of an environment with no pool any more / archived; and provisioning members whose
//      maker server is gone (no heartbeat for staleSeconds) or that are past the provision
//      deadline. Retiring deletes the placeholder and marks the resource destroying; the
//      existing resource GC destroys it through the driver, with retries.
//   2. reserve (a short transaction holding the pool's advisory lock, so two servers never
//      both fill the same gap): as many new members as keep minReady idle, never more than
//      maxReady idle, never past the capacity (free slots), at most a batch per pass.
//   3. provision each reserved member outside any transaction (deadline and AbortSignal),
//      run the pool's setup command in it when there is one (its own timeout, output kept),
//      then mark it ready in one statement. A failure retires it and counts a refill failure
//      on the environment (pool_status: refillFailures, lastError, lastErrorAt).
// A claimed member is never returned to the pool: its lease is an ordinary run lease, and
// ephemeral release destroys it (resource GC). Reconciliation covers members: their records
// are live, so `list` never calls them orphans; a server SIGKILLed mid-refill leaves a
// provisioning record whose maker is gone, which step 1 of any server's next refill retires.
import { sql } from 'drizzle-orm';
import { queryRows, textArrayLiteral, type Db } from '../../db/client.js';
import { pgErrorOf, PG_UNIQUE_VIOLATION } from '../../db/errors.js';
import { readJson } from '../../db/rows.js';
import { storableText } from '../../domain/text.js';
import type { PoolConfig } from '../../domain/validators.js';
import { ACTIONS } from '../../domain/enums.js';
import { SYSTEM_ACTOR } from '../../domain/types.js';
import { activityFrom, ENVIRONMENT_ENTITY } from '../activity.js';
import { retireSql } from './config.js';

/** A member reserved by `reserve`: made by the caller's driver next, outside any transaction. */
export interface ReservedMember {
  resourceId: string;
  leaseId: string;
  companyId: string;
  environmentId: string;
}

/** What a pool holds now, as the API, CLI and dashboard show it. */
export interface PoolState {
  /** Idle members: ready or still being made (they hold places toward the capacity). */
  size: number;
  ready: number;
  provisioning: number;
  /** Members claimed by leases that are still active. */
  claimed: number;
  refillFailures: number;
  lastError: string | null;
  lastErrorAt: string | null;
}

/** An environment the refill has work in (or may): its pool and what it holds now. */
export interface PoolWork {
  environmentId: string;
  companyId: string;
  driver: string;
  active: boolean;
  pool: PoolConfig | null;
  idle: number;
  provisioning: number;
  /** Age of its oldest idle ready member, seconds. */
  oldestReadySeconds: number | null;
  /** Idle ready members made under a config the environment no longer has. */
  stale: number;
}

const IDLE_MEMBER = sql`p.pool_member AND p.status IN ('provisioning', 'ready')`;
/** Members a refill reserves per environment per pass, at most. */
export const REFILL_BATCH = 16;

export function poolService(db: Db) {
  return {
    /**
     * Environments of `drivers` with a pool, or with idle members left (a pool removed, an
     * environment archived): one read, what each holds now.
     */
    async work(drivers: readonly string[]): Promise<PoolWork[]> {
      if (drivers.length === 0) return [];
      const rows = await queryRows(
        db,
        sql`SELECT e.id, e.company_id, e.driver, e.status, e.pool,
              count(p.id)::int AS idle,
              count(p.id) FILTER (WHERE p.status = 'provisioning')::int AS provisioning,
              extract(epoch FROM now() - min(p.created_at) FILTER (WHERE p.status = 'ready'))::float8 AS oldest_ready,
              count(p.id) FILTER (WHERE p.status = 'ready' AND p.config_snapshot->'config' IS DISTINCT FROM e.config)::int AS stale
            FROM environments e
            LEFT JOIN provider_resources p ON p.environment_id = e.id AND ${IDLE_MEMBER}
            WHERE e.driver = ANY (${textArrayLiteral(drivers)}::text[])
              AND (e.pool IS NOT NULL OR EXISTS (SELECT 1 FROM environment_leases l WHERE l.environment_id = e.id AND l.status = 'pooled'))
            GROUP BY e.id`,
      );
      return rows.map((r) => ({
        environmentId: String(r.id),
        companyId: String(r.company_id),
        driver: String(r.driver),
        active: r.status === 'active',
        pool: r.pool === null || r.pool === undefined ? null : readJson<PoolConfig>(r.pool),
        idle: Number(r.idle),
        provisioning: Number(r.provisioning),
        oldestReadySeconds: r.oldest_ready === null || r.oldest_ready === undefined ? null : Number(r.oldest_ready),
        stale: Number(r.stale),
      }));
    },

    /**
     * Step 1 of a refill, one statement: retire the environment's idle members that are too
     * old, beyond maxReady, of a pool that is gone (or an environment no longer active), and
     * provisioning members whose maker is gone or that are past `provisionDeadlineSeconds`.
     * Returns the ids retired (resource GC destroys them).
     */
    async retire(environmentId: string, opts: { staleSeconds: number; provisionDeadlineSeconds: number }): Promise<string[]> {
      const rows = await queryRows<{ id: string }>(
        db,
        retireSql(sql`SELECT p.id FROM provider_resources p
            WHERE p.id IN (
              SELECT m.id FROM (
                SELECT p2.id, p2.status, p2.created_at, p2.made_by, p2.config_snapshot->'config' AS config,
                       row_number() OVER (ORDER BY p2.created_at DESC, p2.id) AS rn
                FROM provider_resources p2 JOIN environment_leases l ON l.id = p2.lease_id AND l.status = 'pooled'
                WHERE p2.environment_id = ${environmentId} AND p2.pool_member AND p2.status IN ('provisioning', 'ready')) m
              LEFT JOIN environments e ON e.id = ${environmentId}
              WHERE (m.status = 'ready' AND (e.id IS NULL OR e.status <> 'active' OR e.pool IS NULL
                       OR m.config IS DISTINCT FROM e.config
                       OR m.created_at <= now() - make_interval(secs => (e.pool->>'maxAgeSeconds')::float8)
                       OR m.rn > (e.pool->>'maxReady')::int))
                 OR (m.status = 'provisioning' AND (m.created_at <= now() - make_interval(secs => ${opts.provisionDeadlineSeconds}::float8)
                       OR NOT EXISTS (SELECT 1 FROM berth_servers s WHERE s.id = m.made_by AND s.stopped_at IS NULL
                                      AND s.heartbeat_at > now() - make_interval(secs => ${opts.staleSeconds}::float8)))))
              AND p.pool_member AND p.status IN ('provisioning', 'ready')
            FOR UPDATE OF p SKIP LOCKED`),
      );
      return rows.map((r) => String(r.id));
    },

    /**
     * Step 2 of a refill: reserve the members the pool lacks (minReady idle, at most maxReady
     * idle, at most the free places under the capacity, at most `batch`), each a placeholder
     * lease holding a free slot and its resource record (provisioning, made by `serverId`), in
     * one statement, under the pool's advisory lock (transaction-scoped), so refills of two
     * servers never both count the same gap. A slot a concurrent cold acquire took first
     * (unique index) makes it try again.
     */
    async reserve(environmentId: string, serverId: string, opts: { batch?: number } = {}): Promise<ReservedMember[]> {
      for (let attempt = 0; ; attempt++) {
        try {
          return await db.transaction(async (tx) => {
            await queryRows(tx, sql`SELECT pg_advisory_xact_lock(hashtextextended('berth.pool:' || ${environmentId}::text, 0))`);
            const rows = await queryRows(
              tx,
              sql`WITH env AS (
                    SELECT e.id, e.company_id, e.driver, e.capacity, e.config,
                           (e.pool->>'minReady')::int AS min_ready, (e.pool->>'maxReady')::int AS max_ready
                    FROM environments e WHERE e.id = ${environmentId} AND e.status = 'active' AND e.pool IS NOT NULL
                    FOR KEY SHARE),
                  idle AS (SELECT count(*)::int AS n FROM environment_leases l, env WHERE l.environment_id = env.id AND l.status = 'pooled'),
                  used AS (
                    SELECT c.slot AS u, (row_number() OVER (ORDER BY c.slot) - 1)::int AS i
                    FROM env JOIN environment_leases c ON c.environment_id = env.id
                    WHERE env.capacity IS NOT NULL AND c.status IN ('active', 'pooled') AND c.slot IS NOT NULL AND c.slot < env.capacity),
                  want AS (
                    SELECT greatest(0, least(env.min_ready - idle.n, env.max_ready - idle.n, ${opts.batch ?? REFILL_BATCH}::int,
                             CASE WHEN env.capacity IS NULL THEN 2147483647 ELSE env.capacity - (SELECT count(*)::int FROM used) END))::int AS n
                    FROM env, idle),
                  slots AS (
                    SELECT CASE WHEN env.capacity IS NULL THEN NULL::int
                                ELSE k + (SELECT count(*)::int FROM used WHERE used.u - used.i <= k) END AS slot
                    FROM env, want, generate_series(0, want.n - 1) k),
                  ins AS (
                    INSERT INTO environment_leases (company_id, environment_id, status, lease_policy, driver, fence, resource_id, slot)
                    SELECT env.company_id, env.id, 'pooled', 'ephemeral', env.driver, nextval('environment_lease_fence_seq'), gen_random_uuid(), slots.slot
                    FROM env, slots
                    RETURNING id, company_id, environment_id, driver, resource_id),
                  res AS (
                    INSERT INTO provider_resources (id, company_id, environment_id, driver, labels, status, lease_id, config_snapshot, pool_member, made_by)
                    SELECT ins.resource_id, ins.company_id, ins.environment_id, ins.driver,
                      jsonb_build_object('berth.resource', ins.resource_id::text, 'berth.environment', ins.environment_id::text,
                                         'berth.company', ins.company_id::text),
                      'provisioning', ins.id, (SELECT jsonb_build_object('driver', env.driver, 'config', env.config) FROM env), true, ${serverId}
                    FROM ins
                    RETURNING id, lease_id, company_id, environment_id)
                  SELECT * FROM res`,
            );
            return rows.map((r) => ({ resourceId: String(r.id), leaseId: String(r.lease_id), companyId: String(r.company_id), environmentId: String(r.environment_id) }));
          });
        } catch (err) {
          if (pgErrorOf(err)?.code === PG_UNIQUE_VIOLATION && attempt < 3) continue;
          throw err;
        }
      }
    },

    /**
     * What the driver made for a member, recorded while it is still being prepared (before a
     * setup command runs), so a destroy finds it whatever happens next.
     */
    async recordHandle(resourceId: string, made: { providerId: string | null; state: Record<string, unknown> }): Promise<void> {
      await queryRows(
        db,
        sql`UPDATE provider_resources SET provider_id = ${made.providerId}, state = ${JSON.stringify(made.state)}::jsonb, updated_at = now()
            WHERE id = ${resourceId} AND status NOT IN ('destroyed', 'lost')`,
      );
    },

    /**
     * Step 3's end, one statement: the member is ready (claimable), with its handle and what a
     * run will be told. A member retired meanwhile keeps its status (its destroy is owed) but
     * gets the handle, so the destroy finds what was made. True when it became ready.
     */
    async markReady(
      resourceId: string,
      made: { providerId: string | null; state: Record<string, unknown>; cwd: string; details: Record<string, unknown> },
      setup?: { exitCode: number | null; output: string; ms: number },
    ): Promise<boolean> {
      const rows = await queryRows<{ status: string }>(
        db,
        sql`WITH res AS (
              UPDATE provider_resources SET provider_id = ${made.providerId}, state = ${JSON.stringify(made.state)}::jsonb,
                ready_details = ${JSON.stringify({ cwd: made.cwd, details: made.details })}::jsonb,
                ready_at = CASE WHEN status = 'provisioning' THEN now() ELSE ready_at END,
                status = CASE WHEN status = 'provisioning' THEN 'ready' ELSE status END, updated_at = now()
              WHERE id = ${resourceId} AND status NOT IN ('destroyed', 'lost')
              RETURNING *)
            ${setup ? sql`, act AS (${activityFrom({
              source: 'res',
              actor: SYSTEM_ACTOR,
              action: ACTIONS.poolMemberSetUp,
              entityType: ENVIRONMENT_ENTITY,
              entityId: sql.raw('res.environment_id::text'),
              runId: sql`NULL::uuid`,
              details: sql`jsonb_build_object('resourceId', res.id, 'exitCode', ${setup.exitCode}::int, 'ms', ${setup.ms}::int, 'output', ${setup.output}::text)`,
            })})` : sql``}
            SELECT status FROM res`,
      );
      return rows[0]?.status === 'ready';
    },

    /**
     * A member that could not be made (or set up): retired (its destroy is owed, in case
     * anything was made) and counted as a refill failure of its environment, with the error.
     */
    async markFailed(resourceId: string, environmentId: string, error: string): Promise<void> {
      const message = storableText(error).slice(0, 2000);
      await queryRows(db, retireSql(sql`SELECT p.id FROM provider_resources p WHERE p.id = ${resourceId} AND ${IDLE_MEMBER} FOR UPDATE OF p`));
      await queryRows(
        db,
        sql`WITH res AS (UPDATE provider_resources SET last_error = ${message}, updated_at = now() WHERE id = ${resourceId} RETURNING id),
            changed AS (
              UPDATE environments SET pool_status = pool_status || jsonb_build_object(
                  'refillFailures', coalesce((pool_status->>'refillFailures')::int, 0) + 1,
                  'lastError', ${message}::text, 'lastErrorAt', now())
              WHERE id = ${environmentId}
              RETURNING id, company_id)
            ${activityFrom({
              source: 'changed',
              actor: SYSTEM_ACTOR,
              action: ACTIONS.poolRefillFailed,
              entityType: ENVIRONMENT_ENTITY,
              entityId: sql.raw('changed.id::text'),
              runId: sql`NULL::uuid`,
              details: sql`jsonb_build_object('resourceId', ${resourceId}::uuid, 'error', ${message}::text)`,
            })}`,
      );
    },

    /** What each environment's pool holds now (environments with no pool and no member are absent). */
    async states(environmentIds: readonly string[]): Promise<Map<string, PoolState>> {
      if (environmentIds.length === 0) return new Map();
      const rows = await queryRows(
        db,
        sql`SELECT e.id, e.pool_status,
              count(p.id) FILTER (WHERE p.status IN ('provisioning', 'ready') AND l.status = 'pooled')::int AS size,
              count(p.id) FILTER (WHERE p.status = 'ready' AND l.status = 'pooled')::int AS ready,
              count(p.id) FILTER (WHERE p.status = 'provisioning' AND l.status = 'pooled')::int AS provisioning,
              count(p.id) FILTER (WHERE p.status = 'leased' AND l.status = 'active')::int AS claimed
            FROM environments e
            LEFT JOIN provider_resources p ON p.environment_id = e.id AND p.pool_member AND p.status IN ('provisioning', 'ready', 'leased')
            LEFT JOIN environment_leases l ON l.id = p.lease_id
            WHERE e.id = ANY (${textArrayLiteral(environmentIds)}::uuid[])
            GROUP BY e.id`,
      );
      return new Map(
        rows.map((r) => {
          const st = readJson<{ refillFailures?: number; lastError?: string; lastErrorAt?: string }>(r.pool_status);
          return [
            String(r.id),
            {
              size: Number(r.size),
              ready: Number(r.ready),
              provisioning: Number(r.provisioning),
              claimed: Number(r.claimed),
              refillFailures: Number(st.refillFailures ?? 0),
              lastError: st.lastError ?? null,
              lastErrorAt: st.lastErrorAt ? new Date(st.lastErrorAt).toISOString() : null,
            },
          ];
        }),
      );
    },
  };
}
export type PoolService = ReturnType<typeof poolService>;
