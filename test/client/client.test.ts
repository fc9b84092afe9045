// `berth/client` against a real server: typed calls, Berth's error shape as BerthApiError
// (its code, message and fields), no answer as BerthConnectionError, a run followed to its
// end with followLog and waited for with waitForRun, and acquireLease idempotent by default
// (an answer lost on the way back is retried with the same key and yields the same lease).
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BerthApiError, BerthConnectionError, createClient, type BerthClient, type LogEvent } from '../../src/client/index.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { startTestApi, type TestApi } from '../support/http.js';

let t: TestDb;
let api: TestApi;
let co: { id: string; key: string };
let berth: BerthClient;
let localId: string;

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t, { runtime: true });
  co = await api.company('Client Co');
  berth = createClient({ baseUrl: api.url, apiKey: co.key });
  const { data: env } = await berth.POST('/api/companies/{companyId}/environments', { params: { path: { companyId: co.id } }, body: { name: 'here', driver: 'local' } });
  localId = env.id;
});
afterAll(async () => {
  await api?.close();
  await t?.close();
});

async function freePort(): Promise<number> {
  const s = createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe('berth/client', () => {
  it('answers typed data, with the response beside it', async () => {
    const { data, response } = await berth.GET('/api/environments/{id}', { params: { path: { id: localId } } });
    expect(response.status).toBe(200);
    expect(data.id).toBe(localId);
    expect(data.companyId).toBe(co.id);
  });

  it('throws an error status as BerthApiError with the server’s code, message and fields', async () => {
    const refused = await berth
      .POST('/api/companies/{companyId}/environments', { params: { path: { companyId: co.id } }, body: { name: '', driver: 'local' } as never })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(BerthApiError);
    const e = refused as BerthApiError;
    expect(e.status).toBe(422);
    expect(e.code).toBe('invalid');
    expect(e.fields?.map((f) => f.path)).toContain('name');

    const missing = (await berth.GET('/api/heartbeat-runs/{id}', { params: { path: { id: '00000000-0000-4000-8000-000000000000' } } }).catch((x: unknown) => x)) as BerthApiError;
    expect(missing).toBeInstanceOf(BerthApiError);
    expect([missing.status, missing.code]).toEqual([404, 'not_found']);

    const anonymous = createClient({ baseUrl: api.url });
    const denied = (await anonymous.GET('/api/companies').catch((x: unknown) => x)) as BerthApiError;
    expect([denied.status, denied.code]).toEqual([401, 'unauthorized']);
  });

  it('throws BerthConnectionError when nothing answers', async () => {
    const port = await freePort();
    const nobody = createClient({ baseUrl: `http://127.0.0.1:${port}`, apiKey: co.key });
    const err = (await nobody.GET('/api/companies').catch((x: unknown) => x)) as BerthConnectionError;
    expect(err).toBeInstanceOf(BerthConnectionError);
    expect(err.code).toBe('ECONNREFUSED');
    expect(err.message).toBe(`no Berth server answers at http://127.0.0.1:${port}`);
  });

  it('follows a run’s log to its end, and waits for a run', async () => {
    const { data: agent } = await berth.POST('/api/companies/{companyId}/agents', {
      params: { path: { companyId: co.id } },
      body: { name: 'talker', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo one; sleep 0.3; echo two >&2; echo three'] } },
    });
    const { data: queued } = await berth.POST('/api/agents/{id}/wakeup', { params: { path: { id: agent.id } }, body: { source: 'on_demand' } });
    const events: LogEvent[] = [];
    for await (const ev of berth.followLog(queued.id)) events.push(ev);
    const last = events.at(-1)!;
    expect(last.event).toBe('end');
    expect(last.event === 'end' && last.data.status).toBe('succeeded');
    const out = events.flatMap((e) => (e.event === 'log' && e.data.stream === 'stdout' ? [e.data.chunk] : [])).join('');
    const err = events.flatMap((e) => (e.event === 'log' && e.data.stream === 'stderr' ? [e.data.chunk] : [])).join('');
    expect(out).toBe('one\nthree\n');
    expect(err).toBe('two\n');
    const seqs = events.flatMap((e) => (e.event === 'log' ? [e.data.seq] : []));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));

    // Resumed after a seq: only the later chunks.
    const later: LogEvent[] = [];
    for await (const ev of berth.followLog(queued.id, { after: seqs[0]! })) later.push(ev);
    expect(later.filter((e) => e.event === 'log').map((e) => e.data)).toEqual(events.filter((e) => e.event === 'log').slice(1).map((e) => e.data));

    const { data: second } = await berth.POST('/api/agents/{id}/wakeup', { params: { path: { id: agent.id } }, body: { source: 'on_demand' } });
    const done = await berth.waitForRun(second.id, { intervalMs: 50, timeoutMs: 30_000 });
    expect(done.id).toBe(second.id);
    expect(done.status).toBe('succeeded');
    expect(done.exitCode).toBe(0);
  });

  it('followLog resumes after the last chunk when the connection drops mid-stream: every chunk once', async () => {
    const { data: agent } = await berth.POST('/api/companies/{companyId}/agents', {
      params: { path: { companyId: co.id } },
      body: { name: 'counter', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.15; done'] } },
    });
    const { data: queued } = await berth.POST('/api/agents/{id}/wakeup', { params: { path: { id: agent.id } }, body: { source: 'on_demand' } });
    // The first two log connections are cut after their first `log` event.
    const streams: string[] = [];
    const cutting = createClient({
      baseUrl: api.url,
      apiKey: co.key,
      fetch: async (req) => {
        const res = await fetch(req);
        if (!req.url.includes('/log?')) return res;
        streams.push(new URL(req.url).searchParams.get('after')!);
        if (streams.length > 2) return res;
        const reader = res.body!.getReader();
        let seen = '';
        const body = new ReadableStream<Uint8Array>({
          async pull(ctl) {
            const { value, done } = await reader.read();
            if (done) return ctl.close();
            seen += new TextDecoder().decode(value);
            const cut = seen.indexOf('event: log');
            if (cut >= 0 && seen.indexOf('\n\n', cut) >= 0) {
              ctl.enqueue(new TextEncoder().encode(seen.slice(0, seen.indexOf('\n\n', cut) + 2)));
              await reader.cancel();
              return ctl.error(Object.assign(new TypeError('terminated'), { cause: { code: 'ECONNRESET' } }));
            }
          },
        });
        return new Response(body, { status: res.status, headers: res.headers });
      },
    });
    const lines: string[] = [];
    let end: LogEvent | undefined;
    for await (const ev of cutting.followLog(queued.id, { patienceMs: 10_000 })) {
      if (ev.event === 'log' && ev.data.stream === 'stdout') lines.push(ev.data.chunk);
      if (ev.event === 'end') end = ev;
    }
    expect(streams.length).toBeGreaterThanOrEqual(3);
    expect(streams[0]).toBe('0');
    expect(Number(streams[1])).toBeGreaterThan(0);
    expect(lines.join('')).toBe('line-1\nline-2\nline-3\nline-4\nline-5\nline-6\n');
    expect(end?.event === 'end' && end.data.status).toBe('succeeded');
  });

  it('followLog throws the server’s error for a run that does not exist', async () => {
    const it = berth.followLog('00000000-0000-4000-8000-000000000000', { patienceMs: 1000 });
    const err = (await it.next().catch((x: unknown) => x)) as BerthApiError;
    expect(err).toBeInstanceOf(BerthApiError);
    expect(err.status).toBe(404);
  });

  it('acquireLease sends an idempotency key of its own, and retries a lost answer with it: one lease', async () => {
    const a = await berth.acquireLease(localId);
    const b = await berth.acquireLease(localId);
    expect(a.created).toBe(true);
    expect(b.created).toBe(true);
    expect(a.lease.id).not.toBe(b.lease.id);
    expect(a.lease.idempotencyKey).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(a.lease.idempotencyKey).not.toBe(b.lease.idempotencyKey);

    // The first acquire reaches the server, its answer is lost on the way back.
    let posts = 0;
    const lossy = createClient({
      baseUrl: api.url,
      apiKey: co.key,
      fetch: async (req) => {
        const res = await fetch(req);
        if (req.method === 'POST' && ++posts === 1) {
          await res.text();
          throw Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNRESET' } });
        }
        return res;
      },
    });
    const c = await lossy.acquireLease(localId, { ttlSeconds: 600 });
    expect(posts).toBe(2);
    expect(c.created).toBe(false); // the repeat found the lease the lost answer granted
    const { data: leases } = await berth.GET('/api/environments/{id}/leases', { params: { path: { id: localId } } });
    expect(leases.filter((l) => l.idempotencyKey === c.lease.idempotencyKey).map((l) => l.id)).toEqual([c.lease.id]);

    // A key of the caller's own is kept.
    const d = await berth.acquireLease(localId, { idempotencyKey: 'mine-1' });
    const again = await berth.acquireLease(localId, { idempotencyKey: 'mine-1' });
    expect(d.lease.idempotencyKey).toBe('mine-1');
    expect(again.lease.id).toBe(d.lease.id);
    expect(again.created).toBe(false);
    for (const l of [a, b, c, d]) {
      await berth.POST('/api/environment-leases/{leaseId}/release', { params: { path: { leaseId: l.lease.id } }, body: { fence: l.lease.fence, status: 'released' } });
    }
  });
});
