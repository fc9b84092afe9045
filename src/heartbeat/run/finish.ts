// Step `finish`: what the run made is destroyed (unless its lease keeps it: retain on
// failure), and then, in one transaction retried until the database takes it, its lease
// released per its outcome (pending_cleanup when the destroy failed: resource GC retries
// it), any other lease it took released too, the destroy attempt recorded on the resource,
// and the run's own status written. A run never stays `running` because one commit failed.
import { leaseStatusForRunOutcome } from '../../domain/enums.js';
import { BerthError } from '../../domain/errors.js';
import { storableText } from '../../domain/text.js';
import type { HeartbeatRun } from '../../domain/types.js';
import type { Services } from '../../services/index.js';
import { sleep, withDeadline, type RunState } from './context.js';

/** Destroy what the run's driver made, now, with a deadline; returns what happened (never throws). */
async function destroyNow(st: RunState): Promise<{ ok: boolean; error?: string; done?: Record<string, unknown> } | null> {
  if (!st.lease || !st.driver || !st.resource || !st.environment) return null;
  const stop = new AbortController();
  try {
    const done = await withDeadline(st.driver.destroy(st.environment, st.resource, stop.signal), st.deps.cleanupTimeoutMs ?? 120_000, 'cleanup_timeout', 'cleanup', stop);
    return { ok: true, done: { ...done } };
  } catch (err) {
    const error = storableText((err as Error).message);
    void st.log.write('system', `environment cleanup failed (will be retried): ${error}\n`);
    return { ok: false, error };
  }
}

/** Stop what runs in a kept resource, with a deadline (never throws: a failure is logged, the resource is kept either way). */
async function suspendNow(st: RunState): Promise<void> {
  if (!st.driver?.suspend || !st.resource || !st.environment) return;
  const stop = new AbortController();
  try {
    await withDeadline(st.driver.suspend(st.environment, st.resource, stop.signal), st.deps.cleanupTimeoutMs ?? 120_000, 'cleanup_timeout', 'stopping the kept resource', stop);
  } catch (err) {
    void st.log.write('system', `could not stop the kept resource: ${storableText((err as Error).message)}\n`);
  }
}

export async function finish(st: RunState): Promise<HeartbeatRun | null> {
  const { deps, run, outcome } = st;
  await st.callback?.close().catch(() => {});
  st.callback = null;
  if (st.handedOff) {
    // Its log and output offset written, its lease left active for the server that adopts it.
    st.keepalive?.stop();
    void st.log.write('system', `handed over: server ${deps.serverId} stopped while the run went on; the next server resumes it\n`);
    await st.log.flush();
    return null;
  }
  const lease = st.lease;
  // A process started but never watched to its end (the run failed right after exec):
  // killed before anything else, so it cannot outlive its run.
  if (st.execution && !st.exited && st.driver && st.environment) {
    await st.driver.signal(st.environment, st.execution, 'KILL').catch((err: unknown) => void st.log.write('system', `could not stop the process: ${storableText((err as Error).message)}\n`));
  }
  // retain_on_failure keeps a failed run's resources for inspection, reuse_by_environment a
  // finished run's for the next run, until the lease's retention deadline: no destroy now,
  // but what runs there is stopped (a container is left stopped, not removed).
  const requested = leaseStatusForRunOutcome(outcome.status);
  const retained = !st.taken && lease !== null &&
    ((lease.leasePolicy === 'retain_on_failure' && requested === 'failed') || (lease.leasePolicy === 'reuse_by_environment' && requested === 'released'));
  if (retained) await suspendNow(st);
  // Null when nothing was reserved (the run failed before its lease): nothing to destroy.
  const destroyed = retained ? null : await destroyNow(st);
  st.keepalive?.stop();
  await st.log.flush();

  if (st.waitFor !== null) {
    // The environment is full (or the workspace busy): the run goes back to the queue
    // and is tried again, instead of failing for want of a slot.
    await deps.services.runs.requeue(run.id, deps.serverId, { delaySeconds: deps.requeueDelaySeconds ?? 2, reason: st.waitFor });
    return null;
  }

  const leaseStatus = requested;
  const failureReason = outcome.error ? { failureReason: storableText(outcome.error).slice(0, 4000) } : {};
  const cleanupStatus = retained || destroyed === null ? {} : { cleanupStatus: destroyed.ok ? ('success' as const) : ('failed' as const) };
  const resourceId = st.resource?.resourceId ?? lease?.resourceId ?? null;
  const steps = (ts: Services): Array<() => Promise<unknown> | null> => [
    () => lease && ts.leases.release(run.companyId, lease.id, { fence: lease.fence, status: leaseStatus, ...failureReason, ...cleanupStatus }, st.actor),
    () => ts.leases.releaseForRun(run.companyId, run.id, { status: leaseStatus, ...failureReason }, st.actor),
    () => (destroyed && resourceId ? ts.resources.recordDestroyAttempt(resourceId, destroyed) : null),
  ];
  const deadline = Date.now() + (deps.finalizeRetryMs ?? 600_000);
  for (let attempt = 0; ; attempt++) {
    try {
      try {
        return await deps.transact(async (ts) => {
          for (const step of steps(ts)) await step();
          return ts.runs.finalize(run.id, outcome, { serverId: deps.serverId });
        });
      } catch (err) {
        // A step the database refused for good (the lease moved on, say): take each on its
        // own, so the run still ends. Anything else (the database is away) is tried again.
        if (!(err instanceof BerthError)) throw err;
        for (const step of steps(deps.services)) await Promise.resolve().then(() => step()).catch(() => {});
        return await deps.services.runs.finalize(run.id, outcome, { serverId: deps.serverId });
      }
    } catch (err) {
      if (Date.now() >= deadline) throw err;
      await sleep(Math.min(250 * 2 ** attempt, 5_000));
    }
  }
}
