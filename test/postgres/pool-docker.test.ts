// A warm pool of containers, end to end on a private dockerd and a private Podman service
// (PostgreSQL): the refill makes a labelled container per member ahead of any lease, a run
// claims one warm (its paperclipEnvironment says warm: true and names that container), its
// agent runs in it, the ephemeral release removes it and the pool makes a new one.
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { serve, type ServerType } from '@hono/node-server';
import Docker from 'dockerode';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EnvironmentDriver } from '../../src/drivers/contract.js';
import { dockerDriver } from '../../src/drivers/docker/driver.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { createApp } from '../../src/http/app.js';
import { ADMIN_KEY_PREFIX } from '../../src/http/auth.js';
import { hashBearerSecret } from '../../src/secrets/bearer.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { containerEngines, type TestEngine } from '../support/engines.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

process.env.BERTH_SECRET_KEY ??= randomBytes(32).toString('hex');

const engines = containerEngines();
let t: TestDb;
let runtime: Runtime;
let server: ServerType;
let docker: EnvironmentDriver;
let companyId: string;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  t = await openTestDb();
  docker = dockerDriver();
  const drivers = new Map<string, EnvironmentDriver>([['docker', docker]]);
  const app = createApp({
    services: t.services,
    drivers,
    logger: pino({ level: 'silent' }),
    adminKeyHash: hashBearerSecret(`${ADMIN_KEY_PREFIX}${randomBytes(16).toString('hex')}`),
    pokeScheduler: () => runtime?.poke(),
    database: t.kind,
    version: 'test',
  });
  server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  companyId = (await t.services.companies.create({ name: 'Warm containers' })).id;
  runtime = await startRuntime({ services: t.services, db: t.db, drivers, apiUrl: url, localUrl: url, pollMs: 50, sweepMs: 200, heartbeatMs: 100, poolRefillMs: 100, onError: runtimeErrors.onError });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  docker?.close?.();
  if (server) {
    await new Promise<void>((r) => {
      server.close(() => r());
      (server as { closeAllConnections?: () => void }).closeAllConnections?.();
    });
  }
  await t?.close();
});

const containersOf = (engine: TestEngine, envId: string) => new Docker({ socketPath: engine.socket }).listContainers({ all: true, filters: { label: [`berth.environment=${envId}`] } });

describe.each(engines.map((e) => [e.name, e] as const))('a warm pool of containers on %s', (_name, engine) => {
  it('a run claims a ready container warm, runs in it, and the pool replaces it', { timeout: 120_000 }, async () => {
    const env = await t.services.environments.create(companyId, {
      name: `warm-${engine.name}`, driver: 'docker', config: { endpoint: engine.endpoint, image: engine.image }, pool: { minReady: 1, maxReady: 1 },
    } as never);
    const ready = async () => (await t.services.pools.states([env.id])).get(env.id)!.ready === 1;
    await waitFor('a ready container', ready, 60_000, 50).catch(async (e) => { throw new Error(`${e.message}: ${JSON.stringify((await t.services.pools.states([env.id])).get(env.id))} ${runtimeErrors.seen.join(' / ')}`); });
    const [member] = await containersOf(engine, env.id);
    expect(member).toBeDefined();
    expect(member!.Labels['berth.lease']).toBeUndefined();
    const memberName = member!.Names[0]!.replace(/^\//, '');

    const agent = await t.services.agents.create(companyId, { name: `warm-agent-${engine.name}`, adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo "warm in $(hostname) at $(pwd)"'] } as never, defaultEnvironmentId: env.id });
    const queued = await t.services.runs.invoke(companyId, agent.id, { source: 'on_demand' });
    runtime.poke();
    const run = await waitFor('the run to finish', async () => {
      const r = await t.services.runs.get(companyId, queued.id);
      return r.finishedAt ? r : null;
    }, 60_000);
    const log = (await t.services.runs.readLog(companyId, run.id)).map((c) => c.chunk).join('');
    expect(run.status, log).toBe('succeeded');
    expect(log).toContain('warm in');
    const pe = run.contextSnapshot.paperclipEnvironment as Record<string, unknown>;
    expect(pe).toMatchObject({ driver: 'docker', warm: true, container: memberName });
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    expect(lease.metadata.warm).toBe(true);
    // Never back in the pool: that container is removed, a new one is made.
    await waitFor('the claimed container removed and a new one ready', async () => {
      const now = await containersOf(engine, env.id);
      return now.length === 1 && now[0]!.Names[0]!.replace(/^\//, '') !== memberName && (await ready());
    }, 60_000, 100);
    await t.services.environments.update(companyId, env.id, { pool: null });
    await waitFor('the pool drained', async () => (await containersOf(engine, env.id)).length === 0, 60_000, 100);
  });
});
