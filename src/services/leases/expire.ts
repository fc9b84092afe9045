// Expiry: the sweep (leases past expiresAt or retainUntil) and the expiry of one
// workspace holder that is gone, through one statement over a CTE of due ids.
import { sql, type SQL } from 'drizzle-orm';
import { runStatement, type Db } from '../../db/client.js';
import { toLease } from '../../db/rows.js';
import { ACTIONS } from '../../domain/enums.js';
import { SYSTEM_ACTOR, type Lease } from '../../domain/types.js';
import { secondsBetween, type ExpiryKind, type Metrics } from '../../metrics/index.js';
import { recordLeaseEnd } from './ended.js';
import { cleanupOwedSql, EXPIRE_BATCH, resourceFollowsLeaseSql, holderIsStaleSql, leaseActivity, P } from './sql.js';

/** The compiled variants of the expire statement, one per way of choosing the due leases. */
type ExpireVariant = 'lease.expire.due' | 'lease.expire.staleHolder';

export function expireOperations(db: Db, metrics: Metrics) {
  /**
   * End the leases `due` selects (a CTE named `due` of ids, locked, with `kind`: why, and
   * `due_at`: when it was due) as expired, with one activity row each: past expiresAt, past
   * retainUntil (retained), or held for a run that has ended. What a driver made for them is
   * owed its cleanup.
   */
  async function expire(variant: ExpireVariant, due: () => SQL, values: Record<string, unknown>): Promise<Lease[]> {
    const rows = await runStatement(db, variant, () => sql`WITH ${due()},
          changed AS (
            UPDATE environment_leases l SET
              failure_reason = coalesce(l.failure_reason, CASE
                WHEN l.status = 'retained' THEN 'retention ended: its resources are cleaned up'
                WHEN l.expires_at IS NOT NULL AND l.expires_at <= now() THEN 'lease expired: not renewed before its expiresAt'
                ELSE 'lease expired: its run has ended' END),
              status = 'expired', released_at = now(), updated_at = now(), retain_until = NULL,
              cleanup_status = CASE WHEN ${cleanupOwedSql('l')} THEN 'pending' END,
              next_cleanup_at = CASE WHEN ${cleanupOwedSql('l')} AND l.resource_id IS NULL THEN now() END
            FROM due WHERE l.id = due.id
            RETURNING l.*, due.kind AS expired_kind, due.due_at AS expired_due_at),
          res AS (${resourceFollowsLeaseSql('changed')}),
          act AS (${leaseActivity(
            'changed',
            SYSTEM_ACTOR,
            ACTIONS.leaseExpired,
            sql`jsonb_build_object('environmentId', changed.environment_id, 'fence', changed.fence, 'status', changed.status,
                  'expiresAt', changed.expires_at, 'lateByMs', round(extract(epoch FROM now() - changed.expires_at) * 1000),
                  'cleanupStatus', changed.cleanup_status, 'reason', changed.failure_reason)`,
          )})
          SELECT * FROM changed`, values);
    return rows.map((row) => {
      const lease = toLease(row);
      const dueAt = row.expired_due_at == null ? null : new Date(row.expired_due_at as string);
      metrics.leaseExpired(String(row.expired_kind) as ExpiryKind, secondsBetween(dueAt, lease.releasedAt));
      recordLeaseEnd(metrics, lease);
      return lease;
    });
  }

  return {
    /** The sweep: active leases past expiresAt and retained ones past retainUntil, oldest first, `limit` of each. */
    expireDue(opts: { limit?: number } = {}): Promise<Lease[]> {
      return expire('lease.expire.due', () => sql`due_active AS (
            SELECT id, 'ttl'::text AS kind, expires_at AS due_at FROM environment_leases
            WHERE status = 'active' AND expires_at <= now()
            ORDER BY expires_at LIMIT ${P('limit')}
            FOR UPDATE SKIP LOCKED),
          due_retained AS (
            SELECT id, 'retention'::text AS kind, retain_until AS due_at FROM environment_leases
            WHERE status = 'retained' AND retain_until <= now()
            ORDER BY retain_until LIMIT ${P('limit')}
            FOR UPDATE SKIP LOCKED),
          due AS (SELECT * FROM due_active UNION ALL SELECT * FROM due_retained)`, { limit: opts.limit ?? EXPIRE_BATCH });
    },

    /** Expire one active lease whose holder is gone (holderIsStaleSql, re-checked under the row lock). */
    async expireStaleHolder(leaseId: string): Promise<void> {
      await expire('lease.expire.staleHolder', () => sql`due AS (
            SELECT id, 'holder_gone'::text AS kind, NULL::timestamptz AS due_at FROM environment_leases l WHERE l.id = ${P('leaseId')} AND l.status = 'active' AND ${holderIsStaleSql('l')}
            FOR UPDATE SKIP LOCKED)`, { leaseId });
    },
  };
}
export type ExpireOperations = ReturnType<typeof expireOperations>;
