// Commands on a lease: a lease acquired with provision: true gets its environment's
// workspace made by the driver, and its holder (company key, or the run's own token, with
// the fence) runs commands there, buffered or streamed, with a timeout that stops the whole
// process tree; release hands the workspace to the resource GC.
import { execFile } from 'node:child_process';
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
    expectError(await exec(lease, { command: ['pwd'], cwd: '../up', stream: true }), 422, 'invalid', 'cwd');
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

describe('files in and out of a provisioned lease', () => {
  const tarOf = async (cwd: string, paths: string[]) => {
    const tar = await import('tar');
    const chunks: Buffer[] = [];
    for await (const c of tar.c({ cwd, portable: true }, paths) as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
    return Buffer.concat(chunks);
  };
  const entriesOf = async (archive: Buffer) => {
    const tar = await import('tar');
    const seen: { path: string; type: string; body: string; linkpath?: string }[] = [];
    await new Promise<void>((resolve, reject) => {
      const p = new tar.Parser({
        onReadEntry: (e) => {
          const parts: Buffer[] = [];
          e.on('data', (d: Buffer) => parts.push(d));
          e.on('end', () => seen.push({ path: String(e.path), type: e.type, body: Buffer.concat(parts).toString(), ...(e.linkpath ? { linkpath: String(e.linkpath) } : {}) }));
        },
      });
      p.on('end', resolve);
      p.on('error', reject);
      p.end(archive);
    });
    return seen;
  };
  const put = (lease: Lease, path: string, body: Buffer, type = 'application/x-tar') =>
    fetch(`${api.url}/api/environment-leases/${lease.id}/files?fence=${lease.fence}&path=${encodeURIComponent(path)}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${co.key}`, 'content-type': type },
      body: new Uint8Array(body),
    });
  const get = (lease: Lease, path: string) =>
    fetch(`${api.url}/api/environment-leases/${lease.id}/files?fence=${lease.fence}&path=${encodeURIComponent(path)}`, { headers: { authorization: `Bearer ${co.key}` } });
  /** A hand-made archive: what tar tools will not write for us (absolute names, .., links out). */
  const rawTar = async (entries: { name: string; type?: 'file' | 'symlink' | 'link' | 'fifo'; linkname?: string; body?: string }[]) => {
    // @ts-expect-error tar-stream ships no types
    const { pack } = (await import('tar-stream')).default as unknown as { pack: () => import('node:stream').Readable & { entry: (h: object, b?: string) => void; finalize: () => void } };
    const p = pack();
    for (const e of entries) p.entry({ name: e.name, type: e.type ?? 'file', ...(e.linkname ? { linkname: e.linkname } : {}) }, e.type === 'file' || !e.type ? (e.body ?? 'x') : undefined);
    p.finalize();
    const chunks: Buffer[] = [];
    for await (const c of p) chunks.push(Buffer.from(c as Buffer));
    return Buffer.concat(chunks);
  };

  it('puts an archive into a directory of the workspace and reads it back out, links as links', async () => {
    const lease = await provisioned();
    const src = mkdtempSync(join(tmpdir(), 'berth-files-src-'));
    try {
      const { mkdirSync, writeFileSync, symlinkSync } = await import('node:fs');
      mkdirSync(join(src, 'd'));
      writeFileSync(join(src, 'd', 'a.txt'), 'hello files');
      symlinkSync('a.txt', join(src, 'd', 'link'));
      const r = await put(lease, 'in/here', await tarOf(src, ['d']));
      expect(r.status, await r.clone().text()).toBe(200);
      expect(await r.json()).toEqual({ path: 'in/here', files: 1, directories: 1, links: 1, bytes: 11 });
      const cat = await exec(lease, { command: ['cat', 'in/here/d/link'] });
      expect(cat.body.stdout).toBe('hello files');
      const out = await get(lease, 'in/here/d');
      expect(out.status).toBe(200);
      expect(out.headers.get('content-type')).toBe('application/x-tar');
      const seen = await entriesOf(Buffer.from(await out.arrayBuffer()));
      expect(seen.find((e) => e.path === 'd/a.txt')?.body).toBe('hello files');
      expect(seen.find((e) => e.path === 'd/link')).toMatchObject({ type: 'SymbolicLink', linkpath: 'a.txt' });
      const rows = (await api.call('GET', `/api/companies/${co.id}/activity?action=environment.lease_files`, { key: co.key })).body;
      expect(rows.filter((a: { entityId: string }) => a.entityId === lease.id).map((a: { details: { direction: string } }) => a.details.direction).sort()).toEqual(['in', 'out']);
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });

  it('refuses, whole and naming the entry, archives that reach out of the workspace; nothing is written', async () => {
    const lease = await provisioned();
    const cases: [string, Parameters<typeof rawTar>[0]][] = [
      ['absolute', [{ name: 'ok.txt' }, { name: '/tmp/berth-abs-escape' }]],
      ['dotdot', [{ name: 'ok.txt' }, { name: 'a/../../escape.txt' }]],
      ['link out', [{ name: 'ok.txt' }, { name: 'out', type: 'symlink', linkname: '../../..' }]],
      ['absolute link', [{ name: 'ok.txt' }, { name: 'etc', type: 'symlink', linkname: '/etc' }]],
      ['hard link', [{ name: 'ok.txt' }, { name: 'h', type: 'link', linkname: 'ok.txt' }]],
      ['fifo', [{ name: 'ok.txt' }, { name: 'f', type: 'fifo' }]],
    ];
    for (const [what, entries] of cases) {
      const r = await put(lease, '', await rawTar(entries));
      expect(r.status, what).toBe(422);
      expect((await r.json()).error.message, what).toMatch(/archive was refused/);
    }
    // Nothing but the driver's own label file.
    expect((await exec(lease, { command: ['ls', '-A'] })).body.stdout).toBe('.berth-resource.json\n');
    expect(existsSync('/tmp/berth-abs-escape')).toBe(false);
    const garbage = await put(lease, '', Buffer.from('this is not a tar archive at all'.repeat(20)));
    expect(garbage.status).toBe(422);
    expect((await put(lease, '', await rawTar([{ name: 'x' }]), 'application/json')).status).toBe(415);
    expect((await put(lease, '../up', await rawTar([{ name: 'x' }]))).status).toBe(422);
  });

  it('never writes or reads through a link an agent left in the workspace', async () => {
    const lease = await provisioned();
    const outside = mkdtempSync(join(tmpdir(), 'berth-files-outside-'));
    try {
      const { writeFileSync, readFileSync } = await import('node:fs');
      writeFileSync(join(outside, 'target'), 'untouched');
      expect((await exec(lease, { command: ['sh', '-c', `ln -s ${outside} dirlink && ln -s ${outside}/target filelink`] })).body.exitCode).toBe(0);
      // Into a directory through the link: refused. Over the file link: the link is replaced, its target untouched.
      expect((await put(lease, 'dirlink', await rawTar([{ name: 'x', body: 'nope' }]))).status).toBe(422);
      const through = await put(lease, '', await rawTar([{ name: 'dirlink/x', body: 'nope' }]));
      expect(through.status).toBe(422);
      expect((await through.json()).error.message).toMatch(/symbolic link/i);
      const over = await put(lease, '', await rawTar([{ name: 'filelink', body: 'replaced' }]));
      expect(over.status).toBe(200);
      expect(readFileSync(join(outside, 'target'), 'utf8')).toBe('untouched');
      expect(existsSync(join(outside, 'x'))).toBe(false);
      // Out: a path resolving outside is refused; the link itself comes out as a link.
      expect((await get(lease, 'dirlink/target')).status).toBe(422);
      const all = await entriesOf(Buffer.from(await (await get(lease, '')).arrayBuffer()));
      expect(all.find((e) => e.path === 'dirlink')).toMatchObject({ type: 'SymbolicLink' });
      expect(all.some((e) => e.body === 'untouched')).toBe(false);
      expect((await get(lease, 'no/such')).status).toBe(404);
    } finally {
      rmSync(outside, { recursive: true, force: true });
    }
  });
});

