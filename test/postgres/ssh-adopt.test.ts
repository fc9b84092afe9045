// An SSH run outlives its server: the server is SIGKILLed while the remote process runs,
// and another server adopts the run from its execution record, watches it to its end
// (all of its output, once), and destroys its workspace; and a server that stops hands
// such a run over to the next one instead of cancelling it. On PostgreSQL, with the killed
// server a process of its own and a real sshd.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openDatabase, type Database } from '../../src/db/client.js';
import { sshDriver } from '../../src/drivers/ssh/driver.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';
import { spawnPhaseServer, startRecoveringRuntime } from '../support/phase-server.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { startTestSshd, type TestSshd } from '../support/sshd.js';
import { waitFor } from '../support/wait.js';

const root = mkdtempSync(join(tmpdir(), 'berth-ssh-adopt-'));
const remoteRoot = join(root, 'remote');
let sshd: TestSshd;
let scratch: { url: string; drop: () => Promise<void> };
let database: Database;
let s: Services;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  sshd = await startTestSshd();
  scratch = await createScratchDatabase();
  database = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  s = createServices(database.db);
});
afterAll(async () => {
  await database?.close();
  await scratch?.drop();
  await sshd?.stop();
  rmSync(root, { recursive: true, force: true });
});

/** An agent on an SSH environment of the company that prints `one`, waits 3 s, prints `two`. */
async function remoteAgent(companyId: string) {
  const env = await s.environments.create(companyId, {
    name: 'remote',
    driver: 'ssh',
    config: { host: sshd.host, port: sshd.port, username: sshd.username, privateKey: sshd.privateKey, knownHosts: sshd.knownHosts, remoteWorkspacePath: remoteRoot },
  } as never);
  return s.agents.create(companyId, {
    name: 'long',
    adapterType: 'process',
    adapterConfig: { command: 'sh', args: ['-c', 'echo one; sleep 3; echo two'], timeoutSec: 60 } as never,
    defaultEnvironmentId: env.id,
  });
}

/**
 * The run ends succeeded on server `serverId` with all of its output once, its lease
 * released and its remote workspace gone; returns its log.
 */
async function expectFinishedBy(companyId: string, runId: string, serverId: string) {
  const done = await waitFor('the run to be finished by the other server', async () => {
    const r = await s.runs.get(companyId, runId);
    return r.finishedAt ? r : null;
  }, 30_000, 100);
  expect(done, String(done.error)).toMatchObject({ status: 'succeeded', exitCode: 0, serverId });
  const log = await s.runs.readLog(companyId, runId, { limit: 1000 });
  expect(log.filter((c) => c.stream === 'stdout').map((c) => c.chunk).join('')).toBe('one\ntwo\n');
  const lease = await s.leases.get(companyId, done.leaseId!);
  expect(lease).toMatchObject({ status: 'released', cleanupStatus: 'success' });
  expect(existsSync(join(remoteRoot, lease.resourceId!))).toBe(false);
  return log;
}

it('a server killed while its SSH run executes: another server adopts the run and finishes it with all of its output', async () => {
  const co = await s.companies.create({ name: 'Adopt Co' });
  const agent = await remoteAgent(co.id);
  const marker = join(root, 'started.marker');
  const server = spawnPhaseServer({ databaseUrl: scratch.url, workspaceRoot: join(root, 'local'), phase: 'started', marker });
  try {
    const run = await s.runs.invoke(co.id, agent.id);
    await server.reached();
    expect(readFileSync(marker, 'utf8')).toBe(run.id);
    await server.kill();

    const ssh = sshDriver();
    const b = await startRecoveringRuntime(s, database.db, new Map([['ssh', ssh]]), runtimeErrors.onError);
    try {
      await expectFinishedBy(co.id, run.id, b.serverId);
    } finally {
      await b.stop({ graceMs: 0 });
      ssh.close();
    }
  } finally {
    await server.kill();
  }
}, 120_000);

it('a server that stops while its SSH run executes hands the run over: the next server to start resumes it', async () => {
  const co = await s.companies.create({ name: 'Handover Co' });
  const agent = await remoteAgent(co.id);
  const sshA = sshDriver();
  const a = await startRecoveringRuntime(s, database.db, new Map([['ssh', sshA]]), runtimeErrors.onError);
  const run = await s.runs.invoke(co.id, agent.id);
  a.poke();
  await waitFor('the first line', async () => {
    const log = await s.runs.readLog(co.id, run.id, { limit: 100 });
    return log.some((c) => c.stream === 'stdout' && c.chunk.includes('one'));
  }, 20_000, 50);
  await a.stop({ graceMs: 0 });
  sshA.close();
  // Still running, its lease still held: nothing was cancelled, destroyed or released.
  const between = await s.runs.get(co.id, run.id);
  expect(between).toMatchObject({ status: 'running', serverId: a.serverId });
  expect((await s.leases.get(co.id, between.leaseId!)).status).toBe('active');

  const sshB = sshDriver();
  const b = await startRecoveringRuntime(s, database.db, new Map([['ssh', sshB]]), runtimeErrors.onError);
  try {
    const log = await expectFinishedBy(co.id, run.id, b.serverId);
    expect(log.filter((c) => c.stream === 'system').map((c) => c.chunk).join('')).toMatch(/handed over[\s\S]*resumed by server/);
  } finally {
    await b.stop({ graceMs: 0 });
    sshB.close();
  }
}, 120_000);
