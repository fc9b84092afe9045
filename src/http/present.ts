// What the API shows of an object. Secrets (an environment's envVars values, its
// driver's secret config, a process agent's env, an http agent's headers) are already
// shown by name only by the services' reads (src/secrets/config.ts lists them).
import type { Agent, Environment } from '../domain/types.js';

export function presentEnvironment(env: Environment, activeLeases?: number): Record<string, unknown> {
  return { ...env, ...(activeLeases !== undefined ? { activeLeases } : {}) };
}

export function presentAgent(agent: Agent): Record<string, unknown> {
  return { ...agent };
}
