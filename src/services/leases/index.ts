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
import { inSpan, recordSpan } from '../../tracing/index.js';
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
  const { renew } = renewOperations(db);
  const { recordCleanupAttempt, ...cleanup } = cleanupOperations(db, metrics);
  // Each operation is a span (src/tracing; nothing when tracing is off), its ids as attributes.
  return {
    /**
     * Acquire a lease on an environment. Idempotent per idempotency key; a run that
     * already holds an active lease on the environment gets that lease back.
     */
    async acquire(...args: Parameters<typeof acquire>): ReturnType<typeof acquire> {
      return inSpan('berth.lease.acquire', { 'berth.company.id': args[0] }, async (span) => {
        const started = performance.now();
        try {
          const r = await acquire(...args);
          const outcome = !r.created ? 'existing' : r.reacquired ? 'reacquired' : 'granted';
          metrics.leaseAcquired(outcome, (performance.now() - started) / 1000);
          if (r.created && r.warm !== undefined) metrics.poolClaim(r.warm);
          // What the database returned, not what the caller wrote: ids known to be ids.
          span.setAttributes({
            'berth.lease.id': r.lease.id,
            'berth.lease.fence': r.lease.fence,
            'berth.lease.outcome': outcome,
            ...(r.lease.environmentId ? { 'berth.environment.id': r.lease.environmentId } : {}),
            ...(r.lease.heartbeatRunId ? { 'berth.run.id': r.lease.heartbeatRunId } : {}),
            ...(r.warm !== undefined ? { 'berth.lease.warm': r.warm } : {}),
          });
          return r;
        } catch (err) {
          const reason = isBerthError(err) ? err.code : 'error';
          metrics.leaseRefused(reason, (performance.now() - started) / 1000);
          throw err;
        }
      });
    },
    renew(...args: Parameters<typeof renew>): ReturnType<typeof renew> {
      return inSpan('berth.lease.renew', { 'berth.company.id': args[0] }, async (span) => {
        const lease = await renew(...args);
        span.setAttribute('berth.lease.id', lease.id);
        return lease;
      });
    },
    ...metadataOperations(db),
    release(...args: Parameters<typeof release>): ReturnType<typeof release> {
      return inSpan('berth.lease.release', { 'berth.company.id': args[0] }, async (span) => {
        const r = await release(...args);
        if (r.changed) recordLeaseEnd(metrics, r.lease);
        span.setAttributes({ 'berth.lease.id': r.lease.id, 'berth.lease.status': r.lease.status, 'berth.lease.changed': r.changed });
        return r;
      });
    },
    releaseForRun(...args: Parameters<typeof releaseForRun>): ReturnType<typeof releaseForRun> {
      return inSpan('berth.lease.release', { 'berth.company.id': args[0], 'berth.run.id': args[1] }, async (span) => {
        const ended = await releaseForRun(...args);
        for (const lease of ended) recordLeaseEnd(metrics, lease);
        span.setAttribute('berth.lease.count', ended.length);
        return ended;
      });
    },
    /** The sweep: active leases past expiresAt and retained ones past retainUntil, oldest first, `limit` of each. */
    async expireDue(...args: Parameters<typeof expiry.expireDue>): ReturnType<typeof expiry.expireDue> {
      // A span only when the sweep expired something: an idle sweep (every few seconds) sends nothing.
      const started = performance.now();
      const expired = await expiry.expireDue(...args);
      if (expired.length > 0) recordSpan('berth.lease.expire', started, { 'berth.lease.count': expired.length, ...(expired.length === 1 ? { 'berth.lease.id': expired[0]!.id } : {}) });
      return expired;
    },
    ...cleanup,
    recordCleanupAttempt(...args: Parameters<typeof recordCleanupAttempt>): ReturnType<typeof recordCleanupAttempt> {
      return inSpan('berth.lease.cleanup', { 'berth.company.id': args[0], 'berth.cleanup.ok': args[2].ok }, async (span) => {
        const lease = await recordCleanupAttempt(...args);
        span.setAttributes({ 'berth.lease.id': lease.id, 'berth.lease.status': lease.status, 'berth.cleanup.attempts': lease.cleanupAttempts });
        return lease;
      });
    },
    ...listOperations(db),
  };
}
export type LeaseService = ReturnType<typeof leaseService>;
