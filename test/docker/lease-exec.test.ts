// Commands on a provisioned lease of a container environment, on dockerd and on podman:
// the lease's container is made at acquire, commands run in it one after another (the
// first as the container's main process, the next ones in the same container: what the
// first wrote is there), their exit codes, output and timeouts; files in and out through the
// engine's archive API; release has the container removed by the resource GC.
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SYSTEM_ACTOR } from '../../src/domain/types.js';
import type { EnvironmentDriver } from '../../src/drivers/contract.js';
import { dockerDriver } from '../../src/drivers/docker/driver.js';
import { leaseWork, type LeaseWork } from '../../src/heartbeat/lease-work.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { containerEngines } from '../support/engines.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

const engines = containerEngines();
let t: TestDb;
let runtime: Runtime;
let work: LeaseWork;
let companyId: string;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  t = await openTestDb();
  const drivers = new Map<string, EnvironmentDriver>([['docker', dockerDriver()]]);
  companyId = (await t.services.companies.create({ name: 'Container Exec Co' })).id;
  runtime = await startRuntime({ services: t.services, db: t.db, drivers, apiUrl: '', pollMs: 50, sweepMs: 200, heartbeatMs: 100, onError: runtimeErrors.onError });
  work = leaseWork({ services: t.services, drivers });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
});

describe.each(engines)('a provisioned lease on $name', (engine) => {
  it('runs commands in its own container one after another, and the container is removed after release', async () => {
    const env = await t.services.environments.create(companyId, { name: `exec-${engine.name}`, driver: 'docker', config: { endpoint: engine.endpoint, image: engine.image }, envVars: { FROM_ENV: 'env-value' } } as never);
    const { lease } = await work.acquireProvisioned(companyId, { environmentId: env.id, ttlSeconds: 120 }, SYSTEM_ACTOR);
    const container = String((lease.driverState as { container?: unknown }).container);
    expect(container).toMatch(/^berth-/);
    const run = (command: string[], extra: Record<string, unknown> = {}) => work.exec(companyId, lease.id, { fence: lease.fence, command, ...extra }, SYSTEM_ACTOR);

    const first = await run(['sh', '-c', 'pwd; echo "$FROM_ENV $MINE"; echo made > note; echo e >&2; exit 4'], { env: { MINE: 'mine' } });
    expect(first).toMatchObject({ exitCode: 4, timedOut: false, stderr: 'e\n' });
    expect(first.stdout).toBe('/workspace\nenv-value mine\n');
    const second = await run(['cat', 'note']);
    expect(second).toMatchObject({ exitCode: 0, stdout: 'made\n' });
    const slow = await run(['sleep', '60'], { timeoutSeconds: 1 });
    expect(slow.timedOut).toBe(true);
    const after = await run(['echo', 'still here']);
    expect(after).toMatchObject({ exitCode: 0, stdout: 'still here\n' });
    // Files in through the engine's archive API (into a directory it makes), read by a command, and back out.
    const tar = await import('tar');
    const src = mkdtempSync(join(tmpdir(), 'berth-ct-files-'));
    try {
      mkdirSync(join(src, 'proj'));
      writeFileSync(join(src, 'proj', 'main.txt'), `through ${engine.name}`);
      const parts: Buffer[] = [];
      for await (const c of tar.c({ cwd: src, portable: true }, ['proj']) as AsyncIterable<Buffer>) parts.push(Buffer.from(c));
      const put = await work.putFiles(companyId, lease.id, lease.fence, 'code/in', Buffer.concat(parts), SYSTEM_ACTOR);
      expect(put).toMatchObject({ path: 'code/in', files: 1, directories: 1 });
      expect(await run(['cat', 'code/in/proj/main.txt'])).toMatchObject({ exitCode: 0, stdout: `through ${engine.name}` });
      const out = await work.getFiles(companyId, lease.id, lease.fence, 'code/in/proj', SYSTEM_ACTOR);
      const seen: Record<string, string> = {};
      await new Promise<void>((resolve, reject) => {
        const p = new tar.Parser({
          onReadEntry: (e) => {
            const chunks: Buffer[] = [];
            e.on('data', (d: Buffer) => chunks.push(d));
            e.on('end', () => void (seen[String(e.path)] = Buffer.concat(chunks).toString()));
          },
        });
        p.on('end', resolve);
        p.on('error', reject);
        out.on('error', reject);
        out.pipe(p as unknown as NodeJS.WritableStream);
      });
      expect(seen['proj/main.txt']).toBe(`through ${engine.name}`);
      await expect(work.getFiles(companyId, lease.id, lease.fence, 'no/such', SYSTEM_ACTOR)).rejects.toMatchObject({ code: 'not_found' });
    } finally {
      rmSync(src, { recursive: true, force: true });
    }

    await t.services.leases.release(companyId, lease.id, { fence: lease.fence }, SYSTEM_ACTOR);
    await waitFor('the container to be removed', async () => (await t.services.resources.get(lease.resourceId!)).status === 'destroyed', 30_000);
    const docker = new Docker({ socketPath: engine.socket });
    const left = await docker.listContainers({ all: true, filters: { label: [`berth.lease=${lease.id}`] } });
    expect(left).toEqual([]);
  }, 120_000);
});
