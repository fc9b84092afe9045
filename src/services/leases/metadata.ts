// What is written on a lease besides its state: the caller's metadata, and the
// executor's record of what the lease's driver made.
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
      return refusal(db, companyId, leaseId, fence, ['active']);
    },
  };
}
