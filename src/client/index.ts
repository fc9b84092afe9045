// `berth/client`: a typed client of Berth's HTTP API. The types of every route (path
// and query parameters, body, response) come from schema.gen.ts, which
// scripts/gen-client.mjs generates from the OpenAPI document the server serves; the
// requests go through openapi-fetch. On top of the typed GET/POST/PATCH/DELETE: errors
// thrown as one BerthApiError (Berth's {error: {code, message, fields}}), waitForRun,
// logEvents/followLog (the run log as server-sent events) and acquireLease (with an
// idempotency key by default, retried with the same key when the answer is lost).
import createFetchClient, { type Client as FetchClient, type FetchOptions, type FetchResponse } from 'openapi-fetch';
import type { FilterKeys, HttpMethod, PathsWithMethod, RequiredKeysOf } from 'openapi-typescript-helpers';
import { BerthApiError, BerthConnectionError, type BerthFieldIssue } from './errors.js';
import type { components, paths } from './schema.gen.js';

export type { components, paths } from './schema.gen.js';

export { BerthApiError, BerthConnectionError, type BerthFieldIssue } from './errors.js';

export interface BerthClientOptions {
  /** The server, e.g. http://127.0.0.1:3710. */
  baseUrl: string;
  /** A company API key, the instance admin key, or a run's token (PAPERCLIP_API_KEY). */
  apiKey?: string | null;
  /** Another fetch (a test double, or a transport without undici). */
  fetch?: (input: Request) => Promise<Response>;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
}

type Paths = paths;
type Ops<M extends HttpMethod, P extends PathsWithMethod<Paths, M>> = Paths[P][M];
type InitOf<M extends HttpMethod, P extends PathsWithMethod<Paths, M>> = FetchOptions<FilterKeys<Paths[P], M>>;
type InitArg<Init> = RequiredKeysOf<Init> extends never ? [Init?] : [Init];
/** What a route answers on success. */
export type Ok<M extends HttpMethod, P extends PathsWithMethod<Paths, M>> = Ops<M, P> extends Record<string | number, any> // eslint-disable-line @typescript-eslint/no-explicit-any
  ? NonNullable<FetchResponse<Ops<M, P>, object, 'application/json'>['data']>
  : never;

/** What a route takes as its JSON body. */
export type Body<M extends HttpMethod, P extends PathsWithMethod<Paths, M>> = NonNullable<
  FilterKeys<NonNullable<FilterKeys<Ops<M, P>, 'requestBody'>>, 'content'> extends infer C ? FilterKeys<C, 'application/json'> : never
>;

export interface Answer<T> {
  data: T;
  response: Response;
}

type Method<M extends HttpMethod> = <P extends PathsWithMethod<Paths, M>>(path: P, ...init: InitArg<InitOf<M, P>>) => Promise<Answer<Ok<M, P>>>;

export type HeartbeatRun = Ok<'get', '/api/heartbeat-runs/{id}'>;
/** A page of the log by seq (the answer without offset/limitBytes, which read Paperclip's NDJSON log by byte). */
export type LogPage = Extract<Ok<'get', '/api/heartbeat-runs/{id}/log'>, { chunks: unknown }>;
export type LogChunk = LogPage['chunks'][number];
export type Lease = Ok<'get', '/api/environment-leases/{leaseId}'>;
export type AcquireLeaseBody = Body<'post', '/api/environments/{id}/leases'>;
export type AcquireLeaseResult = Ok<'post', '/api/environments/{id}/leases'>;
export type ErrorBody = components['schemas']['Error'];
export type LeaseExecBody = Body<'post', '/api/environment-leases/{leaseId}/exec'>;
export type LeaseExecResult = Ok<'post', '/api/environment-leases/{leaseId}/exec'>;
export type PutFilesResult = Ok<'post', '/api/environment-leases/{leaseId}/files'>;

/** An event of a run's log stream. */
export type LogEvent =
  | { event: 'log'; id?: string; data: LogChunk }
  | { event: 'status'; id?: string; data: HeartbeatRun }
  | { event: 'end'; id?: string; data: HeartbeatRun }
  /** The server's stream failed after it started; reconnecting resumes it. */
  | { event: 'error'; id?: string; data: ErrorBody };

