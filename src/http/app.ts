// The HTTP face: a Hono app over the services. Every request is authenticated
// (but /health), limited to 1 MiB, parsed strictly, and answered with JSON or one
// error shape. Routes are data (route.ts); this file turns them into handlers.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import type { FieldIssue } from '../domain/errors.js';
import { fieldIssues } from '../domain/validators.js';
import { actorOf, type AppDeps, type Principal } from './context.js';
import { createAuthenticator } from './auth.js';
import { errorBody, expectedError, HttpError, loggableError } from './errors.js';
import { mountDashboard } from './dashboard.js';
import { buildOpenApi } from './openapi.js';
import { badText, jsonIssues, type RouteDef, type RouteRequest } from './route.js';
import { allRoutes } from './routes/index.js';
import { inRequestSpan, SpanStatusCode } from '../tracing/index.js';

export const MAX_BODY_BYTES = 1024 * 1024;

type Env = { Variables: { requestId: string }; Bindings: { incoming?: IncomingMessage } };

function queryIssues(schema: z.ZodType | undefined, raw: Record<string, string[]>): { value: Record<string, unknown>; issues: FieldIssue[] } {
  const flat: Record<string, string> = {};
  const issues: FieldIssue[] = [];
  for (const [k, vs] of Object.entries(raw)) {
    if (vs.length > 1) issues.push({ path: k, message: 'must be given once' });
    const v = vs[vs.length - 1] ?? '';
    const why = badText(k) ?? badText(v);
    if (why) issues.push({ path: k.replace(/\u0000/g, '\\0'), message: why });
    flat[k] = v;
  }
  if (issues.length > 0) return { value: {}, issues };
  if (!schema) {
    return { value: {}, issues: Object.keys(flat).map((k) => ({ path: k, message: 'is not a known query parameter' })) };
  }
  const parsed = schema.safeParse(flat);
  if (parsed.success) return { value: parsed.data as Record<string, unknown>, issues: [] };
  return { value: {}, issues: fieldIssues(parsed.error, { unknown: 'is not a known query parameter', root: '(query)' }) };
}

/**
 * The body's bytes, at most `maxBytes` (else `tooLarge()`). Read straight from Node's
 * request when there is one (building a web Request just to read it costs more than the
 * rest of a small request), counted as it arrives so a chunked body is limited too.
 */
async function bodyBytes(c: Context, maxBytes: number, tooLarge: () => HttpError): Promise<Buffer> {
  const declared = Number(c.req.header('content-length'));
  if (Number.isFinite(declared) && declared > maxBytes) throw tooLarge();
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  const source = (incoming ?? c.req.raw.body) as AsyncIterable<Uint8Array> | null;
  if (!source) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of source) {
    size += chunk.length;
    if (size > maxBytes) throw tooLarge();
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks);
}

/** A JSON route's body as text, at most MAX_BODY_BYTES. */
async function bodyText(c: Context): Promise<string> {
  const tooLarge = () => new HttpError(413, 'payload_too_large', `the body is larger than ${MAX_BODY_BYTES} bytes (1 MiB)`);
  return (await bodyBytes(c, MAX_BODY_BYTES, tooLarge)).toString('utf8');
}

/** A route's raw body (rawBody): its media type checked, at most maxBytes. */
async function readRawBody(c: Context, raw: NonNullable<RouteDef['rawBody']>): Promise<Buffer> {
  const type = c.req.header('content-type') ?? '';
  if (type.split(';')[0]!.trim().toLowerCase() !== raw.type) {
    throw new HttpError(415, 'unsupported_media_type', `the body must be ${raw.description} (Content-Type: ${raw.type}), not ${type.slice(0, 100) || 'none'}`);
  }
  return bodyBytes(c, raw.maxBytes, () => new HttpError(413, 'payload_too_large', `the body is larger than ${raw.maxBytes} bytes`));
}

