// The server heartbeat and the runtime's due-check in one statement: an idle server
// commits this one statement per heartbeat and nothing else, instead of one statement per
// sweep per second. Each flag says whether one sweep has anything to do; the runtime runs
// the sweeps that do at once and skips the others. The conditions mirror the sweeps'
// own (leases.expireDue, leases.claimDueCleanups, runs.finalizeLostRuns,
// runs.invokeDueTimers, runs.claimNext, runs.cancelRequested) and use the same partial
// indexes; a flag that is wrong costs one sweep that finds nothing, never a missed one,
// as long as each condition here is no narrower than its sweep's.
import { sql } from 'drizzle-orm';
import { runStatement, textArrayLiteral, type Db } from '../db/client.js';

export interface DueCheck {
  /** A queued run is claimable (its agent has a free slot, its not_before has passed). */
  claimable: boolean;
  /** An active lease is past expiresAt, or a retained one past retainUntil. */
  leases: boolean;
  /** A lease's cleanup is due. */
  cleanups: boolean;
  /** A run is `running` on a server that is gone (not this one). */
  lostRuns: boolean;
  /** An agent's timer is due. */
  timers: boolean;
  /** A run running here has a cancel asked for. */
  cancels: boolean;
  /** Runs are `running` here (the orphan sweep has something to look at). */
  ownRunning: boolean;
}

export function dueService(db: Db) {
  return {
    /** Record this server's heartbeat and return what is due, in one statement. */
    async heartbeat(serverId: string, opts: { staleSeconds: number; drivers?: readonly string[] }): Promise<DueCheck> {
      const P = (name: string) => sql.placeholder(name);
      const [row] = await runStatement<Record<string, boolean>>(
        db,
        'due.heartbeat',
        () => sql`-- The update runs whether or not the select reads it.
          WITH beat AS (UPDATE berth_servers SET heartbeat_at = now() WHERE id = ${P('server')} RETURNING id)
          SELECT
            EXISTS (SELECT 1 FROM heartbeat_runs r JOIN agents a ON a.id = r.agent_id
                    WHERE r.status = 'queued' AND a.running_count < a.max_concurrent_runs
                      AND (r.not_before IS NULL OR r.not_before <= now())) AS claimable,
            EXISTS (SELECT 1 FROM environment_leases WHERE status = 'active' AND expires_at <= now())
              OR EXISTS (SELECT 1 FROM environment_leases WHERE status = 'retained' AND retain_until <= now()) AS leases,
            (EXISTS (SELECT 1 FROM environment_leases WHERE next_cleanup_at <= now())
             -- Resources only of drivers this server has: what it cannot destroy is not its work.
             OR EXISTS (SELECT 1 FROM provider_resources WHERE status = 'destroying' AND next_attempt_at <= now() AND driver = ANY (${P('drivers')}::text[]))
             OR EXISTS (SELECT 1 FROM provider_resources WHERE status = 'draining' AND destroy_after <= now() AND driver = ANY (${P('drivers')}::text[]))) AS cleanups,
            EXISTS (SELECT 1 FROM heartbeat_runs r
                    WHERE r.status = 'running' AND r.server_id IS DISTINCT FROM ${P('server')}
                      AND NOT EXISTS (SELECT 1 FROM berth_servers s WHERE s.id = r.server_id AND s.stopped_at IS NULL
                                      AND s.heartbeat_at > now() - make_interval(secs => ${P('stale')}::float8))) AS lost_runs,
            EXISTS (SELECT 1 FROM agents a
                    WHERE a.interval_sec IS NOT NULL AND a.status = 'active'
                      AND (a.last_timer_at IS NULL OR a.last_timer_at <= now() - make_interval(secs => a.interval_sec))
                      AND NOT EXISTS (SELECT 1 FROM heartbeat_runs r WHERE r.agent_id = a.id AND r.status = 'queued')) AS timers,
            EXISTS (SELECT 1 FROM heartbeat_runs WHERE status = 'running' AND server_id = ${P('server')} AND cancel_requested_at IS NOT NULL) AS cancels,
            EXISTS (SELECT 1 FROM heartbeat_runs WHERE status = 'running' AND server_id = ${P('server')}) AS own_running`,
        { server: serverId, stale: opts.staleSeconds, drivers: textArrayLiteral(opts.drivers ?? []) },
      );
      const r = row ?? {};
      return {
        claimable: r.claimable === true,
        leases: r.leases === true,
        cleanups: r.cleanups === true,
        lostRuns: r.lost_runs === true,
        timers: r.timers === true,
        cancels: r.cancels === true,
        ownRunning: r.own_running === true,
      };
    },
  };
}
