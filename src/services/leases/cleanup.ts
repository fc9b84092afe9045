// Cleanup of what a driver made for a lease that ended: workers claim the due ones
// and record each attempt, with backoff and a visible give-up.
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from '../../db/client.js';
import { toLease } from '../../db/rows.js';
import { ACTIONS } from '../../domain/enums.js';
import { BerthError, notFound, requireId } from '../../domain/errors.js';
import { SYSTEM_ACTOR, type Actor, type Lease } from '../../domain/types.js';
import type { Metrics } from '../../metrics/index.js';
import { cleanupBackoffSql, DEFAULT_CLEANUP_MAX_ATTEMPTS, leaseActivity, staleFence } from './sql.js';

export function cleanupOperations(db: Db, metrics: Metrics) {
  return {
    /**
     * Claim leases whose cleanup is due (pending_cleanup, or expired with cleanup
     * pending) for one worker: their next_cleanup_at moves `claimSeconds` ahead so
     * another worker skips them until then.
     */
    async claimDueCleanups(opts: { limit?: number; claimSeconds?: number } = {}): Promise<Lease[]> {
      const rows = await queryRows(
        db,
        sql`UPDATE environment_leases l SET next_cleanup_at = now() + make_interval(secs => ${opts.claimSeconds ?? 60})
            WHERE l.id IN (SELECT id FROM environment_leases WHERE next_cleanup_at <= now() AND resource_id IS NULL
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
      if (row.changed) {
        metrics.cleanupAttempt('lease', ok, !ok && Boolean(row.gave_up_or_done));
        return lease;
      }
      if (lease.fence !== attempt.fence) {
        throw staleFence(leaseId, lease.fence, attempt.fence, lease.status);
      }
      throw new BerthError('conflict', `lease ${leaseId} owes no cleanup (status ${lease.status}, cleanup ${lease.cleanupStatus ?? 'none'})`);
    },
  };
}
