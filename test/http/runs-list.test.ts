// The runs list pages to its end: a keyset cursor (X-Next-Cursor, ?cursor=) over
// (created_at, id), through the API and the CLI, with rows sharing a created_at.
import { execFile } from 'node:child_process';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryRows } from '../../src/db/client.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { startTestApi, type Reply, type TestApi } from '../support/http.js';

let t: TestDb;
let api: TestApi;
let co: { id: string; key: string };
let agentId: string;
let otherAgentId: string;
const TOTAL = 1100;

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t, { runtime: false });
  co = await api.company('Pages Co');
  const mk = async (name: string) => (await api.call('POST', `/api/companies/${co.id}/agents`, { key: co.key, body: { name, adapterType: 'process', adapterConfig: { command: 'true' } } })).body.id as string;
  agentId = await mk('many');
  otherAgentId = await mk('few');
  for (let i = 0; i < TOTAL; i++) await t.services.runs.invoke(co.id, agentId);
  for (let i = 0; i < 5; i++) await t.services.runs.invoke(co.id, otherAgentId);
  // Ties on created_at: only the id can order these, and no page may lose or repeat one.
  await queryRows(t.db, sql`UPDATE heartbeat_runs SET created_at = '2030-01-01T00:00:00Z' WHERE id IN (SELECT id FROM heartbeat_runs WHERE agent_id = ${agentId} ORDER BY id LIMIT 300)`);
});
afterAll(async () => {
  await api?.close();
  await t?.close();
});

async function allPages(query: string): Promise<{ ids: string[]; pages: number[] }> {
  const ids: string[] = [];
  const pages: number[] = [];
  let cursor: string | null = null;
  for (let guard = 0; guard < 1000; guard++) {
    const r: Reply = await api.call('GET', `/api/companies/${co.id}/heartbeat-runs?${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, { key: co.key });
    expect(r.status).toBe(200);
    ids.push(...r.body.map((x: { id: string }) => x.id));
    pages.push(r.body.length);
    cursor = r.headers.get('x-next-cursor');
    if (!cursor) return { ids, pages };
  }
  throw new Error('the list never ended');
}

describe('runs list paging', () => {
  it('pages through more rows than the largest page, each row once, newest first', async () => {
    const expected = (await queryRows<{ id: string }>(t.db, sql`SELECT id FROM heartbeat_runs WHERE company_id = ${co.id} ORDER BY created_at DESC, id DESC`)).map((r) => String(r.id));
    expect(expected.length).toBe(TOTAL + 5);
    const big = await allPages('limit=500');
    expect(big.pages).toEqual([500, 500, 105]);
    expect(big.ids).toEqual(expected);
    const small = await allPages('limit=7');
    expect(small.ids).toEqual(expected);
    expect(new Set(small.ids).size).toBe(expected.length);
  });

  it('keeps its filters across pages', async () => {
    const few = await allPages(`agentId=${otherAgentId}&limit=2`);
    expect(few.pages).toEqual([2, 2, 1]);
    const many = await allPages(`agentId=${agentId}&status=queued&limit=400`);
    expect(many.ids.length).toBe(TOTAL);
  });

  it('refuses a cursor it did not write, naming the parameter', async () => {
    for (const bad of ['nope', Buffer.from('2020-01-01|x').toString('base64url'), 'x'.repeat(201)]) {
      const r = await api.call('GET', `/api/companies/${co.id}/heartbeat-runs?cursor=${bad}`, { key: co.key });
      expect(r.status).toBeGreaterThanOrEqual(400);
      expect(r.status).toBeLessThan(500);
      expect(JSON.stringify(r.body.error.fields)).toContain('cursor');
    }
  });

  it('the CLI lists every page with --all, and prints the next cursor without it', async () => {
    const env = { ...process.env, BERTH_URL: api.url, BERTH_API_KEY: co.key, BERTH_COMPANY_ID: co.id };
    // Not spawnSync: the server answering the CLI runs in this process.
    const run = (cmd: string, args: string[], o: object) =>
      new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        execFile(cmd, args, { ...o, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) =>
          resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout: String(stdout), stderr: String(stderr) }),
        );
      });
    const all = await run(process.execPath, ['bin/berth.mjs', 'runs', 'list', '--all', '--limit', '500', '--json'], { env, encoding: 'utf8', timeout: 60_000 });
    expect(all.stderr).toBe('');
    expect(all.status).toBe(0);
    expect((JSON.parse(all.stdout) as unknown[]).length).toBe(TOTAL + 5);
    const one = await run(process.execPath, ['bin/berth.mjs', 'runs', 'list', '--agent', 'few', '--limit', '3'], { env, encoding: 'utf8', timeout: 60_000 });
    expect(one.status).toBe(0);
    const cursor = /more: berth runs list --cursor (\S+)/.exec(one.stdout)?.[1];
    expect(cursor).toBeTruthy();
    const rest = await run(process.execPath, ['bin/berth.mjs', 'runs', 'list', '--agent', 'few', '--cursor', cursor!, '--json'], { env, encoding: 'utf8', timeout: 60_000 });
    expect(rest.status).toBe(0);
    expect((JSON.parse(rest.stdout) as unknown[]).length).toBe(2);
  });
});
