// What the API shows of an object. Values that may hold secrets (an environment's
// envVars, a process agent's env, an http agent's headers) are shown by name only.
import type { Agent, Environment } from '../domain/types.js';

export function presentEnvironment(env: Environment, activeLeases?: number): Record<string, unknown> {
  const { envVars, ...rest } = env;
  return { ...rest, envVarNames: Object.keys(envVars).sort(), ...(activeLeases !== undefined ? { activeLeases } : {}) };
}

export function presentAgent(agent: Agent): Record<string, unknown> {
  const cfg = { ...agent.adapterConfig };
  if (cfg.env && typeof cfg.env === 'object') {
    cfg.envNames = Object.keys(cfg.env as object).sort();
    delete cfg.env;
  }
  if (cfg.headers && typeof cfg.headers === 'object') {
    cfg.headerNames = Object.keys(cfg.headers as object).sort();
    delete cfg.headers;
  }
  return { ...agent, adapterConfig: cfg };
}