/** Statuses a run never leaves. */
export const TERMINAL_RUN_STATUSES = ['succeeded', 'failed', 'cancelled', 'timed_out'] as const;
export const isTerminalRun = (run: { status: string }): boolean => (TERMINAL_RUN_STATUSES as readonly string[]).includes(run.status);

/** Query values as Berth reads them: absent when undefined, null or ''; otherwise their string. */
function serializeQuery(query: Record<string, unknown>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  return q.toString();
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function apiError(status: number, body: unknown, baseUrl: string): BerthApiError {
  if (typeof body === 'string' && body !== '') {
    return new BerthApiError(status, 'bad_response', `the server at ${baseUrl} answered ${status} with something that is not JSON (is it Berth?)`);
  }
  const e = (body as { error?: { code?: unknown; message?: unknown; fields?: unknown; details?: unknown } } | undefined)?.error;
  return new BerthApiError(
    status,
    typeof e?.code === 'string' ? e.code : 'error',
    typeof e?.message === 'string' ? e.message : `HTTP ${status}`,
    Array.isArray(e?.fields) ? (e.fields as BerthFieldIssue[]) : undefined,
    e?.details && typeof e.details === 'object' ? (e.details as Record<string, unknown>) : undefined,
  );
}

/** Server-sent events of a response body: {event, data, id}, comments and data-less blocks skipped. */
export async function* parseSse(body: ReadableStream<Uint8Array>): AsyncGenerator<{ event: string; data: string; id?: string }> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        let id: string | undefined;
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event = value;
          else if (field === 'data') data.push(value);
          else if (field === 'id') id = value;
        }
        if (data.length === 0) continue;
        yield { event, data: data.join('\n'), ...(id !== undefined ? { id } : {}) };
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

export interface BerthClient {
  readonly baseUrl: string;
  /** The openapi-fetch client underneath: {data, error, response}, nothing thrown for an error status. */
  readonly raw: FetchClient<Paths>;
  /** Typed requests: the success body as `data`; an error status throws BerthApiError, no answer BerthConnectionError. */
  GET: Method<'get'>;
  POST: Method<'post'>;
  PATCH: Method<'patch'>;
  DELETE: Method<'delete'>;
  /** One connection to a run's log as server-sent events, from after seq `after`; ends when the server ends the stream. */
  logEvents(runId: string, opts?: { after?: number; signal?: AbortSignal }): AsyncGenerator<LogEvent>;
  /**
   * A run's log to its end: the `log` and `status` events, then `end` (the finished run) and
   * done. A lost connection is resumed from the last chunk seen, for up to `patienceMs`
   * (default 60 s) without progress; an error the server answers (a run not found) throws.
   */
  followLog(runId: string, opts?: { after?: number; signal?: AbortSignal; patienceMs?: number }): AsyncGenerator<LogEvent>;
  /** The run once its status is terminal (polled every `intervalMs`, default 500); `timeoutMs` bounds the wait. */
  waitForRun(runId: string, opts?: { intervalMs?: number; timeoutMs?: number; signal?: AbortSignal }): Promise<HeartbeatRun>;
  /**
   * Acquire a lease on an environment. The body's idempotencyKey defaults to a fresh UUID, so a
   * repeat after a lost answer (retried here `retries` times, default 2) returns the same lease.
   */
  acquireLease(environmentId: string, body?: AcquireLeaseBody, opts?: { retries?: number }): Promise<AcquireLeaseResult>;
  /**
   * Run a command in a provisioned lease's workspace (acquired with provision: true). With
   * `onOutput` the output comes as it is written (server-sent events) and the result has
   * none; without, it is buffered in the result (capped by maxOutputBytes).
   */
  exec(
    leaseId: string,
    body: Omit<LeaseExecBody, 'stream'>,
    opts?: { onOutput?: (stream: 'stdout' | 'stderr', text: string) => void | Promise<void>; signal?: AbortSignal },
  ): Promise<LeaseExecResult>;
  /** Unpack a tar archive into `path` (relative; default the root) of a provisioned lease's workspace. */
  putFiles(leaseId: string, at: { fence: number; path?: string }, archive: Uint8Array): Promise<PutFilesResult>;
  /** A tar archive of `path` (relative; default all) of a provisioned lease's workspace, as a stream. */
  getFiles(leaseId: string, at: { fence: number; path?: string }, opts?: { signal?: AbortSignal }): Promise<ReadableStream<Uint8Array>>;
}

