// Fuzzing the API over real HTTP: thousands of generated bad requests (wrong types,
// missing and unknown fields, huge strings, malformed ids and JSON, bad queries,
// NUL characters, deep nesting, another company's ids). Every one must get a 4xx,
// never a 5xx, and the database must be exactly as it was.
import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { queryRows } from '../../src/db/client.js';
import { acquireLeaseSchema } from '../../src/domain/validators.js';
import { allRoutes } from '../../src/http/routes/index.js';
import { MAX_BODY_BYTES } from '../../src/http/app.js';
import { jsonIssues, type RouteDef } from '../../src/http/route.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { routePath, seedCompany, startTestApi, type SeededCompany, type TestApi } from '../support/http.js';

let t: TestDb;
let api: TestApi;

let A: SeededCompany;
let B: SeededCompany;

/** Every table, every row: a checksum and a count each. */
async function databaseState(): Promise<Record<string, string>> {
  const tables = ['companies', 'environments', 'environment_leases', 'activity_log', 'agents', 'heartbeat_runs', 'heartbeat_run_logs', 'api_keys', 'berth_servers'];
  const out: Record<string, string> = {};
  for (const table of tables) {
    const [row] = await queryRows<{ n: number; sum: string | null }>(
      t.db,
      sql`SELECT count(*)::int AS n, md5(string_agg(x::text, ',' ORDER BY x::text)) AS sum FROM ${sql.identifier(table)} x`,
    );
    out[table] = `${row!.n}:${row!.sum}`;
  }
  return out;
}

/** A body the route accepts, and how to tell whether a changed body would still be accepted. */
function bodyOf(route: RouteDef): { base: Record<string, unknown>; accepts: (b: unknown) => boolean } | null {
  if (!route.body) return null;
  const schema = route.body as z.ZodType;
  const key = `${route.method} ${route.path}`;
  const bases: Record<string, Record<string, unknown>> = {
    'POST /api/companies': { name: 'co' },
    'POST /api/companies/:companyId/api-keys': { name: 'k' },
    'POST /api/companies/:companyId/environments': { name: 'e', driver: 'sandbox', config: { provider: 'p' }, capacity: 2, description: 'd' },
    'PATCH /api/environments/:id': { name: 'renamed', capacity: 5 },
    'POST /api/environments/:id/leases': { ttlSeconds: 60, policy: 'ephemeral', idempotencyKey: 'k' },
    'POST /api/environment-leases/:leaseId/renew': { fence: 1, ttlSeconds: 60 },
    'PATCH /api/environment-leases/:leaseId/metadata': { fence: 1, metadata: { x: 1 } },
    'POST /api/environment-leases/:leaseId/release': { fence: 1, status: 'released' },
    'POST /api/environment-leases/:leaseId/exec': { fence: 1, command: ['true'], timeoutSeconds: 5 },
    'POST /api/companies/:companyId/agents': { name: 'n', adapterType: 'process', adapterConfig: { command: 'true', timeoutSec: 5 }, maxConcurrentRuns: 1 },
    'PATCH /api/agents/:id': { name: 'renamed', maxConcurrentRuns: 2 },
    'POST /api/agents/:id/wakeup': { source: 'on_demand', context: { a: 1 } },
    'POST /api/agents/:id/heartbeat/invoke': { source: 'on_demand', triggerDetail: 'manual', reason: 'r', payload: { issueId: 'i' } },
    'POST /api/companies/:companyId/environments/probe-config': { driver: 'local', config: {}, name: 'n' },
  };
  const base = bases[key];
  if (!base) throw new Error(`the fuzz test has no base body for ${key}: add one`);
  // The acquire route takes its environment from the path, and the service checks the rest (ttlSeconds or expiresAt, not both).
  const accepts =
    key === 'POST /api/environments/:id/leases'
      ? (b: unknown) => acquireLeaseSchema.safeParse({ ...(b as object), environmentId: randomUUID() }).success && !('environmentId' in (b as object))
      : (b: unknown) => schema.safeParse(b).success;
  return { base, accepts };
}

