// One run, step for step (SPEC, "Heartbeat runs"): choose the environment, acquire
// a lease and keep renewing it, write paperclipEnvironment, run the adapter, and
// finalize in a `finally` that nothing skips: leases released per the outcome,
// the driver's cleanup done or handed to the retry loop, the run's status written.
import { leaseStatusForRunOutcome } from '../domain/enums.js';
import { isBerthError } from '../domain/errors.js';
import type { Actor, HeartbeatRun, Lease } from '../domain/types.js';
import type { AgentAdapter } from '../adapters/types.js';
import type { CallbackRoute, DriverEnvironment, DriverRegistry, EnvironmentDriver } from '../drivers/types.js';
import type { Services } from '../services/index.js';
import { newRunToken, type RunOutcome } from '../services/runs.js';
import { RunLogWriter } from './log-writer.js';

export interface ExecutorDeps {
  services: Services;
  drivers: DriverRegistry;
  adapters: Map<string, AgentAdapter>;
  serverId: string;
  /** The server's public URL; a driver's callbackUrl may give a run another way to it. */
  apiUrl: string;
  /** Where this process reaches the API itself (the end of a driver's tunnel). */
  localUrl?: string;
  /** Lease ttl; the executor renews every ttl/3 while the run lives. */
  leaseTtlSeconds: number;
  /** Characters of output kept per run (default 16 Mi). */
  logLimitBytes?: number;
  /** How long a run waits in the queue when its environment is full. */
  requeueDelaySeconds?: number;
  /** Run several service calls in one transaction (one commit). */
  transact: <T>(f: (s: Services) => Promise<T>) => Promise<T>;
}

/**
 * The lease policy a run takes on an environment: `ephemeral`, or `retain_on_failure`
 * when the environment's metadata says `leasePolicy: "retain_on_failure"`. The reuse
 * policies hand a lease's resources to a later run, which runs do not do (yet): refused.
 */
export function runLeasePolicy(envMetadata: Record<string, unknown>): 'ephemeral' | 'retain_on_failure' {
  const p = envMetadata.leasePolicy;
  if (p === undefined || p === 'ephemeral') return 'ephemeral';
  if (p === 'retain_on_failure') return 'retain_on_failure';
  throw Object.assign(new Error(`environment metadata.leasePolicy ${JSON.stringify(p)} is not a policy runs can take: use "ephemeral" or "retain_on_failure"`), { code: 'invalid_lease_policy' });
}

