// Step `place`: choose where the run executes and reserve it. The environment is reached
// first (a pooled SSH connection), outside any transaction, so a slow or unreachable host
// fails the run before any lease exists. Then one statement grants the lease and writes
// its resource record (the write-ahead record): from here a crash leaves rows a sweep
// finds, never a provider object no row knows about.
import { storableText } from '../../domain/text.js';
import { keepLeaseAlive } from './keepalive.js';
import type { RunState } from './context.js';

/**
 * The lease policy a run takes on an environment (its metadata's `leasePolicy`):
 * `ephemeral` (the default: what the run made is destroyed at its end),
 * `retain_on_failure` (a failed run's resources are kept until the retention deadline), or
 * `reuse_by_environment` (a run's resources are kept, stopped, after it ends and the next
 * run on the environment gets them back, while the environment's config is unchanged).
 * `reuse_by_execution_workspace` needs an execution workspace, which runs do not have: refused.
 */
export function runLeasePolicy(envMetadata: Record<string, unknown>): 'ephemeral' | 'retain_on_failure' | 'reuse_by_environment' {
  const p = envMetadata.leasePolicy;
  if (p === undefined || p === 'ephemeral') return 'ephemeral';
  if (p === 'retain_on_failure' || p === 'reuse_by_environment') return p;
  throw Object.assign(new Error(`environment metadata.leasePolicy ${JSON.stringify(p)} is not a policy runs can take: use "ephemeral", "retain_on_failure" or "reuse_by_environment"`), {
    code: 'invalid_lease_policy',
  });
}

export async function place(st: RunState): Promise<void> {
  const { deps, run } = st;
  const s = deps.services;
  // Its clear env and headers: the adapter hands them to the run (they are sealed at rest).
  const agent = await s.agents.getWithSecrets(run.companyId, run.agentId);
  const adapter = deps.adapters.get(agent.adapterType);
  if (!adapter) throw Object.assign(new Error(`no adapter for type "${agent.adapterType}"`), { code: 'no_adapter' });
  const envId = agent.defaultEnvironmentId ?? (await s.environments.ensureLocalEnvironment(run.companyId, st.actor)).id;
  const env = await s.environments.getWithSecrets(run.companyId, envId);
  const drv = deps.drivers.get(env.driver);
  if (!drv) throw Object.assign(new Error(`no driver for environment driver "${env.driver}"`), { code: 'no_driver' });
  st.agent = agent;
  st.adapter = adapter;
  st.environment = env;
  st.driver = drv;
  if (drv.connect) await drv.connect(env, st.abort.signal);

  // A warm pool's members are made without an agent's own working directory: an agent that names one is always cold.
  const pooled = env.pool != null && drv.capabilities.pool && typeof agent.adapterConfig.cwd !== 'string';
  const { lease, member, reacquired } = await s.leases.acquire(
    run.companyId,
    { environmentId: envId, heartbeatRunId: run.id, ttlSeconds: deps.leaseTtlSeconds, policy: runLeasePolicy(env.metadata), idempotencyKey: `run:${run.id}` },
    st.actor,
    { driver: drv.kind, reserveResource: true, ...(pooled ? { warm: true } : {}) },
  );
  st.lease = lease;
  st.reacquired = reacquired;
  if (pooled) {
    st.pooled = true;
    deps.wakePools?.();
  }
  // Destroyable from here on, even if provision never returns: destroy is idempotent and finds what it made by this id.
  if (member) {
    st.warm = member;
    st.resource = { resourceId: member.resourceId, providerId: member.providerId, state: member.state };
  } else if (lease.resourceId) st.resource = { resourceId: lease.resourceId, providerId: null, state: {} };
  keepAlive(st);
  await deps.onPhase?.('reserved', run);
}

/** Renew the run's lease from now until its resources are destroyed: a slow provision or destroy never lets it expire. */
export function keepAlive(st: RunState): void {
  const held = st.lease!;
  const { deps, run, log } = st;
  let lastTransient = 0;
  st.keepalive = keepLeaseAlive({
    renew: () => deps.services.leases.renew(run.companyId, held.id, { fence: held.fence, ttlSeconds: deps.leaseTtlSeconds }),
    everyMs: (deps.leaseTtlSeconds * 1000) / 3,
    onLost: (err) => {
      void log.write('system', `lease ${held.id} is no longer this run's: ${(err as Error).message}\n`);
      st.abort.abort('lease_lost');
    },
    onTransient: (err, n) => {
      if (n === 1 || Date.now() - lastTransient > 30_000) void log.write('system', `lease renewal failed (retrying): ${storableText((err as Error).message)}\n`);
      lastTransient = Date.now();
    },
  });
}
