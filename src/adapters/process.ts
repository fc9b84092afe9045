// The `process` adapter: runs the agent's command through the environment's driver,
// with the PAPERCLIP_* contract, a timeout, and cancel: SIGTERM to the whole tree,
// SIGKILL after graceSec.
import { processAdapterSchema } from '../domain/agents.js';
import type { RunOutcome } from '../services/runs.js';
import type { AdapterContext, AgentAdapter } from './types.js';

/** Only these variables pass from the server's own environment: never its secrets. */
const INHERITED = ['PATH', 'HOME', 'USER', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'SHELL'];

export function runEnvironment(ctx: AdapterContext, agentEnv: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  // A remote host has its own PATH, HOME...: this server's would be wrong there.
  if (!ctx.driver.remote) for (const k of INHERITED) if (process.env[k] !== undefined) env[k] = process.env[k]!;
  Object.assign(env, ctx.environment.envVars, agentEnv, {
    PAPERCLIP_AGENT_ID: ctx.agent.id,
    PAPERCLIP_COMPANY_ID: ctx.agent.companyId,
    PAPERCLIP_RUN_ID: ctx.run.id,
    PAPERCLIP_API_URL: ctx.apiUrl,
    PAPERCLIP_API_KEY: ctx.token,
    PAPERCLIP_LEASE_ID: ctx.lease.id,
    PAPERCLIP_ENVIRONMENT_ID: ctx.environment.id,
    PAPERCLIP_WORKSPACE: ctx.workspace.cwd,
  });
  return env;
}

export const processAdapter: AgentAdapter = {
  type: 'process',
  async execute(ctx): Promise<RunOutcome> {
    const cfg = processAdapterSchema.parse(ctx.agent.adapterConfig);
    const proc = ctx.driver.startProcess(
      ctx.environment,
      { command: cfg.command, args: cfg.args, cwd: ctx.workspace.cwd, env: runEnvironment(ctx, cfg.env) },
      (stream, text) => ctx.log(stream, text),
    );
    // A remote pid means nothing on this host: recovery must never signal it here.
    void proc.spawned.then((pid) => {
      if (pid === null) return;
      if (ctx.driver.remote) void ctx.log('system', `started: remote pid ${pid}\n`);
      else ctx.onPid(pid);
    });
    let stoppedFor: 'timeout' | 'cancel' | 'lease_lost' | null = null;
    let killTimer: NodeJS.Timeout | undefined;
    const stop = (why: 'timeout' | 'cancel' | 'lease_lost') => {
      if (stoppedFor) return;
      stoppedFor = why;
      ctx.log('system', `stopping (${why}): SIGTERM to the process tree, SIGKILL in ${cfg.graceSec}s\n`);
      proc.kill('SIGTERM');
      killTimer = setTimeout(() => proc.kill('SIGKILL'), cfg.graceSec * 1000);
    };
    const timeout = setTimeout(() => stop('timeout'), cfg.timeoutSec * 1000);
    const onAbort = () => stop(ctx.abort.reason === 'lease_lost' ? 'lease_lost' : 'cancel');
    if (ctx.abort.aborted) onAbort();
    else ctx.abort.addEventListener('abort', onAbort, { once: true });
    const exit = await proc.exited;
    clearTimeout(timeout);
    clearTimeout(killTimer);
    ctx.abort.removeEventListener('abort', onAbort);

    const base = { exitCode: exit.exitCode, signal: exit.signal };
    if (exit.error && !stoppedFor) return { status: 'failed', ...base, error: exit.error, errorCode: exit.errorCode ?? 'process_lost' };
    if (exit.spawnError) return { status: 'failed', ...base, error: `could not start ${cfg.command}: ${exit.spawnError}`, errorCode: 'spawn_failed' };
    if (stoppedFor === 'timeout') return { status: 'timed_out', ...base, error: `timed out after ${cfg.timeoutSec}s`, errorCode: 'timeout' };
    if (stoppedFor === 'cancel') return { status: 'cancelled', ...base, error: 'cancelled', errorCode: 'cancelled' };
    if (stoppedFor === 'lease_lost') return { status: 'failed', ...base, error: 'the run lost its environment lease', errorCode: 'lease_lost' };
    if (exit.exitCode === 0) return { status: 'succeeded', ...base };
    const why = exit.signal ? `killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
    return { status: 'failed', ...base, error: `${cfg.command} ${why}`, errorCode: 'process_failed' };
  },
};
