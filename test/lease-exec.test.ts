// Commands on a lease: a lease acquired with provision: true gets its environment's
// workspace made by the driver, and its holder (company key, or the run's own token, with
// the fence) runs commands there, buffered or streamed, with a timeout that stops the whole
// process tree; release hands the workspace to the resource GC.
import { existsSync, mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openTestDb, type TestDb } from './support/db.js';
import { startTestApi, type TestApi } from './support/http.js';
import { isAlive, waitFor } from './support/wait.js';

let t: TestDb;
let api: TestApi;
let co: { id: string; key: string };
let envId: string;
const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-exec-ws-'));

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t, { runtime: true, workspaceRoot });
  co = await api.company('Exec Co');
  envId = (await t.services.environments.ensureLocalEnvironment(co.id)).id;
});
afterAll(async () => {
  await api?.close();
  await t?.close();
  rmSync(workspaceRoot, { recursive: true, force: true });
});

const post = (path: string, body: unknown, key = co.key) => api.call('POST', path, { key, body });
type Lease = { id: string; fence: number; resourceId: string | null; status: string; driverState: Record<string, unknown> };

async function provisioned(extra: Record<string, unknown> = {}): Promise<Lease> {
  const r = await post(`/api/environments/${envId}/leases`, { ttlSeconds: 120, provision: true, ...extra });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.lease;
}
const exec = (lease: Lease, body: Record<string, unknown>, key = co.key) => post(`/api/environment-leases/${lease.id}/exec`, { fence: lease.fence, ...body }, key);

function expectError(r: { status: number; body: any }, status: number, code: string, field?: string) {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(r.body.error.code).toBe(code);
  if (field) expect(r.body.error.fields.map((f: { path: string }) => f.path)).toContain(field);
}

describe('a provisioned lease', () => {
  it('owns a workspace its driver made, recorded as a leased resource', async () => {
    const lease = await provisioned();
    expect(lease.resourceId).toMatch(/^[0-9a-f-]{36}$/);
    const cwd = lease.driverState.cwd as string;
    expect(realpathSync(cwd).startsWith(realpathSync(workspaceRoot))).toBe(true);
    expect(existsSync(cwd)).toBe(true);
    const res = await t.services.resources.get(lease.resourceId!);
    expect(res.status).toBe('leased');
    expect(res.leaseId).toBe(lease.id);
  });

  it('is the same lease on a repeated acquire with the same idempotency key (200), provisioned once', async () => {
    const first = await provisioned({ idempotencyKey: 'exec-once' });
    const again = await post(`/api/environments/${envId}/leases`, { ttlSeconds: 120, provision: true, idempotencyKey: 'exec-once' });
    expect(again.status).toBe(200);
    expect(again.body.lease.id).toBe(first.id);
    expect(again.body.lease.resourceId).toBe(first.resourceId);
  });
});

