// Provider resources: what drivers made on providers, as records only the server writes.
// The lease grant reserves a resource row in its own statement (the write-ahead record:
// leases/acquire.ts); here are the rest of its life: activation with its provider handle,
// destroy attempts with backoff (resource GC), and what reconciliation needs.
import { sql } from 'drizzle-orm';
import { queryRows, textArrayLiteral, type Db } from '../../db/client.js';
import { readJson, toLease, toResource } from '../../db/rows.js';
import { ACTIONS } from '../../domain/enums.js';
import { BerthError, notFound, requireId } from '../../domain/errors.js';
import { SYSTEM_ACTOR, type Actor, type Lease, type ProviderResource } from '../../domain/types.js';
import type { Metrics } from '../../metrics/index.js';
import { environmentSecretPaths, openSecrets } from '../../secrets/config.js';
import { activityFrom, ENVIRONMENT_ENTITY, LEASE_ENTITY } from '../activity.js';

/** A resource as the GC needs it: with the environment it was made in (config opened), as it was then. */
export interface ResourceToDestroy extends ProviderResource {
  environment: { id: string; name: string; driver: string; secretConfig: Record<string, unknown> };
}

/** Backoff before destroy retry n (1-based): 2^n seconds, at most 5 minutes. */
const backoff = (n: unknown) => sql`make_interval(secs => least(power(2, ${n}), 300))`;
export const DEFAULT_DESTROY_MAX_ATTEMPTS = 6;

