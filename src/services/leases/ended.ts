// What the metrics learn when a lease ends, wherever it ends (release, a run's end, expiry).
import type { Lease } from '../../domain/types.js';
import { secondsBetween, type Metrics } from '../../metrics/index.js';

/**
 * A lease that ended (to anything but retained: a retained lease ends later, when it is
 * released or its retention runs out), for the metrics: its lifetime from its grant.
 */
export function recordLeaseEnd(metrics: Metrics, lease: Lease): void {
  if (lease.status === 'retained' || lease.status === 'active') return;
  metrics.leaseEnded(lease.status, secondsBetween(lease.acquiredAt, lease.releasedAt));
}
