// Release: one lease by its holder (fenced), or every active lease of a run that ended.
import { sql } from 'drizzle-orm';
import { runStatement, type Db } from '../../db/client.js';
import { toLease } from '../../db/rows.js';
import { ACTIONS, type TerminalLeaseStatus } from '../../domain/enums.js';
import { requireId } from '../../domain/errors.js';
import { SYSTEM_ACTOR, type Actor, type Lease } from '../../domain/types.js';
import { parseInput, releaseLeaseSchema, type ReleaseLeaseInput } from '../../domain/validators.js';
import {
  ACTOR_PLACEHOLDERS,
  cleanupBackoffSql,
  cleanupOwedSql,
  getRow,
  leaseActivity,
  P,
  releaseDetails,
  resourceFollowsLeaseSql,
  releasedStatusSql,
  retainUntilSql,
  staleFence,
} from './sql.js';

export interface ReleaseResult {
  lease: Lease;
  /** False when the lease was already released: its final state is returned unchanged. */
  changed: boolean;
}

/**
 * The compiled variants of a release, by the caller's cleanupStatus: none (`owed`: the
 * lease owes a cleanup when a driver made resources), `failed` (pending_cleanup, retried),
 * `pending`, or `given` (success or skipped, written as given).
 */
type ReleaseVariant = 'lease.release.cleanup-owed' | 'lease.release.cleanup-failed' | 'lease.release.cleanup-pending' | 'lease.release.cleanup-given';

function releaseVariant(cleanupStatus: ReleaseLeaseInput['cleanupStatus']): ReleaseVariant {
  if (cleanupStatus === undefined) return 'lease.release.cleanup-owed';
  if (cleanupStatus === 'failed') return 'lease.release.cleanup-failed';
  if (cleanupStatus === 'pending') return 'lease.release.cleanup-pending';
  return 'lease.release.cleanup-given';
}

