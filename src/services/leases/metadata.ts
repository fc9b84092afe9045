// The caller's metadata of a lease: free-form, never read by the server to decide anything
// (what a driver made is recorded by resources.activate, on the lease's resource).
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from '../../db/client.js';
import { toLease } from '../../db/rows.js';
import { requireId } from '../../domain/errors.js';
import type { Lease } from '../../domain/types.js';
import { parseInput, updateLeaseMetadataSchema, type UpdateLeaseMetadataInput } from '../../domain/validators.js';
import { refusal } from './sql.js';

export function metadataOperations(db: Db) {
  return {
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
      return refusal(db, companyId, leaseId, v.fence, ['active', 'retained', 'pending_cleanup']);
    },
  };
}
