// One run, step for step (SPEC, "Heartbeat runs"): choose the environment, acquire
// a lease and keep renewing it, write paperclipEnvironment, run the adapter, and
// finalize in a `finally` that nothing skips: leases released per the outcome,
// the driver's cleanup done or handed to the retry loop, the run's status written.
import { leaseStatusForRunOutcome } from '../domain/enums.js';
import type { Actor, HeartbeatRun, Lease } from '../domain/types.js';
import type { AgentAdapter } from '../adapters/types.js';
import type { DriverEnvironment, DriverRegistry, EnvironmentDriver } from '../drivers/types.js';
import type { Services } from '../services/index.js';
import { newRunToken, type RunOutcome } from '../services/runs.js';
import { RunLogWriter } from './log-writer.js';

export interface ExecutorDeps {
  services: Services;
  drivers: DriverRegistry;
  adapters: Map<string, AgentAdapter>;
  serverId: string;
  apiUrl: string;
  /** Lease ttl; the executor renews every ttl/3 while the run lives. */
  leaseTtlSeconds: number;
}

export async function executeRun(deps: ExecutorDeps, run: HeartbeatRun, abort: AbortController): Promise<HeartbeatRun | null> {
  const { services: s } = deps;
  const token = newRunToken();
  const actor: Actor = { type: 'run', id: run.id };
  const log = new RunLogWriter(s.runs, run.id);
  let outcome: RunOutcome = { status: 'failed', error: 'the executor stopped before the run finished', errorCode: 'internal' };
  let lease: Lease | null = null;
  let environment: DriverEnvironment | null = null;
  let driver: EnvironmentDriver | undefined;
  let renewer: NodeJS.Timeout | undefined;
  try {
    const agent = await s.agents.get(run.companyId, run.agentId);
    const adapter = deps.adapters.get(agent.adapterType);
    if (!adapter) throw Object.assign(new Error(`no adapter for type "${agent.adapterType}"`), { code: 'no_adapter' });
    const envId = agent.defaultEnvironmentId ?? (await s.environments.ensureLocalEnvironment(run.companyId, actor)).id;
    environment = await s.environments.getWithSecrets(run.companyId, envId);
    driver = deps.drivers.get(environment.driver);
    if (!driver) throw Object.assign(new Error(`no driver for environment driver "${environment.driver}"`), { code: 'no_driver' });

    ({ lease } = await s.leases.acquire(
      run.companyId,
      { environmentId: envId, heartbeatRunId: run.id, ttlSeconds: deps.leaseTtlSeconds, policy: 'ephemeral', idempotencyKey: `run:${run.id}` },
      actor,
    ));
    const held = lease;
    renewer = setInterval(() => {
      s.leases.renew(run.companyId, held.id, { fence: held.fence, ttlSeconds: deps.leaseTtlSeconds }).catch((err: unknown) => {
        log.write('system', `lease renewal failed: ${(err as Error).message}\n`);
        abort.abort('lease_lost');
      });
    }, (deps.leaseTtlSeconds * 1000) / 3);

    const cfgCwd = typeof agent.adapterConfig.cwd === 'string' ? agent.adapterConfig.cwd : undefined;
    const workspace = await driver.prepareWorkspace(environment, lease, cfgCwd ? { cwd: cfgCwd } : {});
    lease = await s.leases.updateMetadata(run.companyId, lease.id, { fence: lease.fence, metadata: workspace.details });
    const paperclipEnvironment = {
      id: environment.id,
      name: environment.name,
      driver: environment.driver,
      leaseId: lease.id,
      fence: lease.fence,
      ...workspace.details,
    };
    await s.runs.recordStart(run.id, { environmentId: environment.id, leaseId: lease.id, token, paperclipEnvironment });
    const started = { ...run, contextSnapshot: { ...run.contextSnapshot, paperclipEnvironment } };
    outcome = await adapter.execute({
      run: started,
      agent,
      environment,
      driver,
      lease,
      workspace: { ...workspace, details: paperclipEnvironment },
      apiUrl: deps.apiUrl,
      token,
      log: (stream, text) => log.write(stream, text),
      abort: abort.signal,
      onPid: (pid) => void s.runs.recordPid(run.id, pid).catch(() => {}),
    });
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    outcome = { status: 'failed', error: (err as Error).message, errorCode: typeof code === 'string' ? code : 'executor_error' };
    log.write('system', `run failed before it finished: ${(err as Error).message}\n`);
  } finally {
    clearInterval(renewer);
    if (lease) {
      let cleanupError: string | null = null;
      try {
        await driver!.cleanup(environment, lease);
      } catch (err) {
        cleanupError = (err as Error).message;
        log.write('system', `environment cleanup failed (will be retried): ${cleanupError}\n`);
      }
      await s.leases
        .release(run.companyId, lease.id, {
          fence: lease.fence,
          status: leaseStatusForRunOutcome(outcome.status),
          ...(outcome.error ? { failureReason: outcome.error.slice(0, 4000) } : {}),
          cleanupStatus: cleanupError ? 'failed' : 'success',
        }, actor)
        .catch((err: unknown) => log.write('system', `lease release failed: ${(err as Error).message}\n`));
    }
    // Any other lease the run took (through the API, with its token) ends with it.
    await s.leases
      .releaseForRun(run.companyId, run.id, { status: leaseStatusForRunOutcome(outcome.status), ...(outcome.error ? { failureReason: outcome.error.slice(0, 4000) } : {}) }, actor, { cleanupPending: true })
      .catch(() => {});
    await log.flush();
  }
  return s.runs.finalize(run.id, outcome, { serverId: deps.serverId });
}
