// The `http` adapter: posts the run's context to the agent's URL. Non-2xx answers
// and timeouts fail the run with the status or the cause. It connects only to
// addresses the egress policy allows (checked after resolution, on the connection
// itself), follows no redirect, and reads at most RESPONSE_LIMIT_BYTES of the answer.
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { httpAdapterSchema, type HttpAdapterConfig } from '../domain/agents.js';
import type { RunOutcome } from '../services/runs.js';
import { checkAddress, checkedLookup, EgressDenied, egressPolicy, type EgressPolicy } from './egress.js';
import type { CallAdapter } from './types.js';

/** How much of an answer is read (and logged); the connection is closed past it. */
export const RESPONSE_LIMIT_BYTES = 64 * 1024;

interface Answer {
  status: number;
  body: Buffer;
  truncated: boolean;
}

/** One request, its answer read up to the limit; rejects on a refused address before connecting. */
function send(cfg: HttpAdapterConfig, payload: string, policy: EgressPolicy, signal: AbortSignal): Promise<Answer> {
  const url = new URL(cfg.url);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  // A literal address never goes through lookup: it is checked here.
  if (isIP(host)) checkAddress(policy, host, host);
  return new Promise<Answer>((resolve, reject) => {
    let req: ClientRequest | undefined;
    const onAbort = () => req?.destroy(Object.assign(new Error('aborted'), { name: 'AbortError' }));
    signal.addEventListener('abort', onAbort, { once: true });
    const settle = (f: () => void) => {
      signal.removeEventListener('abort', onAbort);
      f();
    };
    const options = {
      method: cfg.method,
      headers: { 'content-type': 'application/json', ...cfg.headers, 'content-length': String(Buffer.byteLength(payload)) },
      lookup: checkedLookup(policy),
      // A connection of its own: a pooled one could outlive a change of policy.
      agent: false as const,
    };
    const onResponse = (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        if (size >= RESPONSE_LIMIT_BYTES) return;
        chunks.push(chunk);
        size += chunk.length;
        if (size >= RESPONSE_LIMIT_BYTES) {
          const body = Buffer.concat(chunks).subarray(0, RESPONSE_LIMIT_BYTES);
          // Stop reading: the rest of the answer is never received.
          res.destroy();
          req?.destroy();
          settle(() => resolve({ status: res.statusCode ?? 0, body, truncated: true }));
        }
      });
      res.on('end', () => settle(() => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), truncated: false })));
      res.on('error', (err) => settle(() => reject(err)));
    };
    req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, options, onResponse);
    req.on('error', (err) => settle(() => reject(err)));
    if (signal.aborted) onAbort();
    req.end(payload);
  });
}

export const httpAdapter: CallAdapter = {
  type: 'http',
  kind: 'call',
  async execute(ctx): Promise<RunOutcome> {
    const cfg = httpAdapterSchema.parse(ctx.agent.adapterConfig);
    let policy: EgressPolicy;
    try {
      policy = egressPolicy();
    } catch (err) {
      return { status: 'failed', error: (err as Error).message, errorCode: 'egress_config_invalid' };
    }
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
      const res = await send(cfg, JSON.stringify(body), policy, signal);
      const text = res.body.toString('utf8');
      if (text) ctx.log('stdout', text.endsWith('\n') ? text : `${text}\n`);
      if (res.truncated) ctx.log('system', `(the answer was cut at ${RESPONSE_LIMIT_BYTES} bytes and the connection closed)\n`);
      if (res.status >= 200 && res.status < 300) return { status: 'succeeded', exitCode: null };
      const redirect = res.status >= 300 && res.status < 400 ? ' (redirects are not followed)' : '';
      return { status: 'failed', error: `${cfg.url} answered HTTP ${res.status}${redirect}`, errorCode: `http_${res.status}` };
    } catch (err) {
      if (err instanceof EgressDenied) {
        ctx.log('system', `refused: ${err.message}\n`);
        return { status: 'failed', error: `request to ${cfg.url} refused: ${err.message}`, errorCode: 'egress_denied' };
      }
      if (timeout.aborted) return { status: 'timed_out', error: `no answer from ${cfg.url} within ${cfg.timeoutMs} ms`, errorCode: 'timeout' };
      if (ctx.abort.aborted) {
        return ctx.abort.reason === 'lease_lost'
          ? { status: 'failed', error: 'the run lost its environment lease', errorCode: 'lease_lost' }
          : { status: 'cancelled', error: 'cancelled', errorCode: 'cancelled' };
      }
      const e = err as NodeJS.ErrnoException;
      return { status: 'failed', error: `request to ${cfg.url} failed: ${e.code ?? e.message}`, errorCode: 'http_error' };
    }
  },
};
