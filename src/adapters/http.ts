// The `http` adapter: posts the run's context to the agent's URL. Non-2xx answers
// and timeouts fail the run with the status or the cause.
import { httpAdapterSchema } from '../domain/agents.js';
import type { RunOutcome } from '../services/runs.js';
import type { AgentAdapter } from './types.js';

export const httpAdapter: AgentAdapter = {
  type: 'http',
  async execute(ctx): Promise<RunOutcome> {
    const cfg = httpAdapterSchema.parse(ctx.agent.adapterConfig);
    const timeout = AbortSignal.timeout(cfg.timeoutMs);
    const signal = AbortSignal.any([timeout, ctx.abort]);
    const body = {
      ...cfg.payload,
      runId: ctx.run.id,
      agentId: ctx.agent.id,
      companyId: ctx.agent.companyId,
      context: { ...ctx.run.contextSnapshot, paperclipEnvironment: ctx.workspace.details },
      apiUrl: ctx.apiUrl,
      apiKey: ctx.token,
    };
    ctx.log('system', `${cfg.method} ${cfg.url}\n`);
    try {
      const res = await fetch(cfg.url, {
        method: cfg.method,
        headers: { 'content-type': 'application/json', ...cfg.headers },
        body: JSON.stringify(body),
        signal,
      });
      const text = (await res.text()).slice(0, 64 * 1024);
      if (text) ctx.log('stdout', text.endsWith('\n') ? text : `${text}\n`);
      if (res.ok) return { status: 'succeeded', exitCode: null };
      return { status: 'failed', error: `${cfg.url} answered HTTP ${res.status}`, errorCode: `http_${res.status}` };
    } catch (err) {
      if (timeout.aborted) return { status: 'timed_out', error: `no answer from ${cfg.url} within ${cfg.timeoutMs} ms`, errorCode: 'timeout' };
      if (ctx.abort.aborted) {
        return ctx.abort.reason === 'lease_lost'
          ? { status: 'failed', error: 'the run lost its environment lease', errorCode: 'lease_lost' }
          : { status: 'cancelled', error: 'cancelled', errorCode: 'cancelled' };
      }
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      return { status: 'failed', error: `request to ${cfg.url} failed: ${cause?.code ?? cause?.message ?? (err as Error).message}`, errorCode: 'http_error' };
    }
  },
};