describe('POST /api/environment-leases/:id/exec', () => {
  it('runs argv in the workspace: exit code, stdout and stderr apart, the variables given', async () => {
    const lease = await provisioned();
    const r = await exec(lease, { command: ['sh', '-c', 'echo out; echo err >&2; pwd; echo "$FOO $PAPERCLIP_LEASE_ID"; exit 3'], env: { FOO: 'bar' } });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.exitCode).toBe(3);
    expect(r.body.timedOut).toBe(false);
    expect(r.body.stderr).toBe('err\n');
    const lines = r.body.stdout.split('\n');
    expect(lines[0]).toBe('out');
    expect(realpathSync(lines[1])).toBe(realpathSync(lease.driverState.cwd as string));
    expect(lines[2]).toBe(`bar ${lease.id}`);
  });

  it('starts in a directory inside the workspace; a path out of it is refused, naming cwd', async () => {
    const lease = await provisioned();
    expect((await exec(lease, { command: ['mkdir', '-p', 'sub/dir'] })).body.exitCode).toBe(0);
    const r = await exec(lease, { command: ['pwd'], cwd: 'sub/dir' });
    expect(r.body.stdout.trim().endsWith('/sub/dir')).toBe(true);
    expectError(await exec(lease, { command: ['pwd'], cwd: '../elsewhere' }), 422, 'invalid', 'cwd');
    expectError(await exec(lease, { command: ['pwd'], cwd: '/etc' }), 422, 'invalid', 'cwd');
  });

  it('refuses bad input by name, and leases that cannot take a command', async () => {
    const lease = await provisioned();
    expectError(await exec(lease, { command: [] }), 422, 'invalid', 'command');
    expectError(await exec(lease, { command: ['true'], timeoutSeconds: 0 }), 422, 'invalid', 'timeoutSeconds');
    expectError(await exec(lease, { command: ['true'], env: { 'BAD-NAME': 'x' } }), 422, 'invalid');
    expectError(await exec(lease, { command: ['true'], surprise: 1 }), 422, 'invalid');
    expectError(await exec({ ...lease, fence: lease.fence + 1000 }, { command: ['true'] }), 409, 'stale_fence');
    const bare = (await post(`/api/environments/${envId}/leases`, { ttlSeconds: 60 })).body.lease;
    expectError(await exec(bare, { command: ['true'] }), 409, 'no_workspace');
    const other = await api.company('Exec Other');
    expect((await exec(lease, { command: ['true'] }, other.key)).status).toBe(404);
    expect((await post(`/api/environment-leases/${lease.id}/release`, { fence: lease.fence })).status).toBe(200);
    expectError(await exec(lease, { command: ['true'] }), 409, 'lease_not_active');
  });

  it('a command that cannot start says so (exit code null, error)', async () => {
    const lease = await provisioned();
    const r = await exec(lease, { command: ['/no/such/program'] });
    expect(r.status).toBe(200);
    expect(r.body.exitCode).toBeNull();
    expect(r.body.error).toMatch(/could not start/);
  });

  it('stops the whole process tree at the timeout', async () => {
    const lease = await provisioned();
    const started = Date.now();
    const r = await exec(lease, { command: ['sh', '-c', 'sleep 300 & echo $!; wait'], timeoutSeconds: 1 });
    expect(r.body.timedOut).toBe(true);
    expect(r.body.signal).toBe('SIGTERM');
    expect(Date.now() - started).toBeLessThan(20_000);
    const child = Number(r.body.stdout.trim());
    expect(child).toBeGreaterThan(1);
    await waitFor('the background child to be gone', async () => !isAlive(child), 10_000);
  });

  it('keeps maxOutputBytes of each stream and counts the rest', async () => {
    const lease = await provisioned();
    const r = await exec(lease, { command: ['sh', '-c', "head -c 5000 /dev/zero | tr '\\0' a; echo e >&2"], maxOutputBytes: 100 });
    expect(r.body.stdout).toBe('a'.repeat(100));
    expect(r.body.stdoutTruncatedBytes).toBe(4900);
    expect(r.body.stderr).toBe('e\n');
    expect(r.body.stderrTruncatedBytes).toBe(0);
  });

  it('streams output as server-sent events, then the exit', async () => {
    const lease = await provisioned();
    const res = await fetch(`${api.url}/api/environment-leases/${lease.id}/exec`, {
      method: 'POST',
      headers: { authorization: `Bearer ${co.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ fence: lease.fence, command: ['sh', '-c', 'echo one; echo two >&2; exit 4'], stream: true }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const events = (await res.text()).split('\n\n').filter((b) => b.startsWith('event:')).map((b) => {
      const [ev, data] = b.split('\n');
      return { event: ev!.slice('event: '.length), data: JSON.parse(data!.slice('data: '.length)) };
    });
    expect(events.filter((e) => e.event === 'stdout').map((e) => e.data).join('')).toBe('one\n');
    expect(events.filter((e) => e.event === 'stderr').map((e) => e.data).join('')).toBe('two\n');
    const last = events[events.length - 1]!;
    expect(last.event).toBe('exit');
    expect(last.data.exitCode).toBe(4);
    expect(last.data.stdout).toBeUndefined();
  });

  it('writes one activity row per command: the program and its exit, never its arguments or values', async () => {
    const lease = await provisioned();
    await exec(lease, { command: ['sh', '-c', 'echo secret-arg-value'], env: { TOKEN: 'secret-env-value' } });
    const rows = (await api.call('GET', `/api/companies/${co.id}/activity?action=environment.lease_command`, { key: co.key })).body;
    const row = rows.find((a: { entityId: string }) => a.entityId === lease.id);
    expect(row.details).toMatchObject({ program: 'sh', argCount: 2, exitCode: 0, envNames: ['TOKEN'] });
    expect(JSON.stringify(rows)).not.toMatch(/secret-(arg|env)-value/);
  });

  it("a run's token runs commands on its own run's lease only", async () => {
    const agent = (await post(`/api/companies/${co.id}/agents`, {
      name: 'exec-agent',
      adapterType: 'process',
      adapterConfig: {
        command: process.execPath,
        args: ['-e', `
          const h = { authorization: 'Bearer ' + process.env.PAPERCLIP_API_KEY, 'content-type': 'application/json' };
          const u = process.env.PAPERCLIP_API_URL;
          (async () => {
            const a = await (await fetch(u + '/api/environments/' + process.env.PAPERCLIP_ENVIRONMENT_ID + '/leases', { method: 'POST', headers: h, body: JSON.stringify({ ttlSeconds: 60, provision: true }) })).json();
            const r = await (await fetch(u + '/api/environment-leases/' + a.lease.id + '/exec', { method: 'POST', headers: h, body: JSON.stringify({ fence: a.lease.fence, command: ['echo', 'from-run'] }) })).json();
            const other = await fetch(u + '/api/environment-leases/' + process.env.OTHER_LEASE + '/exec', { method: 'POST', headers: h, body: JSON.stringify({ fence: 1, command: ['true'] }) });
            console.log(JSON.stringify({ out: r.stdout, other: other.status }));
          })();`],
        env: {},
        timeoutSec: 30,
      },
    })).body;
    const foreign = await provisioned();
    await api.call('PATCH', `/api/agents/${agent.id}`, { key: co.key, body: { adapterConfig: { ...agent.adapterConfig, env: { OTHER_LEASE: foreign.id } } } });
    const run = (await post(`/api/agents/${agent.id}/wakeup`, {})).body;
    const done = await waitFor('the run to end', async () => {
      const r = (await api.call('GET', `/api/heartbeat-runs/${run.id}`, { key: co.key })).body;
      return ['succeeded', 'failed'].includes(r.status) ? r : null;
    }, 30_000);
    expect(done.status).toBe('succeeded');
    const log = (await api.call('GET', `/api/heartbeat-runs/${run.id}/log`, { key: co.key })).body;
    const line = log.chunks.map((c: { chunk: string; stream: string }) => (c.stream === 'stdout' ? c.chunk : '')).join('').trim().split('\n').pop();
    const seen = JSON.parse(line);
    expect(seen.out).toBe('from-run\n');
    expect([403, 404]).toContain(seen.other);
  });

  it('release hands the workspace to the resource GC: destroyed, the lease released', async () => {
    const lease = await provisioned();
    const cwd = lease.driverState.cwd as string;
    const rel = await post(`/api/environment-leases/${lease.id}/release`, { fence: lease.fence });
    expect(rel.status).toBe(200);
    await waitFor('the resource to be destroyed', async () => (await t.services.resources.get(lease.resourceId!)).status === 'destroyed', 15_000);
    expect(existsSync(cwd)).toBe(false);
    const after = (await api.call('GET', `/api/environment-leases/${lease.id}`, { key: co.key })).body;
    expect(after.status).toBe('released');
  });
});