type Req = { method: string; path: string; key: string; raw?: string; contentType?: string };

/**
 * Would the route take this body text, as the app reads it (size, emptiness, JSON, an
 * object, storable text, then the route's own schema)? The fuzz sends only bodies it refuses.
 */
function bodyAccepted(route: RouteDef, raw: string | undefined, contentType = 'application/json'): boolean {
  if (raw === undefined || raw.trim() === '') return !route.bodyRequired;
  if (Buffer.byteLength(raw) > MAX_BODY_BYTES || !/^application\/(.+\+)?json\b/i.test(contentType)) return false;
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    return false;
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body) || jsonIssues(body).length > 0) return false;
  return bodyOf(route)!.accepts(body);
}

const wrongValue = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.string({ maxLength: 20 }),
  fc.array(fc.integer(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.integer(), { maxKeys: 3 }),
  fc.constantFrom('', ' ', 'x'.repeat(70_000), -1, 0, 1e308, -1e308, Number.MAX_SAFE_INTEGER * 4, '2000-13-45', 'a\u0000b', '😀'.repeat(300), 'lone \ud800 high', 'lone \udc00 low', { '\ud83d': 1 }),
);
const badId = fc.oneof(
  fc.constantFrom('not-a-uuid', '00000000-0000-0000-0000-000000000000', "1' OR '1'='1", '../../etc/passwd', '%', 'ｉｄ', '-'.repeat(36), 'x'.repeat(5000), '\u0000'),
  fc.uuid(),
  fc.string({ minLength: 1, maxLength: 60 }),
);
const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);

