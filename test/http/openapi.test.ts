// The OpenAPI document is the contract: for every route, its request schema (checked
// with a JSON Schema validator) accepts the bodies the route accepts and refuses those
// it refuses, over a sample of generated bodies sent to the real route; and real
// answers match the document's response schemas.
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { queryRows } from '../../src/db/client.js';
import { routeKey } from '../../src/http/openapi.js';
import { hashBearerSecret } from '../../src/secrets/bearer.js';
import type { RouteDef } from '../../src/http/route.js';
import { allRoutes } from '../../src/http/routes/index.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { routePath, seedCompany, startTestApi, type SeededCompany, type TestApi } from '../support/http.js';

type Schema = Record<string, any>;
let t: TestDb;
let api: TestApi;
let A: SeededCompany;
let doc: Schema;
/** An environment a process agent may name as its default. */
let localEnv: string;
const ajv = new (Ajv2020 as unknown as typeof Ajv2020.default)({ strict: false, allErrors: true });
(addFormats as unknown as typeof addFormats.default)(ajv);

/** A body each route accepts (the same table the fuzz test starts from). */
const BASES: Record<string, Record<string, unknown>> = {
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

/**
 * Fields a route checks against stored state, which a schema cannot know: the document
 * says so in words ("validated against its driver"), and a refusal naming them is not a mismatch.
 */
const STATEFUL_FIELDS: Record<string, string[]> = {
  'PATCH /api/environments/:id': ['config'],
  'PATCH /api/agents/:id': ['adapterConfig'],
};

function operation(route: RouteDef): Schema {
  const path = route.path.replace(/:(\w+)/g, '{$1}');
  return doc.paths[path][route.method.toLowerCase()];
}

/** Every property name a body schema documents (through unions too). */
function documentedProperties(schema: Schema): string[] {
  const out = new Set<string>(Object.keys(schema.properties ?? {}));
  for (const branch of [...(schema.anyOf ?? []), ...(schema.oneOf ?? [])]) for (const p of documentedProperties(branch)) out.add(p);
  return [...out];
}

type Verdict = { accepted: boolean; status: number; fields: string[] };

async function routeVerdict(route: RouteDef, body: unknown): Promise<Verdict> {
  const r = await api.call(route.method, routePath(route, A), { key: route.access === 'admin' ? api.adminKey : A.key, raw: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
  if (r.status >= 500) throw new Error(`${routeKey(route)} ${JSON.stringify(body)} -> ${r.status} ${JSON.stringify(r.body)}`);
  const fields = ((r.body?.error?.fields ?? []) as Array<{ path: string }>).map((f) => f.path);
  // 404 and 409 come after the body was taken (an id not found, a conflict): the shape was accepted.
  if (r.status < 300 || r.status === 404 || r.status === 409) return { accepted: true, status: r.status, fields };
  if ((r.status === 400 || r.status === 422) && ['invalid', 'invalid_json'].includes(r.body?.error?.code)) return { accepted: false, status: r.status, fields };
  throw new Error(`${routeKey(route)} ${JSON.stringify(body)} -> unexpected ${r.status} ${JSON.stringify(r.body)}`);
}

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t, { runtime: false });
  A = await seedCompany(api, 'Contract Co');
  const r = await api.call('GET', '/api/openapi.json', { key: A.key });
  expect(r.status).toBe(200);
  doc = r.body;
  localEnv = (await api.call('POST', `/api/companies/${A.id}/environments`, { key: A.key, body: { name: 'local', driver: 'local' } })).body.id;
});
afterAll(async () => {
  await api?.close();
  await t?.close();
});

