// Leases: one run's claim on an environment. The database enforces every
// guarantee of SPEC ("What a lease guarantees"):
//  - state machine: each change names the statuses it may leave in its WHERE
//    clause, on a row it has locked, so a terminal lease is never changed;
//  - capacity: each active lease of a capacity-limited environment holds a slot
//    below the capacity, and a partial unique index admits one active lease per
//    (environment, slot); an acquire is one statement that takes a free slot
//    under FOR KEY SHARE on the environment row (acquires do not wait for each
//    other), and capacity changes take FOR UPDATE, which orders them against
//    acquires, then move leases into the slots below the new capacity;
//  - single-flight and idempotency: partial unique indexes, ON CONFLICT DO NOTHING;
//  - fencing: every grant takes nextval of one sequence;
//  - audit: the activity row is written by the same statement as the change.
// One operation per file here; the fragments they share are in sql.ts. The hot
// statements run as compiled variants (runStatement), each under a name saying
// what it is (lease.acquire.new.ttl, lease.release.cleanup-owed...).
import type { Db } from '../../db/client.js';
import { isBerthError } from '../../domain/errors.js';
import type { Metrics } from '../../metrics/index.js';
import { recordLeaseEnd } from './ended.js';
import { acquireOperations } from './acquire.js';
import { cleanupOperations } from './cleanup.js';
import { expireOperations } from './expire.js';
import { listOperations } from './list.js';
import { metadataOperations } from './metadata.js';
import { releaseOperations } from './release.js';
import { renewOperations } from './renew.js';

export type { AcquireResult, LeaseOwner } from './acquire.js';
export type { WarmMember } from './claim.js';
export type { ReleaseResult } from './release.js';
export { DEFAULT_CLEANUP_MAX_ATTEMPTS, DEFAULT_RETENTION_SECONDS, EXPIRE_BATCH } from './sql.js';

export function leaseService(db: Db, metrics: Metrics) {
  const expiry = expireOperations(db, metrics);
  const { acquire } = acquireOperations(db, expiry);
  const { release, releaseForRun } = releaseOperations(db);
  return {
    /**
     * Acquire a lease on an environment. Idempotent per idempotency key; a run that
     * already holds an active lease on the environment gets that lease back.
     */
    async acquire(...args: Parameters<typeof acquire>): ReturnType<typeof acquire> {
      const started = performance.now();
      try {
        const r = await acquire(...args);
        metrics.leaseAcquired(!r.created ? 'existing' : r.reacquired ? 'reacquired' : 'granted', (performance.now() - started) / 1000);
        if (r.created && r.warm !== undefined) metrics.poolClaim(r.warm);
        return r;
      } catch (err) {
        const reason = isBerthError(err) ? err.code : 'error';
        metrics.leaseRefused(reason, (performance.now() - started) / 1000);
        throw err;
      }
    },
    ...renewOperations(db),
    ...metadataOperations(db),
    async release(...args: Parameters<typeof release>): ReturnType<typeof release> {
      const r = await release(...args);
      if (r.changed) recordLeaseEnd(metrics, r.lease);
      return r;
    },
    async releaseForRun(...args: Parameters<typeof releaseForRun>): ReturnType<typeof releaseForRun> {
      const ended = await releaseForRun(...args);
      for (const lease of ended) recordLeaseEnd(metrics, lease);
      return ended;
    },
    /** The sweep: active leases past expiresAt and retained ones past retainUntil, oldest first, `limit` of each. */
    expireDue: expiry.expireDue,
    ...cleanupOperations(db, metrics),
    ...listOperations(db),
  };
}
export type LeaseService = ReturnType<typeof leaseService>;
