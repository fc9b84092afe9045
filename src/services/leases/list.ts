// Reads: one lease, an environment's leases keyset-paged, active counts per environment.
import { sql, type SQL } from 'drizzle-orm';
import { queryRows, type Db } from '../../db/client.js';
import { toLease } from '../../db/rows.js';
import { notFound, requireId } from '../../domain/errors.js';
import type { Lease, Page } from '../../domain/types.js';
import { listLeasesSchema, parseInput } from '../../domain/validators.js';
import { cursorTimestamp, decodeCursor, encodeCursor } from '../cursor.js';
import { getRow } from './sql.js';

export function listOperations(db: Db) {
  return {
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
      return toLease(await getRow(db, companyId, leaseId));
    },

    /** Leases of one environment, most recently used first, keyset-paged. */
    async listByEnvironment(
      companyId: string,
      environmentId: string,
      filter: { status?: string; limit?: number; cursor?: string } = {},
    ): Promise<Page<Lease>> {
      requireId(environmentId, 'environment');
      const f = parseInput(listLeasesSchema, filter, 'lease filter');
      // A warm pool's placeholder leases (status pooled) are the server's bookkeeping, not leases anyone holds.
      const conds: SQL[] = [sql`environment_id = ${environmentId}`, sql`company_id = ${companyId}`, sql`status <> 'pooled'`];
      if (f.status) conds.push(sql`status = ${f.status}`);
      if (f.cursor) {
        const [ts, id] = decodeCursor(f.cursor, 'lease filter');
        conds.push(sql`(last_used_at, id) < (${ts}::timestamptz, ${id}::uuid)`);
      }
      const rows = await queryRows(
        db,
        sql`SELECT *, ${cursorTimestamp('last_used_at')} AS cursor_ts FROM environment_leases
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
}