export function resourceService(db: Db, metrics: Metrics) {
  return {
    /**
     * Activate a reserved lease (one statement): the driver's handle recorded on its resource
     * (leased), the lease's TTL counted from now, what the run is told recorded as its
     * driverState, and one activity row. When the lease is no longer this holder's, the
     * handle is still recorded (so its destroy finds what was made) and stale_fence /
     * lease_not_active is thrown. A null ttlSeconds keeps the lease's expiry as it is (a lease
     * acquired with expiresAt, or with none).
     */
    async activate(
      companyId: string,
      a: { leaseId: string; fence: number; resourceId: string; ttlSeconds: number | null; providerId: string | null; state: Record<string, unknown>; details: Record<string, unknown>; providerLeaseId?: string | null },
    ): Promise<Lease> {
      const rows = await queryRows(
        db,
        sql`WITH lease AS (
              UPDATE environment_leases l SET
                expires_at = ${a.ttlSeconds === null ? sql`l.expires_at` : sql`LEAST(now() + make_interval(secs => ${a.ttlSeconds}), l.max_expires_at)`},
                driver_state = ${JSON.stringify(a.details)}::jsonb,
                provider_lease_id = coalesce(${a.providerLeaseId?.slice(0, 2000) ?? null}::text, l.provider_lease_id),
                last_used_at = now(), updated_at = now()
              WHERE l.id = ${a.leaseId} AND l.company_id = ${companyId} AND l.fence = ${a.fence} AND l.status = 'active'
                AND l.resource_id = ${a.resourceId}
              RETURNING l.*),
            res AS (
              UPDATE provider_resources p SET provider_id = ${a.providerId}, state = ${JSON.stringify(a.state)}::jsonb,
                status = CASE WHEN EXISTS (SELECT 1 FROM lease) AND p.status = 'provisioning' THEN 'leased' ELSE p.status END,
                ready_at = coalesce(p.ready_at, now()), updated_at = now()
              WHERE p.id = ${a.resourceId} AND p.lease_id = ${a.leaseId} AND p.status NOT IN ('destroyed', 'lost')
              RETURNING p.id),
            act AS (${activityFrom({
              source: 'lease',
              actor: SYSTEM_ACTOR,
              action: ACTIONS.leaseActivated,
              entityType: LEASE_ENTITY,
              entityId: sql.raw('lease.id::text'),
              runId: sql.raw('lease.heartbeat_run_id'),
              details: sql`jsonb_build_object('environmentId', lease.environment_id, 'fence', lease.fence, 'resourceId', lease.resource_id,
                'providerId', ${a.providerId}::text, 'expiresAt', lease.expires_at)`,
            })})
            SELECT lease.* FROM lease`,
      );
      if (rows[0]) return toLease(rows[0]);
      const [cur] = await queryRows(db, sql`SELECT fence, status FROM environment_leases WHERE id = ${a.leaseId} AND company_id = ${companyId}`);
      if (!cur) throw notFound('lease', a.leaseId);
      if (Number(cur.fence) !== a.fence) throw new BerthError('stale_fence', `lease ${a.leaseId} is held under fence ${cur.fence}; fence ${a.fence} is stale`);
      throw new BerthError('lease_not_active', `lease ${a.leaseId} is ${cur.status}`, { details: { status: cur.status } });
    },

    async get(resourceId: string): Promise<ProviderResource> {
      requireId(resourceId, 'resource');
      const [row] = await queryRows(db, sql`SELECT * FROM provider_resources WHERE id = ${resourceId}`);
      if (!row) throw notFound('resource', resourceId);
      return toResource(row);
    },

    async forLease(leaseId: string): Promise<ProviderResource | null> {
      const [row] = await queryRows(db, sql`SELECT * FROM provider_resources WHERE lease_id = ${leaseId}`);
      return row ? toResource(row) : null;
    },

    /**
     * Resource GC's claim: resources owed a destroy (and draining ones past destroyAfter
     * whose lease no longer holds them), only of drivers this server has, their next
     * attempt moved `claimSeconds` ahead so no other server takes them meanwhile. Each
     * comes with its environment as it was when the resource was made (config opened).
     */
    async claimDue(drivers: readonly string[], opts: { limit?: number; claimSeconds?: number } = {}): Promise<ResourceToDestroy[]> {
      if (drivers.length === 0) return [];
      const list = textArrayLiteral(drivers);
      const rows = await queryRows(
        db,
        sql`WITH drained AS (
              UPDATE provider_resources p SET status = 'destroying', next_attempt_at = now(), updated_at = now()
              WHERE p.id IN (SELECT d.id FROM provider_resources d
                             WHERE d.status = 'draining' AND d.destroy_after <= now() AND d.driver = ANY (${list}::text[])
                               AND NOT EXISTS (SELECT 1 FROM environment_leases l WHERE l.id = d.lease_id AND l.status IN ('active', 'retained'))
                             LIMIT ${opts.limit ?? 50} FOR UPDATE SKIP LOCKED)
              RETURNING p.id)
            -- (Those just drained are claimed at the next tick: this statement's snapshot does not see them yet.)
            UPDATE provider_resources p SET next_attempt_at = now() + make_interval(secs => ${opts.claimSeconds ?? 150})
            WHERE p.id IN (SELECT id FROM provider_resources
                           WHERE status = 'destroying' AND next_attempt_at <= now() AND driver = ANY (${list}::text[])
                           ORDER BY next_attempt_at LIMIT ${opts.limit ?? 50} FOR UPDATE SKIP LOCKED)
            RETURNING p.*, (SELECT name FROM environments e WHERE e.id = p.environment_id) AS env_name`,
      );
      return rows.map((r) => {
        const res = toResource(r);
        const snap = readJson<{ driver?: string; config?: Record<string, unknown> }>(r.config_snapshot);
        const driver = snap.driver ?? res.driver;
        const open = openSecrets({ config: snap.config ?? {} }, environmentSecretPaths(driver), `resource ${res.id}`);
        return { ...res, environment: { id: res.environmentId ?? '', name: r.env_name == null ? '' : String(r.env_name), driver, secretConfig: open.config as Record<string, unknown> } };
      });
    },

    /**
     * One destroy attempt on a resource owed one, in one statement with its lease's cleanup
     * record (the lease a client sees: cleanupStatus, pending_cleanup -> its release status)
     * and one activity row. Success: destroyed. Failure: retried with backoff, and after
     * `maxAttempts` given up visibly (resource lost; a pending_cleanup lease failed).
     */
    async recordDestroyAttempt(
      resourceId: string,
      attempt: { ok: boolean; error?: string; done?: Record<string, unknown>; maxAttempts?: number },
    ): Promise<ProviderResource | null> {
      const max = attempt.maxAttempts ?? DEFAULT_DESTROY_MAX_ATTEMPTS;
      const ok = attempt.ok;
      const error = ok ? null : (attempt.error ?? 'destroy failed').slice(0, 4000);
      const n = sql`(t.attempts + 1)`;
      const done = ok ? sql`true` : sql`${n} >= ${max}`;
      const rows = await queryRows(
        db,
        sql`WITH t AS (SELECT * FROM provider_resources WHERE id = ${resourceId} AND status = 'destroying' FOR UPDATE),
            res AS (
              UPDATE provider_resources p SET attempts = ${n},
                status = ${ok ? sql`'destroyed'` : sql`CASE WHEN ${done} THEN 'lost' ELSE 'destroying' END`},
                next_attempt_at = CASE WHEN ${done} THEN NULL ELSE now() + ${backoff(n)} END,
                last_error = ${ok ? sql`p.last_error` : sql`${error}::text`},
                destroyed_at = ${ok ? sql`now()` : sql`NULL`}, updated_at = now()
              FROM t WHERE p.id = t.id
              RETURNING p.*, ${done} AS finished),
            lease AS (
              UPDATE environment_leases l SET
                cleanup_attempts = res.attempts, cleanup_status = ${ok ? 'success' : 'failed'},
                last_cleanup_error = ${ok ? sql`l.last_cleanup_error` : sql`${error}::text`},
                status = CASE WHEN l.status = 'pending_cleanup' AND res.finished
                              THEN ${ok ? sql`coalesce(l.release_status, 'released')` : sql`'failed'`} ELSE l.status END,
                release_status = CASE WHEN res.finished THEN NULL ELSE l.release_status END,
                failure_reason = ${ok ? sql`l.failure_reason` : sql`CASE WHEN res.finished
                  THEN concat_ws('; ', l.failure_reason, 'cleanup gave up after ' || res.attempts || ' attempts: ' || ${error}::text)
                  ELSE l.failure_reason END`},
                updated_at = now()
              FROM res WHERE l.id = res.lease_id
              RETURNING l.*, res.finished, res.next_attempt_at AS res_next, res.id AS res_id),
            act AS (${activityFrom({
              source: 'lease',
              actor: SYSTEM_ACTOR,
              action: ok ? ACTIONS.leaseCleanupSucceeded : ACTIONS.leaseCleanupFailed,
              entityType: LEASE_ENTITY,
              entityId: sql.raw('lease.id::text'),
              runId: sql.raw('lease.heartbeat_run_id'),
              details: sql`jsonb_build_object('environmentId', lease.environment_id, 'fence', lease.fence, 'status', lease.status,
                'attempt', lease.cleanup_attempts, 'error', lease.last_cleanup_error, 'gaveUp', ${ok ? sql`false` : sql`lease.finished`},
                'nextCleanupAt', lease.res_next, 'driver', lease.driver, 'resourceId', lease.res_id,
                'done', ${JSON.stringify(attempt.done ?? {})}::jsonb)`,
            })})
            SELECT * FROM res`,
      );
      if (!rows[0]) return null;
      metrics.cleanupAttempt('resource', ok, !ok && Boolean(rows[0].finished));
      return toResource(rows[0]);
    },

    /**
     * A holder ran a command in a lease's workspace, or moved files in or out: one activity
     * row on the lease, and the lease marked used. `details` names the program and how it
     * ended (never its arguments), or the path and counts.
     */
    async recordLeaseCommand(companyId: string, leaseId: string, actor: Actor, details: Record<string, unknown>, kind: 'command' | 'files' = 'command'): Promise<void> {
      await queryRows(
        db,
        sql`WITH lease AS (UPDATE environment_leases SET last_used_at = now() WHERE id = ${leaseId} AND company_id = ${companyId} RETURNING *)
            ${activityFrom({
              source: 'lease',
              actor,
              action: kind === 'files' ? ACTIONS.leaseFiles : ACTIONS.leaseCommand,
              entityType: LEASE_ENTITY,
              entityId: sql.raw('lease.id::text'),
              runId: sql.raw('lease.heartbeat_run_id'),
              details: sql`jsonb_build_object('environmentId', lease.environment_id, 'fence', lease.fence) || ${JSON.stringify(details)}::jsonb`,
            })}`,
      );
    },

    /** Ids of the resources of an environment with a record that is not destroyed: what reconciliation keeps. */
    async liveIds(environmentId: string): Promise<Set<string>> {
      const rows = await queryRows<{ id: string }>(
        db,
        sql`SELECT id FROM provider_resources WHERE environment_id = ${environmentId} AND status NOT IN ('destroyed', 'lost')`,
      );
      return new Set(rows.map((r) => String(r.id)));
    },

    /** Reconciliation destroyed an object no record knew: one activity row on its environment. */
    async recordOrphanDestroyed(companyId: string, environmentId: string, o: { providerId: string; labels: Record<string, string>; done: Record<string, unknown> }): Promise<void> {
      await queryRows(
        db,
        sql`WITH src AS (SELECT ${companyId}::uuid AS company_id)
            ${activityFrom({
              source: 'src',
              actor: SYSTEM_ACTOR,
              action: ACTIONS.resourceOrphanDestroyed,
              entityType: ENVIRONMENT_ENTITY,
              entityId: sql`${environmentId}::text`,
              runId: sql`NULL::uuid`,
              details: sql`jsonb_build_object('providerId', ${o.providerId}::text, 'labels', ${JSON.stringify(o.labels)}::jsonb, 'done', ${JSON.stringify(o.done)}::jsonb)`,
            })}`,
      );
      metrics.orphanDestroyed();
    },
  };
}
export type ResourceService = ReturnType<typeof resourceService>;