export async function executeRun(deps: ExecutorDeps, run: HeartbeatRun, abort: AbortController): Promise<HeartbeatRun | null> {
  const { services: s } = deps;
  const token = newRunToken();
  const actor: Actor = { type: 'run', id: run.id };
  const log = new RunLogWriter(s.runs, run.id, deps.logLimitBytes !== undefined ? { limitBytes: deps.logLimitBytes } : {});
  let outcome: RunOutcome = { status: 'failed', error: 'the executor stopped before the run finished', errorCode: 'internal' };
  let lease: Lease | null = null;
  let environment: DriverEnvironment | null = null;
  let driver: EnvironmentDriver | undefined;
  let renewer: NodeJS.Timeout | undefined;
  let callback: CallbackRoute | null = null;
  let cleanupError: string | null = null;
  let retained = false;
  /** Set when the run cannot start yet: why it waits. */
  let waitFor: string | null = null;
  const { transact } = deps;
  try {
    // Steps 1 to 3 in one transaction: choose the environment, acquire the lease, make
    // its workspace, record it in the lease and the run. The lease commits (becomes
    // visible as active) only once its workspace exists; a driver that fails here
    // leaves no lease behind.
    const cfgCwd = (agentConfig: Record<string, unknown>) => (typeof agentConfig.cwd === 'string' ? agentConfig.cwd : undefined);
    // A remote environment is reached first, outside any transaction: a host that is slow
    // or down then fails the run without holding the database (PGlite has one session).
    // Only agents with a default environment can be on one; Local needs nothing.
    const agentFirst = await s.agents.get(run.companyId, run.agentId);
    if (agentFirst.defaultEnvironmentId) {
      const envFirst = await s.environments.getWithSecrets(run.companyId, agentFirst.defaultEnvironmentId).catch(() => null);
      const drvFirst = envFirst ? deps.drivers.get(envFirst.driver) : undefined;
      if (envFirst && drvFirst?.reach) await drvFirst.reach(envFirst);
    }
    const start = await transact(async (ts) => {
      const agent = await ts.agents.get(run.companyId, run.agentId);
      const adapter = deps.adapters.get(agent.adapterType);
      if (!adapter) throw Object.assign(new Error(`no adapter for type "${agent.adapterType}"`), { code: 'no_adapter' });
      const envId = agent.defaultEnvironmentId ?? (await ts.environments.ensureLocalEnvironment(run.companyId, actor)).id;
      const env = await ts.environments.getWithSecrets(run.companyId, envId);
      const drv = deps.drivers.get(env.driver);
      if (!drv) throw Object.assign(new Error(`no driver for environment driver "${env.driver}"`), { code: 'no_driver' });
      const { lease: granted } = await ts.leases.acquire(
        run.companyId,
        { environmentId: envId, heartbeatRunId: run.id, ttlSeconds: deps.leaseTtlSeconds, policy: runLeasePolicy(env.metadata), idempotencyKey: `run:${run.id}` },
        actor,
      );
      const cwd = cfgCwd(agent.adapterConfig);
      const workspace = await drv.prepareWorkspace(env, granted, cwd ? { cwd } : {});
      try {
        const paperclipEnvironment = { id: env.id, name: env.name, driver: env.driver, leaseId: granted.id, fence: granted.fence, ...workspace.details };
        const providerLeaseId = typeof workspace.details.providerLeaseId === 'string' ? { providerLeaseId: workspace.details.providerLeaseId } : {};
        const withWorkspace = await ts.leases.updateMetadata(run.companyId, granted.id, { fence: granted.fence, metadata: { ...workspace.details, preparedBy: drv.driver } }, providerLeaseId);
        await ts.runs.recordStart(run.id, { environmentId: env.id, leaseId: granted.id, token, paperclipEnvironment });
        return { agent, adapter, env, drv, lease: withWorkspace, workspace, paperclipEnvironment };
      } catch (err) {
        await drv.cleanup(env, { ...granted, metadata: { ...granted.metadata, ...workspace.details } }).catch(() => {});
        throw err;
      }
    });
    const { agent, adapter, workspace, paperclipEnvironment } = start;
    environment = start.env;
    driver = start.drv;
    lease = start.lease;
    const held = lease;
    renewer = setInterval(() => {
      s.leases.renew(run.companyId, held.id, { fence: held.fence, ttlSeconds: deps.leaseTtlSeconds }).catch((err: unknown) => {
        log.write('system', `lease renewal failed: ${(err as Error).message}\n`);
        abort.abort('lease_lost');
      });
    }, (deps.leaseTtlSeconds * 1000) / 3);

    // The run's way back to the server, per driver (a reverse tunnel for SSH), undone in the finally.
    if (driver.callbackUrl) callback = await driver.callbackUrl(environment, { publicUrl: deps.apiUrl, ...(deps.localUrl ? { localUrl: deps.localUrl } : {}) });
    const started = { ...run, contextSnapshot: { ...run.contextSnapshot, paperclipEnvironment } };
    outcome = await adapter.execute({
      run: started,
      agent,
      environment,
      driver,
      lease,
      workspace: { ...workspace, details: paperclipEnvironment },
      apiUrl: callback?.url ?? deps.apiUrl,
      token,
      log: (stream, text) => log.write(stream, text),
      abort: abort.signal,
      onPid: (pid) => void s.runs.recordPid(run.id, pid).catch(() => {}),
    });
  } catch (err) {
    if (lease === null && !abort.signal.aborted && (isBerthError(err, 'capacity_exhausted') || isBerthError(err, 'workspace_busy'))) {
      waitFor = err.message;
    } else {
      const code = (err as { code?: unknown }).code;
      outcome = { status: 'failed', error: (err as Error).message, errorCode: typeof code === 'string' ? code : 'executor_error' };
      log.write('system', `run failed before it finished: ${(err as Error).message}\n`);
    }
  } finally {
    clearInterval(renewer);
    await callback?.close();
    // retain_on_failure keeps a failed run's resources for inspection: no cleanup now
    // (the lease ends `retained`; releasing it later with cleanupStatus pending cleans up).
    retained = lease !== null && lease.leasePolicy === 'retain_on_failure' && leaseStatusForRunOutcome(outcome.status) === 'failed';
    if (lease && !retained) {
      try {
        await driver!.cleanup(environment, lease);
      } catch (err) {
        cleanupError = (err as Error).message;
        log.write('system', `environment cleanup failed (will be retried): ${cleanupError}\n`);
      }
    }
    await log.flush();
  }
  if (waitFor !== null) {
    // The environment is full (or the workspace busy): the run goes back to the queue
    // and is tried again, instead of failing for want of a slot.
    await s.runs.requeue(run.id, deps.serverId, { delaySeconds: deps.requeueDelaySeconds ?? 2, reason: waitFor });
    return null;
  }
  // Step 5 in one transaction: the run's lease released per its outcome (pending_cleanup
  // if the driver could not clean up), any other lease it took released too, and the
  // run's own status written.
  const leaseStatus = leaseStatusForRunOutcome(outcome.status);
  const failureReason = outcome.error ? { failureReason: outcome.error.slice(0, 4000) } : {};
  const endSteps = (ts: Services): Array<() => Promise<unknown> | null> => [
    () => lease && ts.leases.release(run.companyId, lease.id, { fence: lease.fence, status: leaseStatus, ...failureReason, ...(retained ? {} : { cleanupStatus: cleanupError ? 'failed' : 'success' }) }, actor),
    () => ts.leases.releaseForRun(run.companyId, run.id, { status: leaseStatus, ...failureReason }, actor, { cleanupPending: true }),
  ];
  try {
    return await transact(async (ts) => {
      for (const step of endSteps(ts)) await step();
      return ts.runs.finalize(run.id, outcome, { serverId: deps.serverId });
    });
  } catch {
    // A step refused (the lease moved on, say): take each on its own, so the run still ends.
    for (const step of endSteps(s)) await Promise.resolve().then(() => step()).catch(() => {});
    return s.runs.finalize(run.id, outcome, { serverId: deps.serverId });
  }
}
