// The `process` adapter: the agent's command, args and env with the PAPERCLIP_* contract
// (src/domain/paperclip.ts lists it),
// and its limits (timeoutSec; graceSec between SIGTERM and SIGKILL). The executor starts it
// through the environment's driver and enforces the limits (heartbeat/run/watch.ts).
import { processAdapterSchema } from '../domain/agents.js';
import { wakeVariables } from '../domain/paperclip.js';
import type { Agent } from '../domain/types.js';
import type { AdapterContext, ProcessAdapter } from './types.js';

/** Only these variables pass from the server's own environment: never its secrets. */
const INHERITED = ['PATH', 'HOME', 'USER', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'SHELL'];

/** What a process on this server's host takes from the server's own environment (nothing where the driver runs it elsewhere). */
export function inheritedVariables(hostLocal: boolean): Record<string, string> {
  const env: Record<string, string> = {};
  if (hostLocal) for (const k of INHERITED) if (process.env[k] !== undefined) env[k] = process.env[k]!;
  return env;
}

export function runEnvironment(ctx: Omit<AdapterContext, 'log' | 'abort'>, agentEnv: Record<string, string>): Record<string, string> {
  // Another host (or a container) has its own PATH, HOME...: this server's would be wrong there.
  const env = inheritedVariables(ctx.driver.capabilities.hostLocal);
  // The wake context's variables (task, reason...) come before the run's own: an invocation cannot set those.
  Object.assign(env, ctx.environment.envVars, agentEnv, wakeVariables(ctx.run.contextSnapshot), {
    PAPERCLIP_AGENT_ID: ctx.agent.id,
    PAPERCLIP_COMPANY_ID: ctx.agent.companyId,
    PAPERCLIP_RUN_ID: ctx.run.id,
    PAPERCLIP_API_URL: ctx.apiUrl,
    PAPERCLIP_RUNTIME_API_URL: ctx.apiUrl,
    PAPERCLIP_API_KEY: ctx.token,
    PAPERCLIP_LEASE_ID: ctx.lease.id,
    PAPERCLIP_ENVIRONMENT_ID: ctx.environment.id,
    PAPERCLIP_WORKSPACE: ctx.workspace.cwd,
  });
  return env;
}

function limitsOf(agent: Agent): { timeoutSec: number; graceSec: number } {
  const cfg = processAdapterSchema.parse(agent.adapterConfig);
  return { timeoutSec: cfg.timeoutSec, graceSec: cfg.graceSec };
}

export const processAdapter: ProcessAdapter = {
  type: 'process',
  kind: 'process',
  plan(ctx) {
    const cfg = processAdapterSchema.parse(ctx.agent.adapterConfig);
    return {
      // The remote side's own deadline (where a driver enforces one): past its timeout and
      // grace the process dies even if no server is left to stop it.
      spec: { command: cfg.command, args: cfg.args, cwd: ctx.workspace.cwd, env: runEnvironment(ctx, cfg.env), deadlineSec: Math.ceil(cfg.timeoutSec + cfg.graceSec) + 60 },
      timeoutSec: cfg.timeoutSec,
      graceSec: cfg.graceSec,
    };
  },
  limits: limitsOf,
};
