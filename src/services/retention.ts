// What old rows the server deletes, and when: servers gone for a day (always), and, when
// the operator asks for it, the logs of runs that ended long ago and old activity rows.
// Each prune deletes at most `batch` rows per call, so one call never holds the tables long.
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from '../db/client.js';

export interface RetentionPolicy {
  /** Rows of servers stopped (or silent) this long ago are deleted; runs never point at a row they need. Default 1 day. */
  serverSeconds?: number;
  /** Log chunks of runs that finished this long ago are deleted (the run row stays). Off when unset. */
  runLogSeconds?: number | null;
  /** Activity rows older than this are deleted. Off when unset: the audit log is kept forever by default. */
  activitySeconds?: number | null;
  batch?: number;
}

export const DEFAULT_SERVER_RETENTION_SECONDS = 86_400;

/** The policy from BERTH_RUN_LOG_RETENTION_DAYS and BERTH_ACTIVITY_RETENTION_DAYS (unset or 0: kept forever). */
export function retentionFromEnv(env: NodeJS.ProcessEnv = process.env): RetentionPolicy {
  const days = (name: string): number | null => {
    const raw = env[name];
    if (raw === undefined || raw.trim() === '' || raw.trim() === '0') return null;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number of days (0 or unset: keep forever), not ${JSON.stringify(raw)}`);
    return n * 86_400;
  };
  return { runLogSeconds: days('BERTH_RUN_LOG_RETENTION_DAYS'), activitySeconds: days('BERTH_ACTIVITY_RETENTION_DAYS') };
}

export function retentionService(db: Db) {
  return {
    /** One pass: returns how many rows of each kind went. */
    async prune(policy: RetentionPolicy = {}): Promise<{ servers: number; runLogs: number; activity: number }> {
      const batch = policy.batch ?? 5_000;
      const servers = await queryRows(
        db,
        sql`DELETE FROM berth_servers WHERE id IN (
              SELECT s.id FROM berth_servers s
              WHERE coalesce(s.stopped_at, s.heartbeat_at) < now() - make_interval(secs => ${policy.serverSeconds ?? DEFAULT_SERVER_RETENTION_SECONDS})
                AND NOT EXISTS (SELECT 1 FROM heartbeat_runs r WHERE r.server_id = s.id AND r.status = 'running')
              LIMIT ${batch})
            RETURNING id`,
      );
      let runLogs = 0;
      if (policy.runLogSeconds) {
        const rows = await queryRows(
          db,
          sql`DELETE FROM heartbeat_run_logs l USING (
                SELECT l2.run_id, l2.seq FROM heartbeat_run_logs l2 JOIN heartbeat_runs r ON r.id = l2.run_id
                WHERE r.finished_at < now() - make_interval(secs => ${policy.runLogSeconds})
                LIMIT ${batch}) old
              WHERE l.run_id = old.run_id AND l.seq = old.seq
              RETURNING l.seq`,
        );
        runLogs = rows.length;
      }
      let activity = 0;
      if (policy.activitySeconds) {
        const rows = await queryRows(
          db,
          sql`DELETE FROM activity_log WHERE id IN (
                SELECT id FROM activity_log WHERE created_at < now() - make_interval(secs => ${policy.activitySeconds}) ORDER BY id LIMIT ${batch})
              RETURNING id`,
        );
        activity = rows.length;
      }
      return { servers: servers.length, runLogs, activity };
    },
  };
}
