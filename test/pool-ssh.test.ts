// A warm pool of SSH workspaces against a private sshd: the refill makes each member's
// remote workspace ahead of any lease and runs the pool's setup command there once; a run
// claims one warm and runs in it (the setup's file is there); its release removes it and
// the pool makes a new one.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { queryRows } from '../src/db/client.js';
import { sshDriver, type SshDriver } from '../src/drivers/ssh/driver.js';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';
import { startTestSshd, type TestSshd } from './support/sshd.js';
import { waitFor } from './support/wait.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

let t: TestDb;
let sshd: TestSshd;
let ssh: SshDriver;
let runtime: Runtime;
const root = mkdtempSync(join(tmpdir(), 'berth-pool-ssh-'));
const remoteRoot = join(root, 'remote');
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  sshd = await startTestSshd();
  t = await openTestDb();
  ssh = sshDriver({ idleMs: 60_000 });
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['ssh', ssh]]),
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    poolRefillMs: 100,
    apiUrl: 'http://127.0.0.1:9',
    onError: runtimeErrors.onError,
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  ssh?.close();
  await t?.close();
  await sshd?.stop();
  rmSync(root, { recursive: true, force: true });
});

const readyMembers = async (envId: string) =>
  queryRows(t.db, sql`SELECT id, provider_id, ready_details FROM provider_resources WHERE environment_id = ${envId} AND pool_member AND status = 'ready'`);

it('a run claims a prepared remote workspace warm; its release removes it; the pool makes another', async () => {
  const co = await t.services.companies.create({ name: 'SSH pool' });
  const env = await t.services.environments.create(co.id, {
    name: 'ssh-pooled',
    driver: 'ssh',
    config: { host: sshd.host, port: sshd.port, username: sshd.username, privateKey: sshd.privateKey, knownHosts: sshd.knownHosts, remoteWorkspacePath: remoteRoot },
    pool: { minReady: 1, setup: { command: 'echo prepared-remotely > prepared.txt', timeoutSeconds: 30 } },
  } as never);
  const [member] = await waitFor('a ready member', async () => ((await readyMembers(env.id)).length === 1 ? readyMembers(env.id) : null), 30_000);
  const cwd = String((member!.ready_details as { cwd: string }).cwd);
  expect(readFileSync(join(cwd, 'prepared.txt'), 'utf8')).toBe('prepared-remotely\n');

  const agent = await t.services.agents.create(co.id, { name: 'reader', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'cat prepared.txt; pwd'] }, defaultEnvironmentId: env.id });
  const queued = await t.services.runs.invoke(co.id, agent.id);
  runtime.poke();
  const run = await waitFor('the run to finish', async () => {
    const r = await t.services.runs.get(co.id, queued.id);
    return r.finishedAt ? r : null;
  }, 30_000);
  const log = (await t.services.runs.readLog(co.id, run.id)).map((c) => c.chunk).join('');
  expect(run.status, log).toBe('succeeded');
  expect(log).toContain('prepared-remotely');
  expect(log).toContain(cwd);
  expect((run.contextSnapshot.paperclipEnvironment as Record<string, unknown>).warm).toBe(true);
  await waitFor('the claimed workspace removed and another one ready', async () => {
    const now = await readyMembers(env.id);
    return !existsSync(cwd) && now.length === 1 && now[0]!.id !== member!.id;
  }, 30_000);
  await t.services.environments.update(co.id, env.id, { pool: null });
  await waitFor('the pool drained', async () => (await readyMembers(env.id)).length === 0, 30_000);
});