export function releaseOperations(db: Db) {
  return {
    /**
     * End a lease: released, expired or failed (retained where its policy keeps
     * resources, until its retention deadline). `cleanupStatus: 'failed'` means the
     * driver could not clean up: the lease goes to pending_cleanup and is retried;
     * `success` that the caller cleaned up; `skipped` that the resources are to be
     * left as they are. Without one, a lease whose driver made resources owes their
     * cleanup (pending: the sweep does it), a retained lease's too. Releasing a lease
     * that has already ended changes nothing and returns its final state.
     */
    async release(companyId: string, leaseId: string, input: ReleaseLeaseInput, actor: Actor = SYSTEM_ACTOR): Promise<ReleaseResult> {
      requireId(leaseId, 'lease');
      const v = parseInput(releaseLeaseSchema, input, 'lease release');
      const variant = releaseVariant(v.cleanupStatus);
      // No explicit row lock: the UPDATE's WHERE names the statuses it may leave and is
      // re-checked against the newest row version if another release got there first.
      const [row] = await runStatement(db, variant, () => {
        const cleanupFailed = variant === 'lease.release.cleanup-failed';
        const owedKind = variant === 'lease.release.cleanup-owed';
        const requested = sql`${P('status')}::text`;
        const next = releasedStatusSql('l', requested);
        // Unsaid, cleanup is owed when the lease ends (not when it becomes retained) and a driver made resources.
        const owed = sql`(${cleanupOwedSql('l')} AND ${next} <> 'retained')`;
        return sql`WITH changed AS (
              UPDATE environment_leases l SET
                status = ${cleanupFailed ? sql`'pending_cleanup'` : next},
                release_status = ${cleanupFailed ? requested : sql`NULL`},
                cleanup_status = ${owedKind ? sql`CASE WHEN ${owed} THEN 'pending' END` : sql`${P('cleanupStatus')}::text`},
                cleanup_attempts = ${cleanupFailed ? sql`l.cleanup_attempts + 1` : sql`l.cleanup_attempts`},
                -- A lease with a resource record leaves the retries to resource GC (the resource's own schedule).
                next_cleanup_at = CASE WHEN l.resource_id IS NOT NULL THEN NULL ELSE ${cleanupFailed
                  ? sql`now() + ${cleanupBackoffSql(sql`1`)}`
                  : variant === 'lease.release.cleanup-pending' ? sql`now()` : owedKind ? sql`CASE WHEN ${owed} THEN now() END` : sql`NULL`} END::timestamptz,
                retain_until = ${cleanupFailed ? sql`NULL` : sql`CASE WHEN ${next} = 'retained' THEN ${retainUntilSql('l')} END`},
                failure_reason = coalesce(${P('failureReason')}, l.failure_reason),
                released_at = now(), last_used_at = now(), updated_at = now()
              WHERE l.id = ${P('leaseId')} AND l.company_id = ${P('companyId')} AND l.fence = ${P('fence')}
                AND l.status IN ('active', 'retained')
              RETURNING l.*),
            res AS (${resourceFollowsLeaseSql('changed')}),
            act AS (${leaseActivity('changed', ACTOR_PLACEHOLDERS, ACTIONS.leaseReleased, releaseDetails('changed'))})
            SELECT * FROM changed`;
      }, {
        status: v.status,
        cleanupStatus: v.cleanupStatus ?? null,
        failureReason: v.failureReason ?? null,
        leaseId,
        companyId,
        fence: v.fence,
        actorType: actor.type,
        actorId: actor.id,
      });
      if (row) return { lease: toLease(row), changed: true };
      // Not applied: a fresh read (this statement's snapshot is newer than any release
      // that beat us) tells why, or returns the final state.
      const current = toLease(await getRow(db, companyId, leaseId));
      if (current.fence !== v.fence) {
        throw staleFence(leaseId, current.fence, v.fence, current.status);
      }
      return { lease: current, changed: false };
    },

    /**
     * Finalize a run: release every active lease it holds, with one activity row each;
     * those a driver made resources for owe their cleanup (the sweep does it).
     */
    async releaseForRun(
      companyId: string,
      runId: string,
      outcome: { status: TerminalLeaseStatus; failureReason?: string },
      actor: Actor = SYSTEM_ACTOR,
    ): Promise<Lease[]> {
      requireId(runId, 'run');
      const v = parseInput(releaseLeaseSchema.omit({ fence: true, cleanupStatus: true }), outcome, 'run release');
      const rows = await runStatement(db, 'lease.releaseForRun', () => {
        const requested = sql`${P('status')}::text`;
        const next = releasedStatusSql('l', requested);
        // What a driver made for the lease is cleaned up by the sweep, unless the lease is retained.
        const owed = sql`(${cleanupOwedSql('l')} AND ${next} <> 'retained')`;
        return sql`WITH changed AS (
              UPDATE environment_leases l SET status = ${next},
                failure_reason = coalesce(${P('failureReason')}, l.failure_reason),
                cleanup_status = CASE WHEN ${owed} THEN 'pending' END,
                next_cleanup_at = CASE WHEN ${owed} AND l.resource_id IS NULL THEN now() END,
                retain_until = CASE WHEN ${next} = 'retained' THEN ${retainUntilSql('l')} END,
                released_at = now(), last_used_at = now(), updated_at = now()
              WHERE l.company_id = ${P('companyId')} AND l.heartbeat_run_id = ${P('runId')} AND l.status = 'active'
              RETURNING l.*),
            res AS (${resourceFollowsLeaseSql('changed')}),
            act AS (${leaseActivity('changed', ACTOR_PLACEHOLDERS, ACTIONS.leaseReleased, releaseDetails('changed'))})
            SELECT * FROM changed`;
      }, {
        status: v.status,
        failureReason: v.failureReason ?? null,
        companyId,
        runId,
        actorType: actor.type,
        actorId: actor.id,
      });
      return rows.map(toLease);
    },
  };
}