describe('OpenAPI contract', () => {
  it('documents a request body for exactly the routes that take one, and a response schema for every success', () => {
    for (const route of allRoutes()) {
      const op = operation(route);
      expect(op, routeKey(route)).toBeDefined();
      expect(Boolean(op.requestBody), `${routeKey(route)} requestBody`).toBe(Boolean(route.body || route.rawBody));
      for (const status of [route.status ?? 200, ...(route.alsoStatus ?? [])]) {
        const content = op.responses[String(status)]?.content ?? {};
        expect(content['application/json'] ?? content['text/event-stream'] ?? (route.produces ? content[route.produces] : undefined), `${routeKey(route)} ${status}`).toBeDefined();
        if (content['application/json']) expect(Object.keys(content['application/json'].schema).length, `${routeKey(route)} ${status} schema`).toBeGreaterThan(0);
      }
    }
  });

  it('request schemas accept what each route accepts and refuse what it refuses (generated bodies, sent for real)', async () => {
    const mismatches: string[] = [];
    let compared = 0;
    for (const route of allRoutes().filter((r) => r.body)) {
      const key = routeKey(route);
      const base = BASES[key];
      if (!base) throw new Error(`no base body for ${key}: add one`);
      const schema = operation(route).requestBody.content['application/json'].schema;
      const validate = ajv.compile(schema);
      const props = documentedProperties(schema);
      // Real ids of the company where a field names one, so "accepted" is not turned into "not found".
      const realId: Record<string, string> = { heartbeatRunId: A.run, defaultEnvironmentId: localEnv, environmentId: A.env, agentId: A.agent };
      const candidates: Array<{ body: Record<string, unknown>; touched: string }> = [{ body: base, touched: '' }];
      for (const k of Object.keys(base)) {
        const { [k]: _, ...rest } = base;
        candidates.push({ body: rest, touched: k });
      }
      candidates.push({ body: { ...base, zz_unknown: 1 }, touched: 'zz_unknown' });
      for (const p of props) {
        for (const v of [realId[p] ?? 'x', 'x', 7, -1, true, null, {}, [], '2030-01-01T00:00:00Z']) candidates.push({ body: { ...base, [p]: v }, touched: p });
      }
      const random = fc.sample(fc.record({ p: fc.constantFrom(...props), v: fc.jsonValue({ maxDepth: 2 }) }), { numRuns: 25, seed: 7 });
      for (const { p, v } of random) candidates.push({ body: { ...base, [p]: v }, touched: p });

      for (const { body, touched } of candidates) {
        const documented = validate(body) as boolean;
        const verdict = await routeVerdict(route, body);
        compared++;
        if (documented === verdict.accepted) continue;
        // A stateful field's own check reports paths inside it (or the whole value as "(input)").
        if (!verdict.accepted && (STATEFUL_FIELDS[key] ?? []).includes(touched)) continue;
        mismatches.push(`${key} ${JSON.stringify(body).slice(0, 200)}: document ${documented ? 'accepts' : `refuses (${ajv.errorsText(validate.errors)})`}, route ${verdict.accepted ? `accepts (${verdict.status})` : `refuses (${verdict.fields.join(', ')})`}`);
      }
    }
    expect(mismatches).toEqual([]);
    expect(compared).toBeGreaterThan(500);
  });

  it('answers match the response schemas of the document', async () => {
    // A company of its own: the test above changed the first one's objects.
    const R = await seedCompany(api, 'Answers Co');
    const call = async (method: string, path: string, body?: unknown) => api.call(method, path, { key: R.key, ...(body !== undefined ? { body } : {}) });
    const unique: Record<string, Record<string, unknown>> = {
      'POST /api/companies/:companyId/environments': { name: 'answers-env' },
      'POST /api/companies/:companyId/agents': { name: 'answers-agent' },
    };
    const failures: string[] = [];
    let checked = 0;
    const routes = allRoutes();
    // Reads and changes that leave the seeded objects usable, then the ones that end them.
    const order = (r: RouteDef) => (r.method === 'DELETE' ? 3 : r.path.endsWith('/archive') || r.path.endsWith('/release') || r.path.endsWith('/cancel') ? 2 : r.method === 'GET' ? 0 : 1);
    for (const route of [...routes].sort((a, b) => order(a) - order(b))) {
      const key = routeKey(route);
      const op = operation(route);
      if (!op.responses[String(route.status ?? 200)]?.content?.['application/json']) continue; // an event stream only
      let body: unknown = BASES[key] ? { ...BASES[key], ...unique[key] } : undefined;
      if (key === 'POST /api/environment-leases/:leaseId/renew' || key === 'PATCH /api/environment-leases/:leaseId/metadata' || key === 'POST /api/environment-leases/:leaseId/release') {
        const lease = (await call('GET', `/api/environment-leases/${R.lease}`)).body;
        body = { ...(body as object), fence: lease.fence };
      }
      if (key === 'POST /api/environment-leases/:leaseId/renew' || key === 'POST /api/environments/:id/leases') body = { ...(body as object), ttlSeconds: 60 };
      if (key === 'DELETE /api/environments/:id') {
        // An environment with no leases: the seeded one keeps its lease's history.
        const fresh = await call('POST', `/api/companies/${R.id}/environments`, { name: 'to-delete', driver: 'sandbox', config: { provider: 'p' } });
        const r = await call('DELETE', `/api/environments/${fresh.body.id}`);
        checkAnswer(route, r.status, r.body);
        continue;
      }
      if (key === 'DELETE /api/api-keys/:id') {
        const fresh = await call('POST', `/api/companies/${R.id}/api-keys`, { name: 'spare' });
        const r = await call('DELETE', `/api/api-keys/${fresh.body.apiKeyRecord.id}`);
        checkAnswer(route, r.status, r.body);
        continue;
      }
      if (key === 'DELETE /api/agents/:id') {
        // An agent with no runs: the seeded one has a queued run.
        const fresh = await call('POST', `/api/companies/${R.id}/agents`, { name: 'to-delete', adapterType: 'process', adapterConfig: { command: 'true' } });
        const r = await call('DELETE', `/api/agents/${fresh.body.id}`);
        checkAnswer(route, r.status, r.body);
        continue;
      }
      if (key === 'POST /api/environment-leases/:leaseId/exec') {
        // A lease with a workspace: the company's local environment, provisioned.
        const local = (await call('GET', `/api/companies/${R.id}/environments?driver=local`)).body[0]
          ?? (await call('POST', `/api/companies/${R.id}/environments`, { name: 'answers-local', driver: 'local' })).body;
        const got = (await call('POST', `/api/environments/${local.id}/leases`, { ttlSeconds: 60, provision: true })).body;
        const r = await call('POST', `/api/environment-leases/${got.lease.id}/exec`, { fence: got.lease.fence, command: ['true'] });
        checkAnswer(route, r.status, r.body);
        await call('POST', `/api/environment-leases/${got.lease.id}/release`, { fence: got.lease.fence });
        continue;
      }
      if (key === 'POST /api/environment-leases/:leaseId/files') {
        // A tar archive (the body is not JSON) into a provisioned lease of the local environment.
        const local = (await call('GET', `/api/companies/${R.id}/environments?driver=local`)).body[0]
          ?? (await call('POST', `/api/companies/${R.id}/environments`, { name: 'answers-local-files', driver: 'local' })).body;
        const got = (await call('POST', `/api/environments/${local.id}/leases`, { ttlSeconds: 60, provision: true })).body;
        const tar = await import('tar');
        const parts: Buffer[] = [];
        for await (const ch of tar.c({ cwd: process.cwd(), portable: true }, ['package.json']) as AsyncIterable<Buffer>) parts.push(Buffer.from(ch));
        const res = await fetch(`${api.url}/api/environment-leases/${got.lease.id}/files?fence=${got.lease.fence}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${R.key}`, 'content-type': 'application/x-tar' },
          body: new Uint8Array(Buffer.concat(parts)),
        });
        checkAnswer(route, res.status, await res.json());
        await call('POST', `/api/environment-leases/${got.lease.id}/release`, { fence: got.lease.fence });
        continue;
      }
      if (key === 'GET /api/agents/me') {
        // Answers a run's own token only: give the seeded (queued) run one.
        const token = `brt_answers_${R.run.slice(0, 8)}`;
        await queryRows(t.db, sql`UPDATE heartbeat_runs SET token_hash = ${hashBearerSecret(token)} WHERE id = ${R.run}`);
        const r = await api.call('GET', '/api/agents/me', { key: token });
        checkAnswer(route, r.status, r.body);
        continue;
      }
      const r = await api.call(route.method, routePath(route, R), { key: route.access === 'admin' || route.path === '/api/companies' ? api.adminKey : R.key, ...(body !== undefined ? { body } : {}) });
      checkAnswer(route, r.status, r.body);
    }
    function checkAnswer(route: RouteDef, status: number, body: unknown): void {
      const schema = operation(route).responses[String(status)]?.content?.['application/json']?.schema;
      if (status >= 300 || !schema) return void failures.push(`${routeKey(route)} answered ${status} (no success schema for it) ${JSON.stringify(body).slice(0, 300)}`);
      const validate = ajv.compile(schema);
      checked++;
      if (!validate(body)) failures.push(`${routeKey(route)} ${status}: ${ajv.errorsText(validate.errors)} in ${JSON.stringify(body).slice(0, 300)}`);
    }
    expect(failures).toEqual([]);
    expect(checked).toBe(routes.filter((r) => operation(r).responses[String(r.status ?? 200)]?.content?.['application/json']).length);
  });
});
