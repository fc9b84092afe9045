// The CLI's way to the server: the typed client of `berth/client` (src/client, generated
// from the OpenAPI document, so a route change that breaks a CLI call fails typecheck)
// over node:http rather than fetch. Node 20 loads fetch's networking on first use, which
// costs a short-lived CLI process about 120-170 ms (measured: a GET took 0.18-0.36 s
// with fetch, 0.07-0.12 s with node:http and the Request/Response classes, against
// 0.06-0.09 s for `node -e 0`).
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';
import { BerthConnectionError } from '../client/errors.js';
import type { BerthClient } from '../client/index.js';

/** The server answered with an error (Berth's {error: {code, message, fields}}). */
export { BerthApiError as ApiError } from '../client/errors.js';
export type { BerthClient } from '../client/index.js';

/** No server answered at all. */
export class NoServerError extends BerthConnectionError {
  override readonly name = 'NoServerError';
}

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

const NULL_BODY = new Set([101, 204, 205, 304]);

/**
 * A fetch over node:http for the typed client. The request goes to its path and query
 * resolved against `url` as given (credentials in it included, which a Request may not carry).
 */
function nodeFetch(url: string): (req: Request) => Promise<Response> {
  return async (req) => {
    const target = new URL(req.url);
    const u = new URL(target.pathname + target.search, url);
    const headers: Record<string, string> = {};
    req.headers.forEach((v, k) => (headers[k] = v));
    const body = req.body ? Buffer.from(await req.arrayBuffer()) : undefined;
    return new Promise<Response>((resolve, reject) => {
      const onResponse = (res: IncomingMessage) => {
        const status = res.statusCode ?? 0;
        const h = new Headers();
        for (const [k, v] of Object.entries(res.headers)) {
          if (v === undefined) continue;
          for (const one of Array.isArray(v) ? v : [v]) h.append(k, one);
        }
        if (NULL_BODY.has(status)) res.resume();
        resolve(new Response(NULL_BODY.has(status) ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>), { status, headers: h }));
      };
      const r = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, { method: req.method, headers, signal: req.signal }, onResponse);
      r.on('error', (err: Error & { code?: string }) => {
        if (err.name === 'AbortError') return reject(err);
        const why = err.code === 'ECONNREFUSED' ? 'no Berth server answers' : `cannot reach a Berth server (${err.code ?? err.message})`;
        reject(new NoServerError(`${why} at ${url} (start one with \`npx berth serve\` or \`npm start\`, or set BERTH_URL)`, err.code, { cause: err }));
      });
      if (body !== undefined) r.end(body);
      else r.end();
    });
  };
}

/** The typed client, with the address it calls and a way to the same key at another. */
export interface CliClient extends BerthClient {
  readonly url: string;
  /** The same key against another address (a server that came back elsewhere). */
  withUrl(url: string): Promise<CliClient>;
}

/** The typed client at `url` with `key`, over node:http; loaded on first use, so that `berth --help` loads commander only. */
export async function connect(url: string, key: string | null): Promise<CliClient> {
  const { createClient } = await import('../client/index.js');
  const client: CliClient = {
    ...createClient({ baseUrl: new URL(url).origin, apiKey: key, fetch: nodeFetch(url) }),
    url,
    withUrl: async (other) => (other === url ? client : connect(other, key)),
  };
  return client;
}