async function readBody(c: Context, route: RouteDef): Promise<unknown> {
  const text = await bodyText(c);
  if (!route.body) {
    // Nothing, or an empty JSON object (what clients send to a POST that takes no fields).
    if (text.trim() !== '' && !/^\{\s*\}$/.test(text.trim())) throw new HttpError(422, 'invalid', 'this route takes no body', [{ path: '(body)', message: 'must be empty (or {})' }]);
    return {};
  }
  if (text.trim() === '') {
    if (route.bodyRequired) throw new HttpError(422, 'invalid', 'a JSON object body is required', [{ path: '(body)', message: 'is required' }]);
    return {};
  }
  const type = c.req.header('content-type');
  if (type !== undefined && !/^application\/(.+\+)?json\b/i.test(type)) {
    throw new HttpError(415, 'unsupported_media_type', `the body must be JSON (Content-Type: application/json), not ${type.slice(0, 100)}`);
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, 'invalid_json', `the body is not valid JSON: ${(err as Error).message.slice(0, 200)}`);
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new HttpError(422, 'invalid', 'the body must be a JSON object', [{ path: '(body)', message: 'must be a JSON object' }]);
  }
  const issues = jsonIssues(body);
  if (issues.length > 0) throw new HttpError(422, 'invalid', `invalid body: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
  return body;
}

export function createApp(deps: AppDeps): Hono<Env> {
  const app = new Hono<Env>();
  const auth = createAuthenticator(deps.services, deps.adminKeyHash);
  const routes = allRoutes();
  const log = deps.logger;

  app.use('*', async (c, next) => {
    const requestId = c.req.header('x-request-id')?.slice(0, 100).replace(/[^\w.-]/g, '') || randomUUID();
    c.set('requestId', requestId);
    c.header('x-request-id', requestId);
    const started = performance.now();
    // By the route's template, never its path (ids would make a series per object); a request
    // no route took still has this middleware's own path.
    const route = await inRequestSpan(c.req.method, (h) => c.req.header(h), async (span) => {
      await next();
      const template = c.req.routePath === '/*' || c.req.routePath === '*' ? '(unmatched)' : c.req.routePath;
      if (span.isRecording()) {
        span.updateName(`${c.req.method} ${template}`);
        span.setAttributes({ 'http.route': template, 'http.response.status_code': c.res.status, 'berth.request.id': requestId });
        if (c.res.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR, message: String(c.res.status) });
      }
      return template;
    });
    const elapsed = performance.now() - started;
    const ms = Math.round(elapsed * 10) / 10;
    deps.services.metrics.httpRequest(c.req.method, route, c.res.status, elapsed / 1000);
    const line = { reqId: requestId, method: c.req.method, path: c.req.routePath, url: c.req.path.slice(0, 200), status: c.res.status, ms };
    // Changes are logged; reads only at debug (a dashboard reads a lot).
    if (c.res.status >= 500) log.error(line, 'request failed');
    else if (c.req.method !== 'GET' || c.res.status === 401 || c.res.status === 403) log.info(line, 'request');
    else log.debug(line, 'request');
  });

  async function resolveCompany(route: RouteDef, principal: Principal, params: Record<string, string>): Promise<string> {
    const pathCompany = params.companyId;
    if (principal.kind !== 'admin') {
      if (pathCompany !== undefined && pathCompany !== principal.companyId) throw new HttpError(404, 'not_found', `company ${pathCompany.slice(0, 100)} not found`);
      return principal.companyId;
    }
    if (pathCompany !== undefined) return (await deps.services.companies.get(pathCompany)).id;
    if (route.owner) {
      const id = params[route.owner.param] ?? '';
      const owner = await deps.services.companies.ownerOf(route.owner.kind, id);
      if (!owner) throw new HttpError(404, 'not_found', `${route.owner.kind} ${id.slice(0, 100)} not found`);
      return owner;
    }
    return '';
  }

  function handlerFor(route: RouteDef) {
    return async (c: Context<Env>) => {
      let principal: Principal = { kind: 'admin' };
      if (route.access !== 'public') {
        principal = await auth.authenticate(c.req.header('authorization'));
        if (route.access === 'admin' && principal.kind !== 'admin') throw new HttpError(403, 'forbidden', 'this route needs the instance admin key');
        if (route.access === 'company' && principal.kind === 'run') {
          throw new HttpError(403, 'forbidden', 'a run token may act only on its own run and its leases');
        }
      }
      const params = c.req.param() as Record<string, string>;
      const companyId = route.access === 'public' ? '' : await resolveCompany(route, principal, params);
      const q = queryIssues(route.query, c.req.queries() ?? {});
      if (q.issues.length > 0) {
        throw new HttpError(400, 'invalid', `invalid query: ${q.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, q.issues);
      }
      // A raw body is read when the handler asks (after it has found the object: another company's is not found, whatever was sent).
      const raw = route.rawBody;
      const body = raw ? () => readRawBody(c, raw) : c.req.method === 'POST' || c.req.method === 'PATCH' ? await readBody(c, route) : undefined;
      const r: RouteRequest = { c, deps, principal, actor: actorOf(principal), companyId, params, query: q.value, body, forgetKeys: () => auth.forgetAll() };
      if (principal.kind === 'run') {
        // Another run's object is as invisible to a run token as another company's.
        if (!route.runOwns || !(await route.runOwns(r, principal.runId))) {
          throw new HttpError(404, 'not_found', 'not found (a run token sees only its own run and leases)');
        }
      }
      const result = await route.handle(r);
      if (result instanceof Response) return result;
      return c.json(result as object, (route.status ?? 200) as 200);
    };
  }

  for (const route of routes) {
    app.on(route.method, route.path, handlerFor(route));
  }
  mountDashboard(app);
  const openapi = buildOpenApi(routes, deps.version);
  app.get('/api/openapi.json', async (c) => {
    await auth.authenticate(c.req.header('authorization'));
    return c.json(openapi);
  });

  // Prometheus's scrape: the admin key, as the admin API, unless BERTH_METRICS_PUBLIC=1 made it public.
  app.get('/metrics', async (c) => {
    if (!deps.metricsPublic) {
      const principal = await auth.authenticate(c.req.header('authorization'));
      if (principal.kind !== 'admin') throw new HttpError(403, 'forbidden', 'GET /metrics needs the instance admin key (or BERTH_METRICS_PUBLIC=1 on the server)');
    }
    const text = await deps.services.metrics.render();
    return c.body(text, 200, { 'content-type': deps.services.metrics.contentType, 'cache-control': 'no-store' });
  });

  app.notFound((c) => c.json(errorBody('not_found', `no route ${c.req.method} ${c.req.path.slice(0, 200)}`), 404));
  app.onError((err, c) => {
    const known = expectedError(err);
    // A refused body was not read to its end: the connection cannot be reused.
    if (known?.status === 413) return c.json(known.body, 413, { connection: 'close' });
    if (known) return c.json(known.body, known.status as 400);
    const requestId = c.get('requestId');
    log.error({ reqId: requestId, err: loggableError(err) }, 'unexpected error');
    return c.json(errorBody('internal', `internal error (request ${requestId}); the server log has the details`), 500);
  });
  return app;
}