describe('the CLI: berth lease acquire --provision, exec, cp', () => {
  const cli = (args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      // Not spawnSync: the server answering the CLI runs in this process.
      execFile(process.execPath, ['bin/berth.mjs', ...args], {
        env: { PATH: process.env.PATH!, BERTH_URL: api.url, BERTH_API_KEY: co.key, BERTH_COMPANY_ID: co.id, BERTH_HOME: workspaceRoot },
        encoding: 'utf8',
        timeout: 60_000,
      }, (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
    });

  it('runs a command with its exit code, copies a directory in and back out, and says what is wrong', async () => {
    const acquired = await cli(['lease', 'acquire', envId, '--provision', '--json']);
    expect(acquired.code, acquired.stderr).toBe(0);
    const lease = JSON.parse(acquired.stdout).lease as Lease;
    expect(lease.resourceId).toBeTruthy();
    const ran = await cli(['lease', 'exec', lease.id, '--env', 'WHO=cli', '--', 'sh', '-c', 'echo "hi $WHO"; echo warn >&2; exit 5']);
    expect(ran.code).toBe(5);
    expect(ran.stdout).toBe('hi cli\n');
    expect(ran.stderr).toBe('warn\n');
    const slow = await cli(['lease', 'exec', lease.id, '--timeout', '1', '--', 'sleep', '30']);
    expect(slow.code).toBe(124);
    const src = mkdtempSync(join(tmpdir(), 'berth-cli-cp-'));
    try {
      const { mkdirSync, writeFileSync, readFileSync } = await import('node:fs');
      mkdirSync(join(src, 'proj'));
      writeFileSync(join(src, 'proj', 'main.txt'), 'copied by the CLI');
      const up = await cli(['lease', 'cp', join(src, 'proj'), `${lease.id}:code`]);
      expect(up.code, up.stderr).toBe(0);
      expect((await cli(['lease', 'exec', lease.id, '--', 'cat', 'code/proj/main.txt'])).stdout).toBe('copied by the CLI');
      const down = await cli(['lease', 'cp', `${lease.id}:code/proj`, join(src, 'back')]);
      expect(down.code, down.stderr).toBe(0);
      expect(readFileSync(join(src, 'back', 'proj', 'main.txt'), 'utf8')).toBe('copied by the CLI');
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
    const bad = await cli(['lease', 'exec', lease.id, '--cwd', '../x', '--', 'pwd']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/cwd: must stay inside the workspace/);
    const neither = await cli(['lease', 'cp', 'a', 'b']);
    expect(neither.code).toBe(1);
    expect(neither.stderr).toMatch(/one side must be LEASE:path/);
  });
});
