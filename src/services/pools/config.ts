// A warm pool's rules that the environment service applies to a create or a change: which
// drivers may have one, and how it fits the capacity. Plus the one statement that retires
// idle members (shared by the refill and by a capacity change).
import { sql, type SQL } from 'drizzle-orm';
import { queryRows, type Db } from '../../db/client.js';
import { descriptorOf } from '../../drivers/descriptors.js';
import { BerthError } from '../../domain/errors.js';
import type { PoolConfig } from '../../domain/validators.js';

/**
 * Refuse a pool its driver cannot keep (descriptor capability `pool`), or whose minReady the
 * capacity has no room for (members count toward the capacity): errors name the field.
 */
export function checkPool(driver: string, pool: PoolConfig | null, capacity: number | null): void {
  if (pool === null) return;
  const d = descriptorOf(driver);
  if (!d?.capabilities.pool) {
    throw new BerthError('invalid', `invalid environment: pool: driver "${driver}" cannot keep a warm pool (its resources cannot be made ahead of a lease)`, {
      fields: [{ path: 'pool', message: `driver "${driver}" does not support pools` }],
    });
  }
  if (capacity !== null && pool.minReady > capacity) {
    throw new BerthError('invalid', `invalid environment: pool.minReady: must be at most the capacity (${capacity}): pool members count toward it`, {
      fields: [{ path: 'pool.minReady', message: `must be at most the capacity (${capacity})` }],
    });
  }
}

/**
 * Retire the idle pool members `victims` (an SQL query of provider_resources ids, locked by
 * the caller's FOR UPDATE SKIP LOCKED): each member's placeholder lease is deleted (it was
 * never anyone's) and the resource is owed a destroy (resource GC does it). Returns the ids.
 * Claimed members are never here: a claim turns the placeholder into an active lease.
 */
export function retireSql(victims: SQL): SQL {
  return sql`WITH victims AS (${victims}),
      dropped AS (
        DELETE FROM environment_leases l USING victims v, provider_resources p
        WHERE p.id = v.id AND l.id = p.lease_id AND l.status = 'pooled'
        RETURNING l.id),
      retired AS (
        UPDATE provider_resources p SET status = 'destroying', next_attempt_at = now(), lease_id = NULL, updated_at = now()
        FROM victims v WHERE p.id = v.id AND p.pool_member AND p.status IN ('provisioning', 'ready')
        RETURNING p.id)
      SELECT retired.id FROM retired`;
}

/**
 * A capacity change's part (in its transaction, after FOR UPDATE on the environment row): the
 * idle members that `capacity` has no room for beside the active leases are retired, newest
 * first, so every idle member and active lease keeps a place below it.
 */
export async function retireExcessPoolMembers(tx: Db, environmentId: string, capacity: number): Promise<void> {
  await queryRows(
    tx,
    retireSql(sql`SELECT p.id FROM provider_resources p
        WHERE p.id IN (
          SELECT m.id FROM (
            SELECT p2.id, row_number() OVER (ORDER BY p2.created_at DESC, p2.id) AS rn
            FROM provider_resources p2 JOIN environment_leases l ON l.id = p2.lease_id AND l.status = 'pooled'
            WHERE p2.environment_id = ${environmentId} AND p2.pool_member AND p2.status IN ('provisioning', 'ready')) m
          WHERE m.rn <= greatest(0,
            (SELECT count(*) FROM environment_leases c WHERE c.environment_id = ${environmentId} AND c.status IN ('active', 'pooled')) - ${capacity}))
        FOR UPDATE OF p`),
  );
}
