// One run, step for step (SPEC, "Heartbeat runs"): choose the environment, acquire a
// lease (the driver that will own its resources recorded with it), keep the lease alive,
// prepare the workspace outside any transaction, record it and paperclipEnvironment, run
// the adapter, and finalize in a `finally` that nothing skips: the driver's cleanup done
// (or handed to the sweep), leases released per the outcome, the run's status written,
// retried until the database takes it.
import { leaseStatusForRunOutcome } from '../domain/enums.js';
import { BerthError, isBerthError } from '../domain/errors.js';
import { storableText } from '../domain/text.js';
import type { Actor, HeartbeatRun, Lease } from '../domain/types.js';
import type { AgentAdapter } from '../adapters/types.js';
import type { CallbackRoute, DriverEnvironment, DriverRegistry, EnvironmentDriver, PreparedWorkspace } from '../drivers/contract.js';
import type { Services } from '../services/index.js';
import { newRunToken, type RunOutcome } from '../services/runs.js';
import { keepLeaseAlive, type KeepAlive } from './keepalive.js';
import { RunLogWriter } from './log-writer.js';
import { processIdentity } from './process-identity.js';

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
  logLimitChars?: number;
  /** How long a run waits in the queue when its environment is full. */
  requeueDelaySeconds?: number;
  /** A driver's prepareWorkspace that takes longer fails the run (default 300 s). */
  prepareTimeoutMs?: number;
  /** A driver's cleanup that takes longer counts as failed and is retried by the sweep (default 120 s). */
  cleanupTimeoutMs?: number;
  /** How long the end of a run keeps trying to write it when the database refuses (default 10 min). */
  finalizeRetryMs?: number;
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

/** `work`, or a rejection with `code` once `ms` have passed (the work itself is not stopped). */
export function withDeadline<T>(work: Promise<T>, ms: number, code: string, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`${what} did not finish within ${Math.round(ms / 1000)}s`), { code })), ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A run the executor had claimed was finalized by another server meanwhile (recovery): it must not start. */
class RunTakenError extends Error {
  readonly code = 'run_finalized_elsewhere';
}

