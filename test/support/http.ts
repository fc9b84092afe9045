// A real HTTP server over a test database: the app on a free port, optionally
// with the runtime, and a small client that returns status, JSON and headers.
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { serve, type ServerType } from '@hono/node-server';
import pino from 'pino';
import { localDriver } from '../../src/drivers/local/driver.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { createApp } from '../../src/http/app.js';
import { ADMIN_KEY_PREFIX } from '../../src/http/auth.js';
import { hashBearerSecret } from '../../src/secrets/bearer.js';
import type { RouteDef } from '../../src/http/route.js';
import type { TestDb } from './db.js';
import { waitFor } from './wait.js';

export interface Reply<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

export interface TestApi {
  url: string;
  adminKey: string;
  runtime: Runtime | null;
  call<T = any>(method: string, path: string, opts?: { key?: string | null; body?: unknown; raw?: string; headers?: Record<string, string>; headersOnly?: boolean }): Promise<Reply<T>>;
  /** A company with its API key, made through the API. */
  company(name: string): Promise<{ id: string; key: string }>;
  /** The runtime's own errors so far (`where: message`); close() fails if any is left. */
  runtimeErrors: string[];
  close(): Promise<void>;
}

export async function startTestApi(t: TestDb, opts: { runtime?: boolean; workspaceRoot?: string; metricsPublic?: boolean } = {}): Promise<TestApi> {
  const adminKey = `${ADMIN_KEY_PREFIX}${randomBytes(16).toString('hex')}`;
  const drivers = new Map([['local', localDriver(opts.workspaceRoot ? { workspaceRoot: opts.workspaceRoot } : {})]]);
  let runtime: Runtime | null = null;
  const runtimeErrors: string[] = [];
  const app = createApp({
    services: t.services,
    drivers,
    logger: pino({ level: process.env.BERTH_TEST_LOG ?? 'silent' }),
    adminKeyHash: hashBearerSecret(adminKey),
    pokeScheduler: () => runtime?.poke(),
    logPollMs: 50,
    database: t.kind,
    version: 'test',
    ...(opts.metricsPublic ? { metricsPublic: true } : {}),
  });
  const server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  if (opts.runtime) {
    runtime = await startRuntime({ services: t.services, db: t.db, drivers, apiUrl: url, pollMs: 50, sweepMs: 200, heartbeatMs: 100, onError: (where, err) => void runtimeErrors.push(`${where}: ${(err as Error).message}`) });
  }
  const api: TestApi = {
    url,
    adminKey,
    runtime,
    async call(method, path, o = {}) {
      const headers: Record<string, string> = { ...(o.headers ?? {}) };
      const key = o.key === undefined ? adminKey : o.key;
      if (key) headers.authorization = `Bearer ${key}`;
      let body: string | undefined = o.raw;
      if (o.body !== undefined) {
        body = JSON.stringify(o.body);
        headers['content-type'] ??= 'application/json';
      }
      const abort = new AbortController();
      const send = () => fetch(`${url}${path}`, { method, headers, signal: abort.signal, ...(body !== undefined ? { body } : {}) });
      // A kept-alive socket the server closed as idle (its keepAliveTimeout) just as it was
      // reused resets the request: a read is sent again on a fresh one, as a browser does.
      const res = await send().catch((err: unknown) => {
        const reset = (err as { cause?: { code?: string } }).cause?.code === 'ECONNRESET';
        if (reset && (method === 'GET' || method === 'HEAD')) return send();
        throw err;
      });
      if (o.headersOnly && res.ok) {
        abort.abort(); // a stream: its status and headers are the answer
        return { status: res.status, body: null as never, headers: res.headers };
      }
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = text ? JSON.parse(text) : null;
      } catch {
        /* not JSON: keep the text */
      }
      return { status: res.status, body: parsed as never, headers: res.headers };
    },
    async company(name) {
      const r = await api.call('POST', '/api/companies', { body: { name } });
      if (r.status !== 201) throw new Error(`company create: ${r.status} ${JSON.stringify(r.body)}`);
      return { id: r.body.company.id, key: r.body.apiKey };
    },
    runtimeErrors,
    async close() {
      await runtime?.stop({ graceMs: 0 });
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        (server as { closeAllConnections?: () => void }).closeAllConnections?.();
      });
      if (runtimeErrors.length > 0) throw new Error(`the runtime reported errors no test provoked:\n${runtimeErrors.join('\n')}`);
    },
  };
  return api;
}

/** A company with one of everything, made through the API: an environment, a lease, an agent, a run, its key. */
export interface SeededCompany {
  id: string;
  key: string;
  env: string;
  lease: string;
  agent: string;
  run: string;
  apiKey: string;
}

/** Seed a company; with a scheduler the run is waited for (succeeded), without one it stays queued. */
export async function seedCompany(api: TestApi, name: string): Promise<SeededCompany> {
  const co = await api.company(name);
  const call = (method: string, path: string, body?: unknown) => api.call(method, path, { key: co.key, ...(body !== undefined ? { body } : {}) });
  const env = (await call('POST', `/api/companies/${co.id}/environments`, { name: 'sandbox', driver: 'sandbox', config: { provider: 'p' }, envVars: { K: 'v' } })).body.id;
  const lease = (await call('POST', `/api/environments/${env}/leases`, { ttlSeconds: 3600 })).body.lease.id;
  const agent = (await call('POST', `/api/companies/${co.id}/agents`, { name: 'a', adapterType: 'process', adapterConfig: { command: 'true' } })).body.id;
  const run = (await call('POST', `/api/agents/${agent}/wakeup`, {})).body.id;
  if (api.runtime) await waitFor('the run to finish', async () => (await call('GET', `/api/heartbeat-runs/${run}`)).body.status === 'succeeded');
  const apiKey = (await call('GET', `/api/companies/${co.id}/api-keys`)).body[0].id;
  return { ...co, env, lease, agent, run, apiKey };
}

/** The route's path with a seeded company's ids in it (and one parameter replaced, if asked). */
export function routePath(route: RouteDef, ids: SeededCompany, override?: { param: string; value: string }): string {
  return route.path.replace(/:(\w+)/g, (_, p: string) => {
    if (override && override.param === p) return encodeURIComponent(override.value);
    if (p === 'companyId') return ids.id;
    if (p === 'leaseId') return ids.lease;
    const kind = route.owner?.kind;
    return kind === 'environment' ? ids.env : kind === 'agent' ? ids.agent : kind === 'run' ? ids.run : kind === 'apiKey' ? ids.apiKey : kind === 'lease' ? ids.lease : 'unknown';
  });
}
