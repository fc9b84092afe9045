// What the API shows of an object. Secrets (an environment's envVars values, its
// driver's secret config, a process agent's env, an http agent's headers) are already
// shown by name only by the services' reads (src/secrets/config.ts lists them).
import type { Agent, Environment } from '../domain/types.js';
import type { PoolState } from '../services/pools/index.js';

/** `poolState`: what its warm pool holds now (size, ready, provisioning, claimed, refill failures), when it has one. */
export function presentEnvironment(env: Environment, activeLeases?: number, poolState?: PoolState): Record<string, unknown> {
  return { ...env, pool: env.pool ?? null, ...(activeLeases !== undefined ? { activeLeases } : {}), ...(poolState ? { poolState } : {}) };
}

export function presentAgent(agent: Agent): Record<string, unknown> {
  return { ...agent };
}
