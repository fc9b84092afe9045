// An SSH run reaches the server that started it: its PAPERCLIP_API_URL is a port on
// the remote's loopback forwarded back over the SSH connection (not the server's own
// address, which from a real remote host is that host itself), it works for the
// run's token, it is the run's alone and gone when the run ends, and a host whose
// sshd refuses forwarding fails the run saying so.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, type ServerType } from '@hono/node-server';
import pino from 'pino';
import { localDriver } from '../../src/drivers/local/driver.js';
import { sshDriver, type SshDriver } from '../../src/drivers/ssh/driver.js';
import type { HeartbeatRun } from '../../src/domain/types.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { createApp } from '../../src/http/app.js';
import { ADMIN_KEY_PREFIX } from '../../src/http/auth.js';
import { hashBearerSecret } from '../../src/secrets/bearer.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { startTestSshd, type TestSshd } from '../support/sshd.js';
import { waitFor } from '../support/wait.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

let t: TestDb;
let sshd: TestSshd;
let noForwardSshd: TestSshd;
let ssh: SshDriver;
let runtime: Runtime;
let server: ServerType;
let url: string;
let serverPort: number;
let companyId: string;
const runtimeErrors = collectRuntimeErrors();
const root = mkdtempSync(join(tmpdir(), 'berth-ssh-callback-'));
let n = 0;

/**
 * The agent: from the remote side, GET its own run with its token at PAPERCLIP_API_URL
 * and print the URL and the status it read. node is on the remote (the same machine
 * here); fetch has no proxy or retry to hide a wrong address.
 */
const AGENT = `const u = process.env.PAPERCLIP_API_URL;
const r = await fetch(u + '/api/heartbeat-runs/' + process.env.PAPERCLIP_RUN_ID, { headers: { authorization: 'Bearer ' + process.env.PAPERCLIP_API_KEY } });
const body = await r.json();
console.log('url=' + u + ' http=' + r.status + ' status=' + body.status + ' id=' + body.id);
if (process.argv[1]) await new Promise((res) => setTimeout(res, Number(process.argv[1])));`;

beforeAll(async () => {
  [sshd, noForwardSshd] = await Promise.all([startTestSshd(), startTestSshd({ allowTcpForwarding: false })]);
  t = await openTestDb();
  ssh = sshDriver({ idleMs: 60_000 });
  const drivers = new Map([
    ['local', localDriver({ workspaceRoot: join(root, 'local') })],
    ['ssh', ssh],
  ]);
  const adminKey = `${ADMIN_KEY_PREFIX}${randomBytes(16).toString('hex')}`;
  const app = createApp({
    services: t.services,
    drivers,
    logger: pino({ level: 'silent' }),
    adminKeyHash: hashBearerSecret(adminKey),
    pokeScheduler: () => runtime?.poke(),
    database: t.kind,
    version: 'test',
  });
  server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  serverPort = (server.address() as AddressInfo).port;
  url = `http://127.0.0.1:${serverPort}`;
  companyId = (await t.services.companies.create({ name: 'Callback Co' })).id;
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers,
    apiUrl: url,
    localUrl: url,
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    leaseTtlSeconds: 5,
    onError: runtimeErrors.onError,
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  ssh?.close();
  if (server) {
    await new Promise<void>((r) => {
      server.close(() => r());
      (server as { closeAllConnections?: () => void }).closeAllConnections?.();
    });
  }
  await t?.close();
  await Promise.all([sshd?.stop(), noForwardSshd?.stop()]);
  rmSync(root, { recursive: true, force: true });
});

async function sshAgent(d: TestSshd, args: string[] = []) {
  const env = await t.services.environments.create(companyId, {
    name: `ssh-${++n}`,
    driver: 'ssh',
    config: { host: d.host, port: d.port, username: d.username, privateKey: d.privateKey, knownHosts: d.knownHosts, remoteWorkspacePath: join(root, 'remote') },
  });
  return t.services.agents.create(companyId, {
    name: `agent-${++n}`,
    adapterType: 'process',
    adapterConfig: { command: process.execPath, args: ['--input-type=module', '-e', AGENT, ...args] },
    defaultEnvironmentId: env.id,
  } as never);
}

async function runToEnd(agentId: string): Promise<{ run: HeartbeatRun; log: string }> {
  const queued = await t.services.runs.invoke(companyId, agentId, { source: 'on_demand' });
  runtime.poke();
  const run = await waitFor('the run to finish', async () => {
    const r = await t.services.runs.get(companyId, queued.id);
    return r.finishedAt ? r : null;
  }, 30_000);
  const log = (await t.services.runs.readLog(companyId, run.id)).map((c) => c.chunk).join('');
  return { run, log };
}

/** Whether something listens on 127.0.0.1:port (the remote is this machine). */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

describe('an SSH run calls back to the server', () => {
  it('through a port forwarded over the SSH connection: another port than the server\'s, reached with the run token, gone when the run ends', async () => {
    const agent = await sshAgent(sshd);
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('succeeded');
    const m = /url=(\S+) http=(\d+) status=(\S+) id=(\S+)/.exec(log);
    expect(m, log).not.toBeNull();
    const [, given, http, status, id] = m!;
    const u = new URL(given!);
    expect(u.hostname).toBe('127.0.0.1'); // the remote's own loopback
    expect(Number(u.port)).not.toBe(serverPort); // not the server's address: the forward
    expect(http).toBe('200');
    expect(status).toBe('running'); // it read its own run, live, through the tunnel
    expect(id).toBe(run.id);
    // The forward was this run's: nothing listens there any more.
    await waitFor('the forward to be removed', async () => !(await listening(Number(u.port))), 5000);
  });

  it('two runs at once get a forward each, on different ports, each reaching the server', async () => {
    const [a, b] = await Promise.all([sshAgent(sshd, ['500']), sshAgent(sshd, ['500'])]);
    const [ra, rb] = await Promise.all([runToEnd(a.id), runToEnd(b.id)]);
    for (const r of [ra, rb]) expect(r.run.status, r.log).toBe('succeeded');
    const port = (log: string) => Number(new URL(/url=(\S+)/.exec(log)![1]!).port);
    expect(port(ra.log)).not.toBe(port(rb.log));
    for (const r of [ra, rb]) expect(r.log).toMatch(/http=200 status=running/);
  });

  it('a host whose sshd refuses forwarding fails the run with ssh_forward, saying what sshd needs', async () => {
    const agent = await sshAgent(noForwardSshd);
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('failed');
    expect(run.errorCode).toBe('ssh_forward');
    expect(run.error).toMatch(/cannot forward a port on 127\.0\.0\.1:\d+ back to Berth .*AllowTcpForwarding/);
    expect(log).not.toMatch(/url=/); // the agent never ran with an address it could not reach
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    expect(lease.status).not.toBe('active');
  });
});
