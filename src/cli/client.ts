// The CLI's way to the server: HTTP with the key, one error type carrying the
// server's {error: {code, message, fields}}, and server-sent events for a log. It uses
// node:http rather than fetch: Node 20 loads fetch's implementation on first use, which
// costs a short-lived CLI process about 170 ms (measured: a GET took 0.25-0.33 s with
// fetch, 0.10-0.13 s with node:http, against 0.08-0.10 s for `node -e 0`).
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';

/** What the CLI reads of an answer. */
export interface Reply {
  status: number;
  ok: boolean;
  headers: { get(name: string): string | null };
  text(): Promise<string>;
  body: AsyncIterable<Uint8Array>;
}

function send(url: URL, method: string, headers: Record<string, string>, body: string | undefined, signal: AbortSignal | undefined): Promise<Reply> {
  return new Promise<Reply>((resolve, reject) => {
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { method, headers, ...(signal ? { signal } : {}) }, (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      resolve({
        status,
        ok: status >= 200 && status < 300,
        headers: { get: (name) => {
          const v = res.headers[name.toLowerCase()];
          return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
        } },
        async text() {
          const parts: Buffer[] = [];
          for await (const p of res) parts.push(p as Buffer);
          return Buffer.concat(parts).toString('utf8');
        },
        body: res,
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.end(body);
    else req.end();
  });
}
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly fields?: Array<{ path: string; message: string }>,
  ) {
    super(message);
  }
}

/** No server answered at all. */
export class NoServerError extends Error {}

/**
 * The server address from `source` (a variable's name), or an error naming it. The value
 * is not repeated: an address may carry credentials.
 */
export function checkServerUrl(value: string, source: string): string {
  let u: URL | null = null;
  try {
    u = new URL(value);
  } catch {
    /* refused below */
  }
  if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:') || !u.hostname) {
    throw new Error(`${source} is not an http(s) URL of a Berth server (e.g. http://127.0.0.1:3710)`);
  }
  return value;
}

export interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

export class BerthClient {
  constructor(
    readonly url: string,
    private readonly key: string | null,
  ) {}

  /** The same key against another address (a server that came back elsewhere). */
  withUrl(url: string): BerthClient {
    return url === this.url ? this : new BerthClient(url, this.key);
  }

  private async send(method: string, path: string, opts: { body?: unknown; query?: Record<string, unknown>; accept?: string; signal?: AbortSignal } = {}): Promise<Reply> {
    const u = new URL(path, this.url);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
    const headers: Record<string, string> = { accept: opts.accept ?? 'application/json' };
    if (this.key) headers.authorization = `Bearer ${this.key}`;
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    try {
      return await send(u, method, headers, opts.body !== undefined ? JSON.stringify(opts.body) : undefined, opts.signal);
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err;
      const cause = err as { code?: string; message?: string };
      const why = cause.code === 'ECONNREFUSED' ? 'no Berth server answers' : `cannot reach a Berth server (${cause.code ?? cause.message})`;
      throw new NoServerError(`${why} at ${this.url} (start one with \`npx berth serve\` or \`npm start\`, or set BERTH_URL)`);
    }
  }

  async request<T = unknown>(method: string, path: string, opts: { body?: unknown; query?: Record<string, unknown> } = {}): Promise<{ data: T; headers: Reply['headers']; status: number }> {
    const res = await this.send(method, path, opts);
    const text = await res.text();
    let data: unknown = undefined;
    try {
      data = text ? JSON.parse(text) : undefined;
    } catch {
      throw new ApiError(res.status, 'bad_response', `the server at ${this.url} answered ${res.status} with something that is not JSON (is it Berth?)`);
    }
    if (!res.ok) {
      const e = (data as { error?: { code?: string; message?: string; fields?: Array<{ path: string; message: string }> } })?.error;
      throw new ApiError(res.status, e?.code ?? 'error', e?.message ?? `HTTP ${res.status}`, e?.fields);
    }
    return { data: data as T, headers: res.headers, status: res.status };
  }

  get<T = unknown>(path: string, query?: Record<string, unknown>) {
    return this.request<T>('GET', path, query ? { query } : {}).then((r) => r.data);
  }
  post<T = unknown>(path: string, body?: unknown) {
    return this.request<T>('POST', path, body !== undefined ? { body } : {}).then((r) => r.data);
  }
  patch<T = unknown>(path: string, body: unknown) {
    return this.request<T>('PATCH', path, { body }).then((r) => r.data);
  }
  delete<T = unknown>(path: string) {
    return this.request<T>('DELETE', path).then((r) => r.data);
  }

  /** Server-sent events of one request, until the server ends the stream. */
  async *events(path: string, query: Record<string, unknown> = {}, signal?: AbortSignal): AsyncGenerator<SseEvent> {
    const res = await this.send('GET', path, { query, accept: 'text/event-stream', ...(signal ? { signal } : {}) });
    if (!res.ok) {
      const text = await res.text();
      const e = (() => {
        try {
          return (JSON.parse(text) as { error?: { code: string; message: string } }).error;
        } catch {
          return undefined;
        }
      })();
      throw new ApiError(res.status, e?.code ?? 'error', e?.message ?? `HTTP ${res.status}`);
    }
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const part of res.body) {
      buffer += decoder.decode(part, { stream: true });
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const ev: SseEvent = { event: 'message', data: '' };
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') ev.event = value;
          else if (field === 'data') data.push(value);
          else if (field === 'id') ev.id = value;
        }
        if (data.length === 0) continue;
        ev.data = data.join('\n');
        yield ev;
      }
    }
  }
}