export function createClient(options: BerthClientOptions): BerthClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, '');
  const headers: Record<string, string> = { accept: 'application/json', ...(options.headers ?? {}) };
  if (options.apiKey) headers.authorization = `Bearer ${options.apiKey}`;
  const raw = createFetchClient<Paths>({
    baseUrl,
    headers,
    querySerializer: serializeQuery as never,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });

  async function send(method: string, path: string, init: Record<string, unknown> | undefined, parseAs: 'text' | 'stream') {
    try {
      return await raw.request(method as 'get', path as never, { ...(init ?? {}), parseAs } as never);
    } catch (err) {
      if (err instanceof BerthConnectionError || (err as Error)?.name === 'AbortError' || (err as Error)?.name === 'TimeoutError') throw err;
      const cause = (err as { cause?: { code?: string; message?: string } })?.cause ?? (err as { code?: string; message?: string });
      const code = cause?.code;
      const why = code === 'ECONNREFUSED' ? 'no Berth server answers' : `cannot reach a Berth server (${code ?? cause?.message ?? String(err)})`;
      throw new BerthConnectionError(`${why} at ${baseUrl}`, code, { cause: err });
    }
  }

  async function call(method: string, path: string, init?: Record<string, unknown>): Promise<Answer<never>> {
    const r = (await send(method, path, init, 'text')) as { data?: string; error?: unknown; response: Response };
    if (!r.response.ok) throw apiError(r.response.status, r.error, baseUrl);
    let data: unknown;
    try {
      data = r.data ? JSON.parse(r.data) : undefined;
    } catch {
      throw apiError(r.response.status, r.data, baseUrl);
    }
    return { data: data as never, response: r.response };
  }

  const method =
    <M extends HttpMethod>(m: Uppercase<M>): Method<M> =>
    (path, ...init) =>
      call(m, path as string, init[0] as Record<string, unknown> | undefined);

  async function* logEvents(runId: string, opts: { after?: number; signal?: AbortSignal } = {}): AsyncGenerator<LogEvent> {
    const r = (await send(
      'GET',
      '/api/heartbeat-runs/{id}/log',
      { params: { path: { id: runId }, query: { follow: 'true', after: opts.after ?? 0 } }, headers: { accept: 'text/event-stream' }, ...(opts.signal ? { signal: opts.signal } : {}) },
      'stream',
    )) as { data?: ReadableStream<Uint8Array> | null; error?: unknown; response: Response };
    if (!r.response.ok) throw apiError(r.response.status, r.error, baseUrl);
    if (!r.data) return;
    const events = parseSse(r.data);
    try {
      for (;;) {
        let next: IteratorResult<{ event: string; data: string; id?: string }>;
        try {
          next = await events.next();
        } catch (err) {
          // The connection broke mid-stream (fetch's "terminated", a reset): no answer, as before it started.
          if (err instanceof BerthConnectionError || (err as Error)?.name === 'AbortError' || opts.signal?.aborted) throw err;
          const code = (err as { cause?: { code?: string }; code?: string })?.cause?.code ?? (err as { code?: string })?.code;
          throw new BerthConnectionError((err as Error)?.message ?? String(err), code, { cause: err });
        }
        if (next.done) return;
        const ev = next.value;
        yield { event: ev.event, data: JSON.parse(ev.data), ...(ev.id !== undefined ? { id: ev.id } : {}) } as LogEvent;
      }
    } finally {
      await events.return(undefined);
    }
  }

  async function* followLog(runId: string, opts: { after?: number; signal?: AbortSignal; patienceMs?: number } = {}): AsyncGenerator<LogEvent> {
    const patience = opts.patienceMs ?? 60_000;
    let after = opts.after ?? 0;
    let lastProgress = Date.now();
    for (let attempt = 0; ; attempt++) {
      try {
        for await (const ev of logEvents(runId, { after, ...(opts.signal ? { signal: opts.signal } : {}) })) {
          lastProgress = Date.now();
          attempt = 0;
          if (ev.event === 'error') break; // the server's stream failed: resume
          if (ev.event === 'log') after = ev.data.seq;
          yield ev;
          if (ev.event === 'end') return;
        }
        throw new BerthConnectionError('the log stream ended before the run did');
      } catch (err) {
        const retryable = err instanceof BerthConnectionError || (err instanceof BerthApiError && [502, 503, 504].includes(err.status));
        if (!retryable || opts.signal?.aborted || Date.now() - lastProgress > patience) throw err;
        await sleep(Math.min(250 * 2 ** attempt, 3000), opts.signal);
      }
    }
  }

  const client: BerthClient = {
    baseUrl,
    raw,
    GET: method('GET'),
    POST: method('POST'),
    PATCH: method('PATCH'),
    DELETE: method('DELETE'),
    logEvents,
    followLog,
    async waitForRun(runId, opts = {}) {
      const deadline = opts.timeoutMs !== undefined ? Date.now() + opts.timeoutMs : Infinity;
      for (;;) {
        const { data: run } = await client.GET('/api/heartbeat-runs/{id}', { params: { path: { id: runId } }, ...(opts.signal ? { signal: opts.signal } : {}) });
        if (isTerminalRun(run)) return run;
        if (Date.now() >= deadline) throw new Error(`run ${runId} is still ${run.status} after ${opts.timeoutMs} ms`);
        await sleep(Math.min(opts.intervalMs ?? 500, Math.max(0, deadline - Date.now())), opts.signal);
      }
    },
    async acquireLease(environmentId, body = {}, opts = {}) {
      const withKey: AcquireLeaseBody = { ...body, idempotencyKey: body.idempotencyKey ?? globalThis.crypto.randomUUID() };
      for (let attempt = 0; ; attempt++) {
        try {
          const { data } = await client.POST('/api/environments/{id}/leases', { params: { path: { id: environmentId } }, body: withKey });
          return data;
        } catch (err) {
          // A provision the driver refused (502 provision_failed) is an answer, not a lost one.
          const lost = err instanceof BerthConnectionError || (err instanceof BerthApiError && [502, 504].includes(err.status) && err.code !== 'provision_failed');
          if (!lost || attempt >= (opts.retries ?? 2)) throw err;
          await sleep(200 * 2 ** attempt);
        }
      }
    },
    async exec(leaseId, body, opts = {}) {
      if (!opts.onOutput) {
        const { data } = await client.POST('/api/environment-leases/{leaseId}/exec', { params: { path: { leaseId } }, body, ...(opts.signal ? { signal: opts.signal } : {}) });
        return data;
      }
      const r = (await send(
        'POST',
        '/api/environment-leases/{leaseId}/exec',
        { params: { path: { leaseId } }, body: { ...body, stream: true }, headers: { accept: 'text/event-stream' }, ...(opts.signal ? { signal: opts.signal } : {}) },
        'stream',
      )) as { data?: ReadableStream<Uint8Array> | null; error?: unknown; response: Response };
      if (!r.response.ok) throw apiError(r.response.status, r.error, baseUrl);
      if (!r.data) throw new BerthConnectionError('the command stream ended before the command did');
      for await (const ev of parseSse(r.data)) {
        const data = JSON.parse(ev.data);
        if (ev.event === 'stdout' || ev.event === 'stderr') await opts.onOutput(ev.event, data as string);
        else if (ev.event === 'exit') return { stdout: '', stderr: '', ...data } as LeaseExecResult;
        else if (ev.event === 'error') throw apiError(502, data, baseUrl);
      }
      throw new BerthConnectionError('the command stream ended before the command did');
    },
    async putFiles(leaseId, at, archive) {
      const { data } = await client.POST('/api/environment-leases/{leaseId}/files', {
        params: { path: { leaseId }, query: at },
        body: archive as never,
        bodySerializer: (b: unknown) => b,
        headers: { 'content-type': 'application/x-tar' },
      } as never);
      return data as PutFilesResult;
    },
    async getFiles(leaseId, at, opts = {}) {
      const r = (await send('GET', '/api/environment-leases/{leaseId}/files', { params: { path: { leaseId }, query: at }, headers: { accept: 'application/x-tar' }, ...(opts.signal ? { signal: opts.signal } : {}) }, 'stream')) as {
        data?: ReadableStream<Uint8Array> | null;
        error?: unknown;
        response: Response;
      };
      if (!r.response.ok) throw apiError(r.response.status, r.error, baseUrl);
      return r.data ?? new ReadableStream({ start: (c) => c.close() });
    },
  };
  return client;
}
