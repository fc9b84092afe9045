// Traces from a real `berth serve` (compiled), received on an OTLP/HTTP endpoint of this
// test's own: a node HTTP server on a free port that takes POST /v1/traces with JSON bodies,
// as an OpenTelemetry collector does. With OTEL_EXPORTER_OTLP_ENDPOINT pointing at it, the
// test acquires, renews and releases a lease over the API and runs an agent, stops the
// server (which sends what it buffered), and reads the spans: a span per HTTP request named
// by its route template (the child of a caller's traceparent), a span per lease operation,
// and the run's root span with its five phases, all one trace. No secret the test handed the
// server (admin key, company key, the agent's env, the collector's header) is in what was sent.
// Without the variable (or with OTEL_SDK_DISABLED=true) no module of the SDK is loaded and
// nothing is sent; a malformed endpoint stops the start without showing its value.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { distState } from '../../bin/dist-state.mjs';
import { createScratchDatabase, testBackend } from '../support/db.js';
import { serveMustFail, startServeProcess, type ServeProcess } from '../support/serve-process.js';
import { waitFor } from '../support/wait.js';

const repo = join(import.meta.dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'berth-tracing-'));
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;

type AnyValue = { stringValue?: string; intValue?: number | string; boolValue?: boolean; doubleValue?: number };
type KeyValue = { key: string; value: AnyValue };
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: KeyValue[];
  status?: { code?: number; message?: string };
}
interface OtlpBody {
  resourceSpans: Array<{ resource?: { attributes?: KeyValue[] }; scopeSpans: Array<{ scope?: { name?: string }; spans: OtlpSpan[] }> }>;
}

/** A span as the test reads it: its attributes flattened to plain values. */
interface Received {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  attrs: Record<string, string | number | boolean>;
  status: number;
  resource: Record<string, string | number | boolean>;
}

function plain(v: AnyValue): string | number | boolean {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.boolValue !== undefined) return v.boolValue;
  return v.doubleValue ?? '';
}
const flat = (kvs: KeyValue[] = []) => Object.fromEntries(kvs.map((kv) => [kv.key, plain(kv.value)]));

/** The test's OTLP/HTTP endpoint: what arrives at POST /v1/traces, raw and parsed. */
interface Receiver {
  url: string;
  raw: string[];
  headers: IncomingHttpHeaders[];
  spans(): Received[];
  close(): Promise<void>;
}