export async function executeRun(deps: ExecutorDeps, run: HeartbeatRun, abort: AbortController): Promise<HeartbeatRun | null> {
  const { services: s, transact } = deps;
  const token = newRunToken();
  const actor: Actor = { type: 'run', id: run.id };
  const log = new RunLogWriter(s.runs, run.id, deps.logLimitChars !== undefined ? { limitChars: deps.logLimitChars } : {});
  let outcome: RunOutcome = { status: 'failed', error: 'the executor stopped before the run finished', errorCode: 'internal' };
  let lease: Lease | null = null;
  let environment: DriverEnvironment | null = null;
  let driver: EnvironmentDriver | undefined;
  let keepalive: KeepAlive | undefined;
  let callback: CallbackRoute | null = null;
  let cleanupError: string | null = null;
  let retained = false;
  /** Set when the run cannot start yet: why it waits. */
  let waitFor: string | null = null;
  let taken = false;
  try {
    // Step 1: choose the environment and take the lease. The environment is reached first
    // (a pooled SSH connection), outside any transaction: a slow or unreachable host fails
    // the run without holding the database.
    // Its clear env and headers: the adapter hands them to the run (they are sealed at rest).
    const agent = await s.agents.getWithSecrets(run.companyId, run.agentId);
    const adapter = deps.adapters.get(agent.adapterType);
    if (!adapter) throw Object.assign(new Error(`no adapter for type "${agent.adapterType}"`), { code: 'no_adapter' });
    const envId = agent.defaultEnvironmentId ?? (await s.environments.ensureLocalEnvironment(run.companyId, actor)).id;
    const env = await s.environments.getWithSecrets(run.companyId, envId);
    const drv = deps.drivers.get(env.driver);
    if (!drv) throw Object.assign(new Error(`no driver for environment driver "${env.driver}"`), { code: 'no_driver' });
    environment = env;
    driver = drv;
    if (drv.connect) await drv.connect(env);
    // The lease row names its driver before the driver makes anything: a crash from here on
    // leaves a lease the sweep cleans up, never a workspace no row knows about.
    const { lease: granted } = await s.leases.acquire(
      run.companyId,
      { environmentId: envId, heartbeatRunId: run.id, ttlSeconds: deps.leaseTtlSeconds, policy: runLeasePolicy(env.metadata), idempotencyKey: `run:${run.id}` },
      actor,
      { driver: drv.driver },
    );
    lease = granted;
    const held = granted;
    // Renewed from now until cleanup is done: a slow prepare or cleanup never lets it expire.
    let lastTransient = 0;
    keepalive = keepLeaseAlive({
      renew: () => s.leases.renew(run.companyId, held.id, { fence: held.fence, ttlSeconds: deps.leaseTtlSeconds }),
      everyMs: (deps.leaseTtlSeconds * 1000) / 3,
      onLost: (err) => {
        log.write('system', `lease ${held.id} is no longer this run's: ${(err as Error).message}\n`);
        abort.abort('lease_lost');
      },
      onTransient: (err, n) => {
        if (n === 1 || Date.now() - lastTransient > 30_000) log.write('system', `lease renewal failed (retrying): ${storableText((err as Error).message)}\n`);
        lastTransient = Date.now();
      },
    });

    // Step 2: the workspace, outside any transaction, with a deadline.
    const cwd = typeof agent.adapterConfig.cwd === 'string' ? agent.adapterConfig.cwd : undefined;
    const workspace: PreparedWorkspace = await withDeadline(
      drv.prepareWorkspace(env, granted, cwd ? { cwd } : {}),
      deps.prepareTimeoutMs ?? 300_000,
      'prepare_timeout',
      `preparing the workspace on ${env.name}`,
    );

    // Step 3, one short transaction: what the driver made (server-owned state, never the
    // caller's metadata) and the run's start. A run another server finalized meanwhile
    // (recovery) is not started.
    const paperclipEnvironment = { id: env.id, name: env.name, driver: env.driver, leaseId: granted.id, fence: granted.fence, ...workspace.details };
    const providerLeaseId = typeof workspace.details.providerLeaseId === 'string' ? { providerLeaseId: workspace.details.providerLeaseId } : {};
    lease = await transact(async (ts) => {
      const withState = await ts.leases.recordDriverState(run.companyId, granted.id, granted.fence, { driverState: workspace.details, ...providerLeaseId });
      const started = await ts.runs.recordStart(run.id, deps.serverId, { environmentId: env.id, leaseId: granted.id, token, paperclipEnvironment });
      if (!started) throw new RunTakenError(`run ${run.id} was finalized by another server before it started`);
      return withState;
    });

    // The run's way back to the server, per driver (a reverse tunnel for SSH), undone in the
    // finally. Only a process runs inside the environment; an http call leaves from here.
    if (drv.callbackUrl && adapter.type === 'process') {
      callback = await drv.callbackUrl(env, { publicUrl: deps.apiUrl, ...(deps.localUrl ? { localUrl: deps.localUrl } : {}) });
    }

    // Step 4: the adapter, unless the run was cancelled (or lost its lease) while it got ready.
    const started = { ...run, contextSnapshot: { ...run.contextSnapshot, paperclipEnvironment } };
    if (abort.signal.aborted) {
      outcome = abort.signal.reason === 'lease_lost'
        ? { status: 'failed', error: 'the run lost its environment lease before it started', errorCode: 'lease_lost' }
        : { status: 'cancelled', error: 'cancelled before its process started', errorCode: 'cancelled' };
    } else outcome = await adapter.execute({
      run: started,
      agent,
      environment: env,
      driver: drv,
      lease,
      workspace: { ...workspace, details: paperclipEnvironment },
      apiUrl: callback?.url ?? deps.apiUrl,
      token,
      log: (stream, text) => log.write(stream, text),
      abort: abort.signal,
      onPid: (pid) => {
        // The pid and who it is (boot, namespace, start time), so recovery can never hit a reused pid.
        const identity = processIdentity(pid);
        s.runs.recordPid(run.id, deps.serverId, pid, identity).then(
          (ok) => {
            if (!ok) {
              log.write('system', 'the run was finalized elsewhere while starting: stopping its process\n');
              abort.abort('cancel');
            }
          },
          () => {},
        );
      },
    });
  } catch (err) {
    if (err instanceof RunTakenError) {
      taken = true;
      outcome = { status: 'failed', error: err.message, errorCode: 'process_lost' };
    } else if (lease === null && !abort.signal.aborted && (isBerthError(err, 'capacity_exhausted') || isBerthError(err, 'workspace_busy'))) {
      waitFor = err.message;
    } else {
      const code = (err as { code?: unknown }).code;
      const message = storableText((err as Error).message);
      outcome = { status: 'failed', error: message, errorCode: typeof code === 'string' ? code : 'executor_error' };
      log.write('system', `run failed before it finished: ${message}\n`);
    }
  } finally {
    await callback?.close().catch(() => {});
    // retain_on_failure keeps a failed run's resources for inspection until the lease's
    // retention deadline: no cleanup now.
    retained = !taken && lease !== null && lease.leasePolicy === 'retain_on_failure' && leaseStatusForRunOutcome(outcome.status) === 'failed';
    if (lease && driver && !retained) {
      try {
        await withDeadline(driver.cleanup(environment, lease), deps.cleanupTimeoutMs ?? 120_000, 'cleanup_timeout', 'cleanup');
      } catch (err) {
        cleanupError = storableText((err as Error).message);
        log.write('system', `environment cleanup failed (will be retried): ${cleanupError}\n`);
      }
    }
    keepalive?.stop();
    await log.flush();
  }
  if (waitFor !== null) {
    // The environment is full (or the workspace busy): the run goes back to the queue
    // and is tried again, instead of failing for want of a slot.
    await s.runs.requeue(run.id, deps.serverId, { delaySeconds: deps.requeueDelaySeconds ?? 2, reason: waitFor });
    return null;
  }
  return finishRun(deps, run, outcome, lease, { actor, retained, cleanupError });
}

/**
 * Step 5, in one transaction: the run's lease released per its outcome (pending_cleanup if
 * the driver could not clean up), any other lease it took released too, and the run's own
 * status written. Retried while the database refuses (a restart, a lost connection), for up
 * to finalizeRetryMs: a run never stays `running` because one commit failed.
 */
async function finishRun(
  deps: ExecutorDeps,
  run: HeartbeatRun,
  outcome: RunOutcome,
  lease: Lease | null,
  o: { actor: Actor; retained: boolean; cleanupError: string | null },
): Promise<HeartbeatRun | null> {
  const leaseStatus = leaseStatusForRunOutcome(outcome.status);
  const failureReason = outcome.error ? { failureReason: storableText(outcome.error).slice(0, 4000) } : {};
  const cleanupStatus = o.retained ? {} : { cleanupStatus: o.cleanupError ? ('failed' as const) : ('success' as const) };
  const steps = (ts: Services): Array<() => Promise<unknown> | null> => [
    () => lease && ts.leases.release(run.companyId, lease.id, { fence: lease.fence, status: leaseStatus, ...failureReason, ...cleanupStatus }, o.actor),
    () => ts.leases.releaseForRun(run.companyId, run.id, { status: leaseStatus, ...failureReason }, o.actor),
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