function arbitraryRequest(routes: RouteDef[]) {
  const withBody = routes.filter((r) => r.body);
  const withParams = routes.filter((r) => r.path.includes(':'));
  const keyFor = (r: RouteDef) => (r.access === 'admin' ? api.adminKey : A.key);

  const bodyMutation = fc
    .record({
      route: fc.constantFrom(...withBody),
      kind: fc.constantFrom('wrong_type', 'missing', 'unknown', 'huge', 'nul', 'surrogate', 'deep_value'),
      pick: fc.nat(),
      value: wrongValue,
      extraKey: fc.string({ minLength: 1, maxLength: 12 }),
      huge: fc.integer({ min: 70_000, max: 1_200_000 }),
    })
    .map(({ route, kind, pick, value, extraKey, huge }) => {
      const { base } = bodyOf(route)!;
      const body: Record<string, unknown> = structuredClone(base);
      const keys = Object.keys(body);
      const field = keys[pick % keys.length]!;
      if (kind === 'wrong_type') body[field] = value;
      else if (kind === 'missing') delete body[field];
      else if (kind === 'unknown') body[`${extraKey}_x`] = value;
      else if (kind === 'huge') body[field] = 'y'.repeat(huge);
      else if (kind === 'nul') body[field] = `bad\u0000${JSON.stringify(value)}`;
      else if (kind === 'surrogate') body[field] = { nested: `half a pair \ud800 ${extraKey}` };
      else body[field] = JSON.parse(deep(40));
      const raw = JSON.stringify(body);
      // Only requests that are wrong: the route must refuse this body.
      if (bodyAccepted(route, raw)) return null;
      return { method: route.method, path: routePath(route, A), key: keyFor(route), raw } satisfies Req;
    });

  const malformedJson = fc
    .record({
      route: fc.constantFrom(...withBody),
      cut: fc.nat(),
      // Junk that closes the object makes valid JSON: `{` + `}` is a body wakeup accepts.
      junk: fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('}', ' } ', '"x":1}', '"source":"on_demand"}')),
      kind: fc.constantFrom('truncated', 'junk', 'array', 'scalar', 'deep', 'no_body', 'form') })
    .map(({ route, cut, junk, kind }) => {
      const whole = JSON.stringify(bodyOf(route)!.base);
      const raw =
        kind === 'truncated' ? whole.slice(0, Math.max(1, cut % whole.length)) : kind === 'junk' ? `{${junk}` : kind === 'array' ? '[1,2,3]' : kind === 'scalar' ? '42' : kind === 'deep' ? `{"a":${deep(5000)}}` : kind === 'form' ? 'a=1&b=2' : '';
      const contentType = kind === 'form' ? 'application/x-www-form-urlencoded' : 'application/json';
      // Only what the route refuses: junk can still close into a valid object, and no body is fine where none is required.
      if (bodyAccepted(route, raw, contentType)) return null;
      return { method: route.method, path: routePath(route, A), key: keyFor(route), raw, ...(kind === 'form' ? { contentType } : {}) } satisfies Req;
    });

  const malformedId = fc.record({ route: fc.constantFrom(...withParams), value: badId, which: fc.nat() }).map(({ route, value, which }) => {
    const params = [...route.path.matchAll(/:(\w+)/g)].map((m) => m[1]!);
    const param = params[which % params.length]!;
    const base = bodyOf(route)?.base;
    return { method: route.method, path: routePath(route, A, { param, value }), key: keyFor(route), ...(base ? { raw: JSON.stringify(base) } : {}) } satisfies Req;
  });

  // Company A's key on company B's objects, with a body that would otherwise be accepted.
  const foreignIds = fc.constantFrom(...withParams.filter((r) => r.access !== 'admin')).map((route) => {
    const base = bodyOf(route)?.base;
    return { method: route.method, path: routePath(route, B), key: A.key, ...(base ? { raw: JSON.stringify(base) } : {}) } satisfies Req;
  });

  // Another company's ids inside the body.
  const foreignBodyIds = fc.constantFrom(
    () => ({ method: 'POST', path: `/api/environments/${A.env}/leases`, key: A.key, raw: JSON.stringify({ ttlSeconds: 60, heartbeatRunId: B.run }) }),
    () => ({ method: 'POST', path: `/api/companies/${A.id}/agents`, key: A.key, raw: JSON.stringify({ name: 'z', adapterType: 'process', adapterConfig: { command: 'true' }, defaultEnvironmentId: B.env }) }),
    () => ({ method: 'PATCH', path: `/api/agents/${A.agent}`, key: A.key, raw: JSON.stringify({ defaultEnvironmentId: B.env }) }),
  ).map((f) => f() satisfies Req);

  const badQuery = fc
    .record({
      route: fc.constantFrom(...routes.filter((r) => r.method === 'GET' && r.access !== 'public')),
      kind: fc.constantFrom('unknown', 'bad_value', 'repeated', 'nul'),
      name: fc.string({ minLength: 1, maxLength: 10 }),
      value: fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom('-1', '0', '1e400', 'NaN', '99999999999999999999', 'x'.repeat(300), 'null', "' OR 1=1 --")),
    })
    .map(({ route, kind, name, value }) => {
      const props = route.query ? Object.keys((route.query as unknown as { shape: Record<string, unknown> }).shape ?? {}) : [];
      let q: string;
      if (kind === 'unknown' || props.length === 0) q = `${encodeURIComponent(`zz${name}`)}=${encodeURIComponent(value)}`;
      else if (kind === 'repeated') q = `${props[0]}=a&${props[0]}=b`;
      else if (kind === 'nul') q = `${props[value.length % props.length]}=a%00b`;
      else {
        const p = props[value.length % props.length]!;
        // Only values the parameter's schema refuses.
        const parsed = (route.query as z.ZodType).safeParse({ [p]: value });
        if (parsed.success) return null;
        q = `${p}=${encodeURIComponent(value)}`;
      }
      return { method: 'GET', path: `${routePath(route, A)}?${q}`, key: A.key } satisfies Req;
    });

  return fc.oneof(
    { arbitrary: bodyMutation, weight: 5 },
    { arbitrary: malformedJson, weight: 2 },
    { arbitrary: malformedId, weight: 3 },
    { arbitrary: foreignIds, weight: 2 },
    { arbitrary: foreignBodyIds, weight: 1 },
    { arbitrary: badQuery, weight: 2 },
  );
}

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t, { runtime: false });
  A = await seedCompany(api, 'A');
  B = await seedCompany(api, 'B');
});
afterAll(async () => {
  await api?.close();
  await t?.close();
});

