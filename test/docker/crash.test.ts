// No container leaks: a server SIGKILLed between the container's create and its record
// (after provision, before the lease is activated) or between the run's start and its
// release leaves records another server finishes, and a container no record owns is found
// by reconciliation and removed with one activity row. On real PostgreSQL, real engines.
import { mkdtempSync, rmSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, queryRows, type Database } from '../../src/db/client.js';
import { dockerDriver } from '../../src/drivers/docker/driver.js';
import { localDriver } from '../../src/drivers/local/driver.js';
import { startRuntime } from '../../src/heartbeat/runtime.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';
import { containerEngines, type TestEngine } from '../support/engines.js';
import { spawnPhaseServer, startRecoveringRuntime } from '../support/phase-server.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

const engines = containerEngines();
let scratch: { url: string; drop: () => Promise<void> };
let database: Database;
let s: Services;
const root = mkdtempSync(join(tmpdir(), 'berth-docker-crash-'));
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  scratch = await createScratchDatabase();
  database = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  s = createServices(database.db);
});
afterAll(async () => {
  await database?.close();
  await scratch?.drop();
  rmSync(root, { recursive: true, force: true });
});

const containersOf = (engine: TestEngine, envId: string) => new Docker({ socketPath: engine.socket }).listContainers({ all: true, filters: { label: [`berth.environment=${envId}`] } });

describe.each(engines.flatMap((e) => (['provisioned', 'started'] as const).map((phase) => [e.name, phase, e] as const)))('on %s, killed after %s', (_name, phase, engine) => {
  it('another server removes the container and finishes every record', async () => {
    const co = await s.companies.create({ name: `Crash ${engine.name} ${phase}` });
    const env = await s.environments.create(co.id, { name: 'ct', driver: 'docker', config: { endpoint: engine.endpoint, image: engine.image } } as never);
    const agent = await s.agents.create(co.id, { name: 'sleeper', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo up; sleep 600'] } as never, defaultEnvironmentId: env.id });
    const marker = join(root, `${engine.name}-${phase}.marker`);
    const server = spawnPhaseServer({ databaseUrl: scratch.url, workspaceRoot: root, phase, marker });
    try {
      const run = await s.runs.invoke(co.id, agent.id);
      await server.reached();
      const [lease] = await queryRows(database.db, sql`SELECT * FROM environment_leases WHERE heartbeat_run_id = ${run.id}`);
      const [resource] = await queryRows(database.db, sql`SELECT * FROM provider_resources WHERE lease_id = ${lease!.id}`);
      // The container exists, made by the server about to die; its record was written before it.
      const before = await containersOf(engine, env.id);
      expect(before.map((c) => c.Labels['berth.resource'])).toEqual([resource!.id]);
      expect(before[0]!.State).toBe('running');
      expect(resource!.status).toBe(phase === 'provisioned' ? 'provisioning' : 'leased');

      await server.kill();

      const drivers = new Map([
        ['local', localDriver({ workspaceRoot: root })],
        ['docker', dockerDriver()],
      ]);
      const b = await startRecoveringRuntime(s, database.db, drivers, runtimeErrors.onError);
      try {
        const done = await waitFor('the run to be finalized and its resource destroyed', async () => {
          const r = await s.runs.get(co.id, run.id);
          const [res] = await queryRows(database.db, sql`SELECT status FROM provider_resources WHERE id = ${resource!.id}`);
          return r.finishedAt && res!.status === 'destroyed' ? r : null;
        }, 30_000, 100);
        expect(done.status).toBe('failed');
      } finally {
        await b.stop({ graceMs: 0 });
      }
      expect(await containersOf(engine, env.id)).toEqual([]);
      const notDestroyed = await queryRows(database.db, sql`SELECT id, status FROM provider_resources WHERE company_id = ${co.id} AND status <> 'destroyed'`);
      expect(notDestroyed).toEqual([]);
      const active = await queryRows(database.db, sql`SELECT id FROM environment_leases WHERE company_id = ${co.id} AND status = 'active'`);
      expect(active).toEqual([]);
    } finally {
      await server.kill();
    }
  }, 120_000);
});

describe.each(engines.map((e) => [e.name, e] as const))('reconciliation on %s', (_name, engine) => {
  it('removes a labelled container no record owns, with one activity row; leaves the rest', async () => {
    const co = await s.companies.create({ name: `Reconcile ${engine.name}` });
    const env = await s.environments.create(co.id, { name: 'ct', driver: 'docker', config: { endpoint: engine.endpoint, image: engine.image } } as never);
    const api = new Docker({ socketPath: engine.socket });
    const orphanId = randomUUID();
    const labels = { 'berth.resource': orphanId, 'berth.environment': env.id, 'berth.company': co.id };
    const orphan = await api.createContainer({ name: `berth-${orphanId}`, Image: engine.image, Cmd: ['sleep', '600'], Labels: labels, HostConfig: { NetworkMode: 'none' } });
    await orphan.start();
    // Not Berth's: no labels. Left alone.
    const stranger = await api.createContainer({ name: `stranger-${randomUUID()}`, Image: engine.image, Cmd: ['sleep', '600'], HostConfig: { NetworkMode: 'none' } });
    const b = await startRuntime({
      services: s,
      db: database.db,
      drivers: new Map([['docker', dockerDriver()]]),
      apiUrl: 'http://127.0.0.1:9',
      pollMs: 50,
      sweepMs: 200,
      heartbeatMs: 100,
      reconcileMs: 200,
      orphanResourceGraceSeconds: 0,
      onError: runtimeErrors.onError,
    });
    try {
      await waitFor('the orphan container to be removed', async () => (await containersOf(engine, env.id)).length === 0, 20_000);
      await new Promise((r) => setTimeout(r, 600));
      const acts = (await s.activity.list(co.id, { action: 'environment.resource_orphan_destroyed' })).items;
      expect(acts).toHaveLength(1);
      expect(acts[0]).toMatchObject({ entityId: env.id, details: { providerId: orphan.id } });
      await expect(stranger.inspect()).resolves.toMatchObject({ Id: stranger.id });
    } finally {
      await b.stop({ graceMs: 0 });
      await stranger.remove({ force: true });
    }
  });
});
