// Every secret field is sealed at rest and never shown: an SSH key, a sandbox provider's
// options, environment envVars values, a process agent's env values and an http agent's
// headers values, each made through a real `berth serve` with a marker string. The marker
// is then looked for in every API answer, the server's log, the activity rows, the
// database (a pg_dump on PostgreSQL, the PGlite files in BERTH_HOME) and BERTH_HOME: only
// ciphertext. Runs still get the clear values (the agent prints them hex-encoded, so its own
// output does not carry the marker either).
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, queryRows } from '../src/db/client.js';
import { createScratchDatabase, testBackend } from './support/db.js';
import { startServeProcess, type ServeProcess } from './support/serve-process.js';
import { newPrivateKey } from './support/sshd.js';
import { waitFor } from './support/wait.js';

const MARK = `zqm${randomBytes(6).toString('hex')}`;
const secret = (kind: string) => `${MARK}-${kind}`;
/** A real key (Berth refuses one it cannot read); one of its base64 lines is looked for like MARK. */
const SSH_KEY = newPrivateKey();
const KEY_MARK = SSH_KEY.split('\n')[2]!;
/** Not a secret (an environment's description): must be found where the secrets must not, or the search proves nothing. */
const CONTROL = `ctl${randomBytes(6).toString('hex')}`;
const hex = (s: string) => Buffer.from(s).toString('hex');

const home = mkdtempSync(join(tmpdir(), 'berth-at-rest-'));
let scratch: Awaited<ReturnType<typeof createScratchDatabase>> | null = null;
let server: ServeProcess;
let hook: Server;
const hookHeaders: Array<Record<string, string | string[] | undefined>> = [];
/** Every API answer's text, kept for the search. */
const answers: string[] = [];

async function call(method: string, path: string, key: string, body?: unknown) {
  const r = await server.call(method, path, { key, ...(body !== undefined ? { body } : {}) });
  answers.push(`${method} ${path} ${r.status} ${r.text}`);
  return r;
}

/** Every file under dir whose bytes contain text. */
function filesContaining(dir: string, text: string): string[] {
  const needle = Buffer.from(text);
  const found: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && readFileSync(p).includes(needle)) found.push(p);
    }
  };
  walk(dir);
  return found;
}

function pgDumpBinary(): string {
  for (const p of ['/usr/bin/pg_dump', ...readdirSync('/usr/lib/postgresql').map((v) => `/usr/lib/postgresql/${v}/bin/pg_dump`)]) {
    try {
      if (statSync(p).isFile()) return p;
    } catch {
      /* try the next */
    }
  }
  throw new Error('pg_dump not found (looked in /usr/bin and /usr/lib/postgresql/*/bin)');
}

let company: { id: string; key: string };
let ids: { ssh: string; sandbox: string; local: string; processAgent: string; httpAgent: string; processRun: string; httpRun: string };