describe('fuzz', () => {
  it('generates no body its route would accept (a valid body answered 2xx is not a finding)', () => {
    const routes = allRoutes();
    const byKey = new Map(routes.map((r) => [`${r.method} ${r.path}`, r]));
    expect(bodyAccepted(byKey.get('POST /api/agents/:id/wakeup')!, '{}')).toBe(true);
    expect(bodyAccepted(byKey.get('POST /api/agents/:id/wakeup')!, '{"source":"on_demand"}')).toBe(true);
    expect(bodyAccepted(byKey.get('POST /api/agents/:id/wakeup')!, '{')).toBe(false);
    expect(bodyAccepted(byKey.get('POST /api/environments/:id/leases')!, JSON.stringify({ environmentId: randomUUID() }))).toBe(false);
    let checked = 0;
    for (const req of fc.sample(arbitraryRequest(routes), { numRuns: 3000, seed: 42 }) as Array<Req | null>) {
      if (req === null || req.raw === undefined || req.key !== A.key && req.key !== api.adminKey) continue;
      const route = routes.find((r) => r.method === req.method && r.body && routePath(r, A) === req.path);
      if (!route) continue; // a malformed or foreign id: refused for its path, whatever the body
      if (req.raw.includes(B.env) || req.raw.includes(B.run)) continue; // another company's ids: refused for them
      checked++;
      expect(bodyAccepted(route, req.raw, req.contentType), `${req.method} ${req.path} ${req.raw.slice(0, 200)}`).toBe(false);
    }
    expect(checked).toBeGreaterThan(500);
  });

  it('2,000+ bad requests: all 4xx, none 5xx, the database unchanged', async () => {
    const before = await databaseState();
    const statuses = new Map<number, number>();
    const categories = new Map<string, number>();
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(arbitraryRequest(allRoutes()), async (generated) => {
        const req = generated as Req | null;
        if (req === null) return true; // a mutation that happened to stay valid: not a bad request
        const headers: Record<string, string> = { authorization: `Bearer ${req.key}` };
        if (req.raw !== undefined) headers['content-type'] = req.contentType ?? 'application/json';
        const res = await fetch(`${api.url}${req.path}`, { method: req.method, headers, ...(req.raw !== undefined ? { body: req.raw } : {}) });
        const text = await res.text();
        sent++;
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        const code = (() => {
          try {
            return (JSON.parse(text) as { error?: { code?: string } }).error?.code ?? 'none';
          } catch {
            return 'not-json';
          }
        })();
        categories.set(code, (categories.get(code) ?? 0) + 1);
        if (res.status < 400 || res.status >= 500 || code === 'not-json' || code === 'none') {
          throw new Error(`${req.method} ${req.path.slice(0, 200)} body ${String(req.raw).slice(0, 300)} -> ${res.status} ${text.slice(0, 500)}`);
        }
        return true;
      }),
      { numRuns: 2600, seed: Number(process.env.BERTH_FUZZ_SEED ?? Date.now() % 1e9), endOnFailure: true },
    );
    expect(sent).toBeGreaterThanOrEqual(2000);
    expect(await databaseState()).toEqual(before);
    console.log(`fuzz: ${sent} requests; statuses ${JSON.stringify(Object.fromEntries(statuses))}; codes ${JSON.stringify(Object.fromEntries(categories))}`);
  });
});