async function startReceiver(): Promise<Receiver> {
  const raw: string[] = [];
  const headers: IncomingHttpHeaders[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end();
        return;
      }
      raw.push(Buffer.concat(chunks).toString('utf8'));
      headers.push(req.headers);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    raw,
    headers,
    spans() {
      return raw.flatMap((text) =>
        (JSON.parse(text) as OtlpBody).resourceSpans.flatMap((rs) =>
          rs.scopeSpans.flatMap((ss) =>
            ss.spans.map((s) => ({
              traceId: s.traceId,
              spanId: s.spanId,
              parentSpanId: s.parentSpanId ?? '',
              name: s.name,
              kind: s.kind,
              attrs: flat(s.attributes),
              status: s.status?.code ?? 0,
              resource: flat(rs.resource?.attributes),
            })),
          ),
        ),
      );
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

const scratches: Array<{ drop: () => Promise<void> }> = [];
/** The environment of a server on this file's backend: PGlite under its BERTH_HOME, or a scratch PostgreSQL database. */
async function serverEnv(name: string, extra: Record<string, string>): Promise<Record<string, string> & { BERTH_HOME: string }> {
  const db = testBackend() === 'postgres' ? await createScratchDatabase() : null;
  if (db) scratches.push(db);
  const moduleLog = join(dir, `${name}.modules`);
  writeFileSync(moduleLog, '');
  return {
    BERTH_HOME: join(dir, name),
    ...(db ? { DATABASE_URL: db.url } : {}),
    // None of the machine's own OpenTelemetry settings: each server gets only the test's.
    OTEL_EXPORTER_OTLP_ENDPOINT: '',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '',
    OTEL_SDK_DISABLED: '',
    OTEL_TRACES_EXPORTER: '',
    OTEL_EXPORTER_OTLP_PROTOCOL: '',
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: '',
    // Every @opentelemetry module the server resolves, into a file (module-hooks.mjs).
    NODE_OPTIONS: `--import ${pathToFileURL(join(import.meta.dirname, 'module-log.mjs')).href}`,
    BERTH_TEST_MODULE_LOG: moduleLog,
    ...extra,
  };
}

/** The @opentelemetry packages a server loaded (from its module log), e.g. `sdk-trace`. */
function loadedPackages(name: string): string[] {
  const lines = readFileSync(join(dir, `${name}.modules`), 'utf8').split('\n').filter(Boolean);
  return [...new Set(lines.map((u) => /\/node_modules\/@opentelemetry\/([^/]+)\//.exec(u)?.[1] ?? u))].sort();
}

/** A company, an agent that prints a line (with a secret in its env), and one succeeded run of it. */
async function companyAndRun(berth: ServeProcess, agentSecret: string): Promise<{ key: string; companyId: string; runId: string }> {
  const co = (await berth.call('POST', '/api/companies', { body: { name: 'Traced' } })).body;
  const key = co.apiKey as string;
  const companyId = co.company.id as string;
  const agent = (
    await berth.call('POST', `/api/companies/${companyId}/agents`, {
      key,
      body: { name: 'echo', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo traced-run'], env: { AGENT_TOKEN: agentSecret } } },
    })
  ).body.id as string;
  const runId = (await berth.call('POST', `/api/agents/${agent}/wakeup`, { key, body: {} })).body.id as string;
  const run = await waitFor('the run to end', async () => {
    const r = (await berth.call('GET', `/api/heartbeat-runs/${runId}`, { key })).body;
    return ['queued', 'running'].includes(r.status) ? null : r;
  }, 30_000, 50);
  expect(run.status).toBe('succeeded');
  return { key, companyId, runId };
}

beforeAll(() => {
  if (!distState().current) {
    const built = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: repo, encoding: 'utf8' });
    if (built.status !== 0) throw new Error(`build failed: ${built.stdout}${built.stderr}`);
  }
});

afterAll(async () => {
  for (const s of scratches) await s.drop();
  rmSync(dir, { recursive: true, force: true });
});

describe('traces over OTLP/HTTP from berth serve', () => {
  it('sends a span per request, lease operation and run phase; the run is one trace; no secret is in them', async () => {
    const receiver = await startReceiver();
    const collectorToken = `collector-secret-${Math.random().toString(36).slice(2)}`;
    const agentSecret = `agent-secret-${Math.random().toString(36).slice(2)}`;
    const serviceName = `berth-traced-${process.pid}`;
    const berth = await startServeProcess(
      await serverEnv('on', {
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_EXPORTER_OTLP_HEADERS: `x-collector-token=${collectorToken}`,
        OTEL_SERVICE_NAME: serviceName,
        OTEL_BSP_SCHEDULE_DELAY: '200',
      }),
    );
    let stopped = false;
    try {
      // The serving line says where spans go.
      expect(berth.output()).toContain(`"tracing":"${receiver.url}/v1/traces"`);
      const { key, companyId, runId } = await companyAndRun(berth, agentSecret);

      // A lease by the API: acquired (by a caller that sends its own traceparent), renewed, released.
      const env = (await berth.call('POST', `/api/companies/${companyId}/environments`, { key, body: { name: 'slots', driver: 'sandbox', config: { provider: 'p' }, capacity: 3 } })).body.id as string;
      const callerTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
      const callerSpan = '00f067aa0ba902b7';
      const acquired = await fetch(`${berth.url}/api/environments/${env}/leases`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', traceparent: `00-${callerTrace}-${callerSpan}-01` },
        body: JSON.stringify({ ttlSeconds: 600 }),
      });
      expect(acquired.status).toBe(201);
      const lease = ((await acquired.json()) as { lease: { id: string; fence: number } }).lease;
      expect((await berth.call('POST', `/api/environment-leases/${lease.id}/renew`, { key, body: { fence: lease.fence, ttlSeconds: 600 } })).status).toBe(200);
      expect((await berth.call('POST', `/api/environment-leases/${lease.id}/release`, { key, body: { fence: lease.fence } })).status).toBe(200);
      // Refused at the database's word: its span is failed by the code, not a message.
      expect((await berth.call('POST', `/api/environment-leases/${lease.id}/renew`, { key, body: { fence: lease.fence, ttlSeconds: 600 } })).status).toBe(409);

      // The sweeps: a lease whose caller says its cleanup failed is cleaned up; one left to its ttl expires.
      const owed = (await berth.call('POST', `/api/environments/${env}/leases`, { key, body: { ttlSeconds: 600 } })).body.lease;
      expect((await berth.call('POST', `/api/environment-leases/${owed.id}/release`, { key, body: { fence: owed.fence, cleanupStatus: 'failed' } })).status).toBe(200);
      const lapsing = (await berth.call('POST', `/api/environments/${env}/leases`, { key, body: { ttlSeconds: 1 } })).body.lease;

      // Spans arrive while the server runs (batched every 200 ms here)...
      const has = (name: string, leaseId: string) => receiver.spans().some((s) => s.name === name && s.attrs['berth.lease.id'] === leaseId);
      await waitFor('the sweeps\' spans', async () => has('berth.lease.cleanup', owed.id) && has('berth.lease.expire', lapsing.id), 20_000, 100);
      await waitFor('the run\'s finish span', async () => receiver.spans().some((s) => s.name === 'berth.run.finish' && s.traceId === receiver.spans().find((r) => r.attrs['berth.run.id'] === runId && r.name === 'berth.run')?.traceId), 20_000, 100);
      // ...and what is left is sent when it stops.
      expect(await berth.stop()).toBe(0);
      stopped = true;

      const spans = receiver.spans();
      const byId = new Map(spans.map((s) => [s.spanId, s]));
      // The collector's header went with every export; the resource names the service.
      expect(receiver.headers.every((h) => h['x-collector-token'] === collectorToken)).toBe(true);
      expect(receiver.headers[0]!['content-type']).toMatch(/^application\/json/);
      expect(new Set(spans.map((s) => s.resource['service.name']))).toEqual(new Set([serviceName]));
      // Names never carry an id.
      for (const s of spans) expect(s.name, s.name).not.toMatch(UUID);

      // HTTP: a SERVER span per request, named by its route template, the child of the caller's traceparent.
      const acquireHttp = spans.find((s) => s.name === 'POST /api/environments/:id/leases')!;
      expect(acquireHttp).toBeDefined();
      expect(acquireHttp).toMatchObject({ kind: 2, traceId: callerTrace, parentSpanId: callerSpan });
      expect(acquireHttp.attrs).toMatchObject({ 'http.request.method': 'POST', 'http.route': '/api/environments/:id/leases', 'http.response.status_code': 201 });
      expect(spans.filter((s) => s.name === 'POST /api/agents/:id/wakeup')).toHaveLength(1);
      expect(spans.some((s) => s.name === 'GET /api/heartbeat-runs/:id' && s.attrs['http.response.status_code'] === 200)).toBe(true);

      // Leases: each operation a span, inside the request that asked for it.
      const leaseSpans = spans.filter((s) => s.attrs['berth.lease.id'] === lease.id);
      const acquireSpan = leaseSpans.find((s) => s.name === 'berth.lease.acquire')!;
      expect(acquireSpan).toMatchObject({ traceId: callerTrace, parentSpanId: acquireHttp.spanId });
      expect(acquireSpan.attrs).toMatchObject({ 'berth.environment.id': env, 'berth.company.id': companyId, 'berth.lease.outcome': 'granted', 'berth.lease.fence': lease.fence });
      expect(leaseSpans.find((s) => s.name === 'berth.lease.renew')!.parentSpanId).toBe(spans.find((s) => s.name === 'POST /api/environment-leases/:leaseId/renew')!.spanId);
      expect(leaseSpans.find((s) => s.name === 'berth.lease.release')!.attrs).toMatchObject({ 'berth.lease.status': 'released', 'berth.lease.changed': true });
      // A sweep's operation is a trace of its own (no request asked for it).
      const cleaned = spans.find((s) => s.name === 'berth.lease.cleanup' && s.attrs['berth.lease.id'] === owed.id)!;
      expect(cleaned).toMatchObject({ parentSpanId: '', attrs: expect.objectContaining({ 'berth.cleanup.ok': true, 'berth.lease.status': 'released' }) });
      expect(spans.find((s) => s.name === 'berth.lease.expire' && s.attrs['berth.lease.id'] === lapsing.id)).toMatchObject({ parentSpanId: '', attrs: expect.objectContaining({ 'berth.lease.count': 1 }) });
      const refused = spans.filter((s) => s.name === 'berth.lease.renew' && s.status === 2);
      expect(refused).toHaveLength(1);
      expect(refused[0]!.attrs['error.type']).toBe('lease_not_active');

      // The run: a root span with its five phases as children, and everything in its trace below it.
      const root = spans.find((s) => s.name === 'berth.run' && s.attrs['berth.run.id'] === runId)!;
      expect(root).toBeDefined();
      expect(root.parentSpanId).toBe('');
      expect(root.attrs).toMatchObject({ 'berth.company.id': companyId, 'berth.run.status': 'succeeded', 'berth.environment.driver': 'local' });
      const trace = spans.filter((s) => s.traceId === root.traceId);
      const phases = trace.filter((s) => s.parentSpanId === root.spanId).map((s) => s.name);
      expect(phases).toEqual(expect.arrayContaining(['berth.run.place', 'berth.run.provision', 'berth.run.start', 'berth.run.watch', 'berth.run.finish']));
      for (const p of ['place', 'provision', 'start', 'watch', 'finish']) expect(phases.filter((n) => n === `berth.run.${p}`), p).toHaveLength(1);
      for (const s of trace) {
        let at: Received | undefined = s;
        for (let hops = 0; at && at.parentSpanId && hops < 20; hops++) at = byId.get(at.parentSpanId);
        expect(at?.spanId, `${s.name} descends from berth.run`).toBe(root.spanId);
      }
      // The run's own lease operations are in its trace: the acquire under place, the release under finish.
      const place = trace.find((s) => s.name === 'berth.run.place')!;
      const finish = trace.find((s) => s.name === 'berth.run.finish')!;
      expect(trace.find((s) => s.name === 'berth.lease.acquire')).toMatchObject({ parentSpanId: place.spanId, attrs: expect.objectContaining({ 'berth.run.id': runId }) });
      expect(trace.some((s) => s.name === 'berth.lease.release' && s.parentSpanId === finish.spanId)).toBe(true);
      // No other trace claims the run's spans.
      expect(spans.filter((s) => s.name.startsWith('berth.run.') && s.traceId !== root.traceId)).toEqual([]);

      // What was sent holds none of the secrets the server was given.
      const sent = receiver.raw.join('\n');
      for (const secret of [berth.adminKey, key, agentSecret, collectorToken]) expect(sent.includes(secret), 'a secret in the spans').toBe(false);
      // The SDK was loaded (the module log sees it: the test below relies on that).
      expect(loadedPackages('on')).toEqual(expect.arrayContaining(['sdk-trace', 'exporter-trace-otlp-http']));
    } finally {
      if (!stopped) await berth.stop();
      await receiver.close();
    }
  });

  it('loads no module of the SDK and sends nothing without OTEL_EXPORTER_OTLP_ENDPOINT, or with OTEL_SDK_DISABLED=true', async () => {
    const receiver = await startReceiver();
    try {
      // No endpoint at all (other OpenTelemetry variables set): nothing of the SDK is loaded.
      const off = await startServeProcess(await serverEnv('off', { OTEL_SERVICE_NAME: 'berth-untraced', OTEL_EXPORTER_OTLP_HEADERS: 'x-collector-token=unused' }));
      try {
        await companyAndRun(off, 'unused-secret');
        expect(off.output()).not.toContain('"tracing"');
      } finally {
        expect(await off.stop()).toBe(0);
      }
      expect(loadedPackages('off').filter((p) => p !== 'api')).toEqual([]);

      // An endpoint (this receiver's), but the SDK disabled: nothing arrives, nothing is loaded.
      const disabled = await startServeProcess(await serverEnv('disabled', { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_SDK_DISABLED: 'true', OTEL_BSP_SCHEDULE_DELAY: '200' }));
      try {
        await companyAndRun(disabled, 'unused-secret');
        await new Promise((r) => setTimeout(r, 600));
      } finally {
        expect(await disabled.stop()).toBe(0);
      }
      expect(loadedPackages('disabled').filter((p) => p !== 'api')).toEqual([]);
      expect(receiver.raw).toEqual([]);
    } finally {
      await receiver.close();
    }
  });

  it('keeps serving and stops in time when the endpoint does not answer, and says so in its log', async () => {
    // A port nothing listens on: taken, then let go.
    const gone = await startReceiver();
    await gone.close();
    const berth = await startServeProcess(await serverEnv('down', { OTEL_EXPORTER_OTLP_ENDPOINT: `${gone.url}/`, OTEL_BSP_SCHEDULE_DELAY: '100' }));
    try {
      await companyAndRun(berth, 'unused-secret');
      await waitFor('the exporter\'s failure in the log', async () =>
        berth.output().split('\n').some((line) => line.includes('tracing: the OpenTelemetry exporter reported a problem') && line.includes('ECONNREFUSED')), 30_000, 100);
    } finally {
      const started = Date.now();
      expect(await berth.stop()).toBe(0);
      // The unsent spans cost the stop at most the tracing shutdown's bound (5 s), beyond its own second of grace.
      expect(Date.now() - started).toBeLessThan(12_000);
    }
  });

  it('refuses to start on a malformed endpoint or a protocol it does not speak, without showing the value', async () => {
    const secretish = 'not a url, token=hidden-value-1234';
    const bad = await serveMustFail(await serverEnv('bad-url', { OTEL_EXPORTER_OTLP_ENDPOINT: secretish }));
    expect(bad.code).not.toBe(0);
    expect(bad.output).toContain('OTEL_EXPORTER_OTLP_ENDPOINT is not a URL');
    expect(bad.output).not.toContain('hidden-value-1234');
    const grpc = await serveMustFail(await serverEnv('grpc', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }));
    expect(grpc.code).not.toBe(0);
    expect(grpc.output).toContain('OTEL_EXPORTER_OTLP_PROTOCOL must be http/json');
  });
});