beforeAll(async () => {
  hook = createServer((req, res) => {
    hookHeaders.push(req.headers);
    req.resume();
    req.on('end', () => res.end('ok'));
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
  // The http agent posts to this test's own loopback server: the operator allows it.
  const env: Record<string, string> & { BERTH_HOME: string } = { BERTH_HOME: home, BERTH_HTTP_ALLOW_NETWORKS: '127.0.0.1/32' };
  if (testBackend() === 'postgres') {
    scratch = await createScratchDatabase();
    env.DATABASE_URL = scratch.url;
  }
  server = await startServeProcess(env);

  const co = await call('POST', '/api/companies', server.adminKey, { name: 'Sealed Co' });
  expect(co.status).toBe(201);
  company = { id: co.body.company.id, key: co.body.apiKey };
  const k = company.key;
  const envs = `/api/companies/${company.id}/environments`;
  const ssh = await call('POST', envs, k, {
    name: 'ssh',
    description: CONTROL,
    driver: 'ssh',
    config: { host: 'build.invalid', username: 'agent', remoteWorkspacePath: '/srv', strictHostKeyChecking: false, privateKey: SSH_KEY },
    envVars: { SSH_SIDE: secret('ssh-envvar') },
  });
  const sandbox = await call('POST', envs, k, { name: 'sbx', driver: 'sandbox', config: { provider: 'e2b', options: { apiKey: secret('sandbox-apikey'), template: 'base', nested: { token: secret('sandbox-nested') } } } });
  const local = await call('POST', envs, k, { name: 'here', driver: 'local', envVars: { ENV_SECRET: secret('local-envvar') } });
  for (const r of [ssh, sandbox, local]) expect(r.status, r.text).toBe(201);
  const agents = `/api/companies/${company.id}/agents`;
  const script = "console.log('env=' + Buffer.from(process.env.ENV_SECRET).toString('hex') + ' agent=' + Buffer.from(process.env.AGENT_SECRET).toString('hex'))";
  const processAgent = await call('POST', agents, k, {
    name: 'printer',
    adapterType: 'process',
    defaultEnvironmentId: local.body.id,
    adapterConfig: { command: process.execPath, args: ['-e', script], env: { AGENT_SECRET: secret('agent-env') } },
  });
  const hookUrl = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hook`;
  const httpAgent = await call('POST', agents, k, { name: 'caller', adapterType: 'http', defaultEnvironmentId: local.body.id, adapterConfig: { url: hookUrl, headers: { 'X-Api-Token': secret('http-header') } } });
  for (const r of [processAgent, httpAgent]) expect(r.status, r.text).toBe(201);
  // Change some secrets too: an update seals as a create does.
  expect((await call('PATCH', `/api/environments/${sandbox.body.id}`, k, { envVars: { PATCHED: secret('patched-envvar') } })).status).toBe(200);
  expect((await call('PATCH', `/api/environments/${ssh.body.id}`, k, { config: { host: 'build2.invalid', username: 'agent', remoteWorkspacePath: '/srv', strictHostKeyChecking: false } })).status).toBe(200);

  const runs: string[] = [];
  for (const agent of [processAgent.body.id, httpAgent.body.id]) {
    const run = await call('POST', `/api/agents/${agent}/wakeup`, k, {});
    expect(run.status, run.text).toBe(202);
    runs.push(run.body.id);
    await waitFor('the run to finish', async () => !['queued', 'running'].includes((await call('GET', `/api/heartbeat-runs/${run.body.id}`, k)).body.status), 60_000, 100);
  }
  ids = { ssh: ssh.body.id, sandbox: sandbox.body.id, local: local.body.id, processAgent: processAgent.body.id, httpAgent: httpAgent.body.id, processRun: runs[0]!, httpRun: runs[1]! };

  // Read everything back through every listing and show route.
  for (const path of [envs, `/api/environments/${ids.ssh}`, `/api/environments/${ids.sandbox}`, `/api/environments/${ids.local}`, agents, `/api/agents/${ids.processAgent}`, `/api/agents/${ids.httpAgent}`,
    `/api/companies/${company.id}/activity?limit=500`, `/api/companies/${company.id}/heartbeat-runs`, `/api/heartbeat-runs/${ids.processRun}`, `/api/heartbeat-runs/${ids.processRun}/log`, `/api/heartbeat-runs/${ids.httpRun}/log`,
    `/api/environments/${ids.local}/leases`, '/api/openapi.json']) {
    const r = await call('GET', path, k);
    expect(r.status, `${path}: ${r.text}`).toBe(200);
  }
}, 180_000);

afterAll(async () => {
  await server?.stop();
  await new Promise((r) => hook?.close(r));
  await scratch?.drop();
  rmSync(home, { recursive: true, force: true });
});

describe('secrets at rest', () => {
  it('the runs got the clear values: the process its env vars, the http endpoint its header', async () => {
    const [proc, http] = [await call('GET', `/api/heartbeat-runs/${ids.processRun}`, company.key), await call('GET', `/api/heartbeat-runs/${ids.httpRun}`, company.key)];
    expect(proc.body.status, proc.text).toBe('succeeded');
    expect(http.body.status, http.text).toBe('succeeded');
    const log = await call('GET', `/api/heartbeat-runs/${ids.processRun}/log`, company.key);
    expect(log.text).toContain(`env=${hex(secret('local-envvar'))} agent=${hex(secret('agent-env'))}`);
    expect(hookHeaders.map((h) => h['x-api-token'])).toEqual([secret('http-header')]);
  });

  it('reads show secrets by name only', async () => {
    const ssh = (await call('GET', `/api/environments/${ids.ssh}`, company.key)).body;
    expect(ssh.config).toMatchObject({ hasPrivateKey: true, host: 'build2.invalid' });
    expect(ssh.envVarNames).toEqual(['SSH_SIDE']);
    const sandbox = (await call('GET', `/api/environments/${ids.sandbox}`, company.key)).body;
    expect(sandbox.config).toEqual({ provider: 'e2b', optionNames: ['apiKey', 'nested', 'template'] });
    const proc = (await call('GET', `/api/agents/${ids.processAgent}`, company.key)).body;
    expect(proc.adapterConfig.envNames).toEqual(['AGENT_SECRET']);
    expect(proc.adapterConfig).not.toHaveProperty('env');
    const http = (await call('GET', `/api/agents/${ids.httpAgent}`, company.key)).body;
    expect(http.adapterConfig.headerNames).toEqual(['X-Api-Token']);
    expect(http.adapterConfig).not.toHaveProperty('headers');
  });

  it('no API answer carries a secret, in clear or as ciphertext', () => {
    expect(answers.length).toBeGreaterThan(20);
    for (const a of answers) {
      expect(a).not.toContain(MARK);
      expect(a).not.toContain(KEY_MARK);
      expect(a).not.toContain('enc:v1:');
    }
    expect(answers.join('\n')).toContain(CONTROL);
  });

  it('neither the activity rows, the database, the server log nor BERTH_HOME holds a secret in clear', async () => {
    const log = server.output();
    expect(log).toContain('"msg":"request"');
    expect(log).not.toContain(MARK);
    expect(log).not.toContain(KEY_MARK);
    expect(await server.stop()).toBe(0);

    if (scratch) {
      const dump = spawnSync(pgDumpBinary(), ['--dbname', scratch.url, '--data-only'], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 });
      expect(dump.status, dump.stderr).toBe(0);
      expect(dump.stdout).toContain(CONTROL);
      expect(dump.stdout).toContain('enc:v1:');
      expect(dump.stdout).not.toContain(MARK);
      expect(dump.stdout).not.toContain(KEY_MARK);
    } else {
      expect(filesContaining(home, CONTROL).length, 'the description is in the PGlite files').toBeGreaterThan(0);
    }
    expect(filesContaining(home, MARK)).toEqual([]);
    expect(filesContaining(home, KEY_MARK)).toEqual([]);

    // Every value the lists name is a ciphertext in the row, and the activity holds no secret.
    const database = await openDatabase(scratch ? { databaseUrl: scratch.url } : { dataDir: join(home, 'db') });
    try {
      const [acts] = await queryRows<{ all: string; n: number }>(database.db, sql`SELECT coalesce(string_agg(row_to_json(a)::text, ''), '') AS all, count(*)::int AS n FROM activity_log a`);
      expect(acts!.n).toBeGreaterThan(5);
      expect(acts!.all).not.toContain(MARK);
      expect(acts!.all).not.toContain(KEY_MARK);
      const envRows = await queryRows<{ name: string; config: any; env_vars: Record<string, string> }>(database.db, sql`SELECT name, config, env_vars FROM environments WHERE company_id = ${company.id}`);
      const byName = Object.fromEntries(envRows.map((r) => [r.name, r]));
      const sealed = (v: unknown) => expect(String(v)).toMatch(/^enc:v1:[0-9a-f]{8}:/);
      sealed(byName.ssh!.config.privateKey);
      sealed(byName.ssh!.env_vars.SSH_SIDE);
      for (const v of Object.values(byName.sbx!.config.options)) sealed(v);
      sealed(byName.sbx!.env_vars.PATCHED);
      sealed(byName.here!.env_vars.ENV_SECRET);
      const agentRows = await queryRows<{ name: string; adapter_config: any }>(database.db, sql`SELECT name, adapter_config FROM agents WHERE company_id = ${company.id}`);
      const agents = Object.fromEntries(agentRows.map((r) => [r.name, r.adapter_config]));
      sealed(agents.printer.env.AGENT_SECRET);
      sealed(agents.caller.headers['X-Api-Token']);
    } finally {
      await database.close();
    }
  });
});

describe('rows written in clear by an older Berth', () => {
  it('still read, and are sealed in place when a server starts', async () => {
    expect(server.child.exitCode).not.toBeNull(); // the test above stopped it
    const legacy = `${MARK}-legacy`;
    const database = await openDatabase(scratch ? { databaseUrl: scratch.url } : { dataDir: join(home, 'db') });
    try {
      await queryRows(database.db, sql`UPDATE environments SET env_vars = ${JSON.stringify({ OLD: legacy })}::jsonb, config = jsonb_set(config, '{privateKey}', to_jsonb(${legacy}::text)) WHERE id = ${ids.ssh}`);
      await queryRows(database.db, sql`UPDATE agents SET adapter_config = jsonb_set(adapter_config, '{env}', ${JSON.stringify({ AGENT_SECRET: legacy })}::jsonb) WHERE id = ${ids.processAgent}`);
    } finally {
      await database.close();
    }
    const env: Record<string, string> & { BERTH_HOME: string } = { BERTH_HOME: home };
    if (scratch) env.DATABASE_URL = scratch.url;
    server = await startServeProcess(env);
    const shown = await server.call('GET', `/api/environments/${ids.ssh}`, { key: company.key });
    expect(shown.body.envVarNames).toEqual(['OLD']);
    expect(shown.text).not.toContain(MARK);
    expect(shown.text).not.toContain(KEY_MARK);
    expect((await server.call('GET', `/api/agents/${ids.processAgent}`, { key: company.key })).text).not.toContain(MARK);
    expect((await server.call('GET', `/api/agents/${ids.processAgent}`, { key: company.key })).text).not.toContain(KEY_MARK);
    await server.stop();
    const after = await openDatabase(scratch ? { databaseUrl: scratch.url } : { dataDir: join(home, 'db') });
    try {
      const [e] = await queryRows<{ config: any; env_vars: any }>(after.db, sql`SELECT config, env_vars FROM environments WHERE id = ${ids.ssh}`);
      const [a] = await queryRows<{ adapter_config: any }>(after.db, sql`SELECT adapter_config FROM agents WHERE id = ${ids.processAgent}`);
      expect(e!.config.privateKey).toMatch(/^enc:v1:/);
      expect(e!.env_vars.OLD).toMatch(/^enc:v1:/);
      expect(a!.adapter_config.env.AGENT_SECRET).toMatch(/^enc:v1:/);
      // And they open to the value they held.
      const { createServices } = await import('../src/services/index.js');
      const s = createServices(after.db);
      const testHome = process.env.BERTH_HOME;
      process.env.BERTH_HOME = home; // the server's key file
      try {
        expect((await s.environments.getWithSecrets(company.id, ids.ssh)).envVars.OLD).toBe(legacy);
        expect((await s.agents.getWithSecrets(company.id, ids.processAgent)).adapterConfig.env).toEqual({ AGENT_SECRET: legacy });
      } finally {
        process.env.BERTH_HOME = testHome;
      }
    } finally {
      await after.close();
    }
  });
});
