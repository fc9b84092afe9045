// Keeps a run's lease alive: renews every ttl/3 from the moment it is granted until its
// cleanup is done. A renewal that fails for a passing reason (a connection reset, a busy
// pool, the database restarting) is retried; only the database's word that the lease is no
// longer this run's (stale fence, not active, expired, gone) stops the run.
import { isBerthError } from '../../domain/errors.js';

/** The refusals that mean the lease is lost for good; anything else is worth another try. */
export const LEASE_LOST_CODES = ['stale_fence', 'lease_not_active', 'lease_expired', 'not_found'] as const;

export function isLeaseLost(err: unknown): boolean {
  return LEASE_LOST_CODES.some((code) => isBerthError(err, code));
}

export interface KeepAlive {
  /** Stop renewing (after cleanup). */
  stop(): void;
}

export function keepLeaseAlive(opts: {
  renew: () => Promise<unknown>;
  everyMs: number;
  /** After a passing failure, try again this soon (never later than everyMs). */
  retryMs?: number;
  onLost: (err: unknown) => void;
  onTransient: (err: unknown, failuresInARow: number) => void;
}): KeepAlive {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let failures = 0;
  const schedule = (ms: number) => {
    if (!stopped) timer = setTimeout(tick, ms);
  };
  const tick = () => {
    opts.renew().then(
      () => {
        failures = 0;
        schedule(opts.everyMs);
      },
      (err: unknown) => {
        if (stopped) return;
        if (isLeaseLost(err)) {
          stopped = true;
          opts.onLost(err);
          return;
        }
        failures += 1;
        opts.onTransient(err, failures);
        schedule(Math.min(opts.retryMs ?? 1000, opts.everyMs));
      },
    );
  };
  schedule(opts.everyMs);
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
