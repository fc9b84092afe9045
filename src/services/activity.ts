// The audit trail: the SQL fragment every state change uses to write its row in
// the same statement, and the paged, filtered listing.
import { sql, type Placeholder, type SQL } from 'drizzle-orm';
import { queryRows, type Db } from '../db/client.js';
import { toActivity } from '../db/rows.js';
import type { Actor, ActivityEntry } from '../domain/types.js';
import { listActivitySchema, parseInput } from '../domain/validators.js';

export const LEASE_ENTITY = 'environment_lease';
export const ENVIRONMENT_ENTITY = 'environment';

/**
 * `INSERT INTO activity_log ... SELECT ... FROM <source>`: one row per row of a
 * CTE, written in the statement that made the change. `details` is SQL over the
 * source's columns (usually jsonb_build_object).
 */
/** An actor, or placeholders standing for one in a compiled statement. */
export type ActorSql = Actor | { type: Placeholder; id: Placeholder };

export function activityFrom(opts: {
  source: string;
  actor: ActorSql;
  action: SQL | string;
  entityType: string;
  entityId: SQL;
  runId: SQL;
  details: SQL;
  companyId?: SQL;
}): SQL {
  const action = typeof opts.action === 'string' ? sql`${opts.action}` : opts.action;
  return sql`INSERT INTO activity_log (company_id, actor_type, actor_id, action, entity_type, entity_id, run_id, details)
    SELECT ${opts.companyId ?? sql.raw(`${opts.source}.company_id`)}, ${opts.actor.type}, ${opts.actor.id}, ${action},
           ${opts.entityType}, ${opts.entityId}, ${opts.runId}, ${opts.details}
    FROM ${sql.raw(opts.source)}`;
}

export interface ActivityFilter {
  entityType?: string;
  entityId?: string;
  runId?: string;
  action?: string;
  limit?: number;
  /** Rows older than this id. */
  before?: number;
}

export function activityService(db: Db) {
  return {
    /** Newest first; page with `before = nextBefore`. */
    async list(companyId: string, filter: ActivityFilter = {}): Promise<{ items: ActivityEntry[]; nextBefore: number | null }> {
      const f = parseInput(listActivitySchema, filter, 'activity filter');
      const conds: SQL[] = [sql`company_id = ${companyId}`];
      if (f.entityType !== undefined) conds.push(sql`entity_type = ${f.entityType}`);
      if (f.entityId !== undefined) conds.push(sql`entity_id = ${f.entityId}`);
      if (f.runId !== undefined) conds.push(sql`run_id = ${f.runId}`);
      if (f.action !== undefined) conds.push(sql`action = ${f.action}`);
      if (f.before !== undefined) conds.push(sql`id < ${f.before}`);
      const rows = await queryRows(
        db,
        sql`SELECT * FROM activity_log WHERE ${sql.join(conds, sql` AND `)} ORDER BY id DESC LIMIT ${f.limit + 1}`,
      );
      const items = rows.slice(0, f.limit).map(toActivity);
      const last = items[items.length - 1];
      return { items, nextBefore: rows.length > f.limit && last ? last.id : null };
    },

    /** Rows newer than `afterId`, oldest first: what a live feed has not seen yet. */
    async since(companyId: string, afterId: number, limit = 200): Promise<ActivityEntry[]> {
      const rows = await queryRows(
        db,
        sql`SELECT * FROM activity_log WHERE company_id = ${companyId} AND id > ${afterId} ORDER BY id LIMIT ${Math.min(Math.max(limit, 1), 1000)}`,
      );
      return rows.map(toActivity);
    },

    /** A run's rows (its own and its leases'), oldest first, after `afterId`: the run's events. */
    async ofRun(companyId: string, runId: string, afterId = 0, limit = 200): Promise<ActivityEntry[]> {
      const rows = await queryRows(
        db,
        sql`SELECT * FROM activity_log WHERE company_id = ${companyId} AND run_id = ${runId} AND id > ${afterId}
            ORDER BY id LIMIT ${Math.min(Math.max(limit, 1), 1000)}`,
      );
      return rows.map(toActivity);
    },

    /** The newest activity id of a company (0 when it has none). */
    async latestId(companyId: string): Promise<number> {
      const [row] = await queryRows<{ id: string | null }>(db, sql`SELECT max(id) AS id FROM activity_log WHERE company_id = ${companyId}`);
      return row?.id ? Number(row.id) : 0;
    },
  };
}
export type ActivityService = ReturnType<typeof activityService>;
