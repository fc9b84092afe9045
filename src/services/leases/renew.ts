// Renew: a holder extends its lease, never past the lease's maxExpiresAt.
import { sql } from 'drizzle-orm';
import { runStatement, type Db } from '../../db/client.js';
import { toLease } from '../../db/rows.js';
import { requireId } from '../../domain/errors.js';
import type { Lease } from '../../domain/types.js';
import { parseInput, renewLeaseSchema, type RenewLeaseInput } from '../../domain/validators.js';
import { P, refusal } from './sql.js';

export function renewOperations(db: Db) {
  return {
    /** Extend expiresAt to now + ttl (database clock), never past the lease's maxExpiresAt. */
    async renew(companyId: string, leaseId: string, input: RenewLeaseInput): Promise<Lease> {
      requireId(leaseId, 'lease');
      const v = parseInput(renewLeaseSchema, input, 'lease renew');
      const [row] = await runStatement(db, 'lease.renew', () => sql`UPDATE environment_leases SET
              expires_at = LEAST(now() + make_interval(secs => ${P('ttl')}), max_expires_at),
              renew_count = renew_count + 1, last_renewed_at = now(), last_used_at = now(), updated_at = now()
            WHERE id = ${P('leaseId')} AND company_id = ${P('companyId')} AND fence = ${P('fence')} AND status = 'active'
              AND (expires_at IS NULL OR expires_at > now())
            RETURNING *`, { ttl: v.ttlSeconds, leaseId, companyId, fence: v.fence });
      if (row) return toLease(row);
      return refusal(db, companyId, leaseId, v.fence, ['active']);
    },
  };
}
