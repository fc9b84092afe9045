import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { newPrivateKey } from './support/sshd.js';
import { queryRows } from '../src/db/client.js';
import { isBerthError } from '../src/domain/errors.js';
import { openTestDb, type TestDb } from './support/db.js';

let t: TestDb;
let companyId: string;
let otherCompanyId: string;

beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Acme' })).id;
  otherCompanyId = (await t.services.companies.create({ name: 'Globex' })).id;
});
afterAll(async () => t?.close());

async function counts() {
  const [row] = await queryRows<{ envs: number; acts: number }>(
    t.db,
    sql`SELECT (SELECT count(*)::int FROM environments) AS envs, (SELECT count(*)::int FROM activity_log) AS acts`,
  );
  return row!;
}

const sshConfig = {
  host: 'build-1.internal',
  username: 'agent',
  remoteWorkspacePath: '/srv/berth',
  privateKey: newPrivateKey(), // keys are checked to parse
  knownHosts: 'build-1.internal ssh-ed25519 AAAA',
};

describe('ensureLocalEnvironment', () => {
  it('creates the Local environment once with the documented defaults, and returns it untouched afterwards', async () => {
    const c = await t.services.companies.create({ name: 'Local Co' });
    const first = await t.services.environments.ensureLocalEnvironment(c.id);
    expect(first).toMatchObject({
      name: 'Local',
      driver: 'local',
      status: 'active',
      description: 'Default execution environment for runs on this machine.',
      metadata: { managedByBerth: true, defaultForCompany: true },
      capacity: null,
    });
    // An operator renames and archives it: ensure must not touch it.
    await t.services.environments.update(c.id, first.id, { name: 'My laptop', status: 'archived' });
    const again = await t.services.environments.ensureLocalEnvironment(c.id);
    expect(again.id).toBe(first.id);
    expect(again.name).toBe('My laptop');
    expect(again.status).toBe('archived');
    const created = await t.services.activity.list(c.id, { action: 'environment.created' });
    expect(created.items).toHaveLength(1);
  });

  it('picks another name when "Local" is taken by a non-local environment', async () => {
    const c = await t.services.companies.create({ name: 'Named Co' });
    await t.services.environments.create(c.id, { name: 'Local', driver: 'ssh', config: sshConfig });
    const local = await t.services.environments.ensureLocalEnvironment(c.id);
    expect(local.driver).toBe('local');
    expect(local.name).toBe('Local (2)');
  });

  it('refuses a second local environment made by hand', async () => {
    const c = await t.services.companies.create({ name: 'Two Local Co' });
    await t.services.environments.ensureLocalEnvironment(c.id);
    await expect(t.services.environments.create(c.id, { name: 'Other', driver: 'local' })).rejects.toMatchObject({ code: 'conflict' });
  });

  it('is not_found for a company that does not exist', async () => {
    await expect(t.services.environments.ensureLocalEnvironment('00000000-0000-4000-8000-000000000000')).rejects.toMatchObject({ code: 'not_found' });
  });
});

describe('create, get, list, update', () => {
  it('creates an ssh environment with defaults, never returning the private key', async () => {
    const env = await t.services.environments.create(companyId, { name: 'build-1', driver: 'ssh', config: sshConfig, capacity: 2 });
    expect(env.config).toMatchObject({ host: 'build-1.internal', port: 22, strictHostKeyChecking: true, hasPrivateKey: true });
    expect(JSON.stringify(env)).not.toContain('secret');
    const got = await t.services.environments.get(companyId, env.id);
    expect(JSON.stringify(got)).not.toContain('secret');
    const withSecrets = await t.services.environments.getWithSecrets(companyId, env.id);
    expect(withSecrets.secretConfig.privateKey).toBe(sshConfig.privateKey);
    const acts = await t.services.activity.list(companyId, { entityId: env.id });
    expect(JSON.stringify(acts)).not.toContain('secret');
  });

  it('creates a sandbox environment and validates the provider key', async () => {
    const env = await t.services.environments.create(companyId, { name: 'sbx', driver: 'sandbox', config: { provider: 'e2b.io', options: { template: 'base' } } });
    // A provider's options may hold its API key: all are sealed and shown by name (src/secrets/config.ts).
    expect(env.config).toEqual({ provider: 'e2b.io', optionNames: ['template'] });
    expect((await t.services.environments.getWithSecrets(companyId, env.id)).secretConfig).toEqual({ provider: 'e2b.io', options: { template: 'base' } });
    await expect(
      t.services.environments.create(companyId, { name: 'sbx2', driver: 'sandbox', config: { provider: 'Bad Provider' } }),
    ).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'config.provider' }] });
  });

  it("takes Paperclip's sandbox config shape (image, timeoutMs, reuseLease at its top), shown as given, and checks each", async () => {
    const env = await t.services.environments.create(companyId, {
      name: 'sbx-paperclip',
      driver: 'sandbox',
      config: { provider: 'e2b.io', image: 'node:22', timeoutMs: 120_000, reuseLease: true, options: { apiKey: 'k' } },
    });
    expect(env.config).toEqual({ provider: 'e2b.io', image: 'node:22', timeoutMs: 120_000, reuseLease: true, optionNames: ['apiKey'] });
    await expect(
      t.services.environments.create(companyId, { name: 'sbx-bad', driver: 'sandbox', config: { provider: 'p', image: '', timeoutMs: -1, reuseLease: 'yes' } }),
    ).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'config.image' }, { path: 'config.timeoutMs' }, { path: 'config.reuseLease' }] });
  });

  it('changes its driver by update only with a config for the new one and nothing of the old live; the Local stays local', async () => {
    const env = await t.services.environments.create(companyId, { name: 'switcher', driver: 'sandbox', config: { provider: 'p', options: { k: 'v' } } });
    await expect(t.services.environments.update(companyId, env.id, { driver: 'docker' })).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'config' }] });
    await expect(t.services.environments.update(companyId, env.id, { driver: 'nope', config: {} })).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'driver' }] });
    await expect(t.services.environments.update(companyId, env.id, { driver: 'docker', config: { image: 'has space' } })).rejects.toMatchObject({
      code: 'invalid',
      fields: [{ path: 'config.image' }],
    });
    // A live lease of the old driver blocks the change, and nothing changes.
    const held = await t.services.leases.acquire(companyId, { environmentId: env.id, ttlSeconds: 60 });
    await expect(t.services.environments.update(companyId, env.id, { driver: 'docker', config: { image: 'busybox' } })).rejects.toMatchObject({ code: 'conflict' });
    expect((await t.services.environments.get(companyId, env.id)).driver).toBe('sandbox');
    await t.services.leases.release(companyId, held.lease.id, { fence: held.lease.fence });
    const changed = await t.services.environments.update(companyId, env.id, { driver: 'docker', config: { image: 'busybox' } });
    expect(changed).toMatchObject({ driver: 'docker', config: { image: 'busybox', network: 'none' } });
    expect(changed.config).not.toHaveProperty('optionNames');
    const local = await t.services.environments.ensureLocalEnvironment(companyId);
    await expect(t.services.environments.update(companyId, local.id, { driver: 'sandbox', config: { provider: 'p' } })).rejects.toMatchObject({ code: 'conflict' });
    await expect(t.services.environments.update(companyId, env.id, { driver: 'local', config: {} })).rejects.toMatchObject({ code: 'conflict' });
  });

  it('rejects a duplicate name in one company but allows it in another', async () => {
    await t.services.environments.create(companyId, { name: 'dup', driver: 'sandbox', config: { provider: 'p' } });
    await expect(t.services.environments.create(companyId, { name: 'dup', driver: 'sandbox', config: { provider: 'p' } })).rejects.toMatchObject({
      code: 'conflict',
      fields: [{ path: 'name' }],
    });
    const other = await t.services.environments.create(otherCompanyId, { name: 'dup', driver: 'sandbox', config: { provider: 'p' } });
    expect(other.companyId).toBe(otherCompanyId);
  });

  it('lists newest-updated first, filtered by status and driver', async () => {
    const c = await t.services.companies.create({ name: 'List Co' });
    const a = await t.services.environments.create(c.id, { name: 'a', driver: 'sandbox', config: { provider: 'p' } });
    const b = await t.services.environments.create(c.id, { name: 'b', driver: 'ssh', config: sshConfig });
    const local = await t.services.environments.ensureLocalEnvironment(c.id);
    await t.services.environments.update(c.id, a.id, { description: 'touched' });
    expect((await t.services.environments.list(c.id)).map((e) => e.name)).toEqual(['a', 'Local', 'b']);
    await t.services.environments.archive(c.id, b.id);
    expect((await t.services.environments.list(c.id, { status: 'archived' })).map((e) => e.id)).toEqual([b.id]);
    expect((await t.services.environments.list(c.id, { driver: 'local' })).map((e) => e.id)).toEqual([local.id]);
    await expect(t.services.environments.list(c.id, { driver: 'nosuch' as never })).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'driver' }] });
  });

  it('updates partially, validates config against the driver, and keeps a set private key', async () => {
    const env = await t.services.environments.create(companyId, { name: 'upd', driver: 'ssh', config: sshConfig });
    const updated = await t.services.environments.update(companyId, env.id, {
      config: { host: 'build-2.internal', port: 2222, username: 'agent', remoteWorkspacePath: '/srv/w', knownHosts: 'k' },
    });
    expect(updated.config).toMatchObject({ host: 'build-2.internal', port: 2222, hasPrivateKey: true });
    expect(updated.name).toBe('upd');
    await expect(t.services.environments.update(companyId, env.id, { config: { host: 'x', username: 'u', remoteWorkspacePath: '/w', knownHosts: 'k', port: 70000 } })).rejects.toMatchObject({
      code: 'invalid',
      fields: [{ path: 'config.port' }],
    });
    await expect(t.services.environments.update(companyId, env.id, {})).rejects.toMatchObject({ code: 'invalid' });
  });

  it('archives idempotently with one activity row', async () => {
    const env = await t.services.environments.create(companyId, { name: 'arch', driver: 'sandbox', config: { provider: 'p' } });
    await t.services.environments.archive(companyId, env.id);
    const again = await t.services.environments.archive(companyId, env.id);
    expect(again.status).toBe('archived');
    const rows = await t.services.activity.list(companyId, { entityId: env.id, action: 'environment.archived' });
    expect(rows.items).toHaveLength(1);
  });
});

describe('bad input', () => {
  const cases: Array<[string, unknown, string]> = [
    ['missing name', { driver: 'local' }, 'name'],
    ['empty name', { name: '  ', driver: 'local' }, 'name'],
    ['unknown driver', { name: 'x', driver: 'nosuch' }, 'driver'],
    ['docker without an image', { name: 'x', driver: 'docker', config: {} }, 'config.image'],
    ['unknown top-level field', { name: 'x', driver: 'local', colour: 'red' }, 'colour'],
    ['unknown config field', { name: 'x', driver: 'ssh', config: { ...sshConfig, password: 'p' } }, 'config.password'],
    ['ssh port out of range', { name: 'x', driver: 'ssh', config: { ...sshConfig, port: 0 } }, 'config.port'],
    ['ssh port not an integer', { name: 'x', driver: 'ssh', config: { ...sshConfig, port: 22.5 } }, 'config.port'],
    ['relative workspace path', { name: 'x', driver: 'ssh', config: { ...sshConfig, remoteWorkspacePath: 'srv/w' } }, 'config.remoteWorkspacePath'],
    ['strict host checking without known hosts', { name: 'x', driver: 'ssh', config: { ...sshConfig, knownHosts: undefined } }, 'config.knownHosts'],
    ['missing ssh host', { name: 'x', driver: 'ssh', config: { ...sshConfig, host: undefined } }, 'config.host'],
    ['negative capacity', { name: 'x', driver: 'local', capacity: -1 }, 'capacity'],
    ['bad env var name', { name: 'x', driver: 'local', envVars: { '1BAD': 'v' } }, 'envVars.1BAD'],
    ['env var not a string', { name: 'x', driver: 'local', envVars: { GOOD: 1 } }, 'envVars.GOOD'],
    ['config not an object', { name: 'x', driver: 'sandbox', config: 'nope' }, 'config'],
  ];
  for (const [label, input, path] of cases) {
    it(`rejects ${label}, naming ${path}, and writes nothing`, async () => {
      const before = await counts();
      const err = await t.services.environments.create(companyId, input as never).catch((e: unknown) => e);
      expect(isBerthError(err, 'invalid')).toBe(true);
      const e = err as { fields: Array<{ path: string }>; message: string };
      expect(e.fields.map((f) => f.path)).toContain(path);
      expect(e.message).toContain(path);
      expect(await counts()).toEqual(before);
    });
  }
});

describe('delete', () => {
  it("refuses the company's Local environment and one with open leases, with every reason", async () => {
    const c = await t.services.companies.create({ name: 'Del Co' });
    const local = await t.services.environments.ensureLocalEnvironment(c.id);
    await t.services.leases.acquire(c.id, { environmentId: local.id });
    const err = await t.services.environments.delete(c.id, local.id).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'conflict' });
    const reasons = (err as { details: { reasons: string[] } }).details.reasons;
    expect(reasons).toHaveLength(2);
    expect(reasons[0]).toContain('Local');
    expect(reasons[1]).toContain('1 active');
  });

  it('deletes an environment whose leases ended, keeping their history', async () => {
    const c = await t.services.companies.create({ name: 'Del2 Co' });
    const env = await t.services.environments.create(c.id, { name: 'gone', driver: 'sandbox', config: { provider: 'p' } });
    const { lease } = await t.services.leases.acquire(c.id, { environmentId: env.id });
    await expect(t.services.environments.delete(c.id, env.id)).rejects.toMatchObject({ code: 'conflict' });
    await t.services.leases.release(c.id, lease.id, { fence: lease.fence });
    await t.services.environments.delete(c.id, env.id);
    await expect(t.services.environments.get(c.id, env.id)).rejects.toMatchObject({ code: 'not_found' });
    const kept = await t.services.leases.get(c.id, lease.id);
    expect(kept).toMatchObject({ status: 'released', environmentId: null });
    const acts = await t.services.activity.list(c.id, { entityId: lease.id });
    expect(acts.items.map((a) => a.action)).toEqual(['environment.lease_released', 'environment.lease_acquired']);
    expect((await t.services.activity.list(c.id, { action: 'environment.deleted' })).items).toHaveLength(1);
  });
});

describe('tenant isolation', () => {
  it("answers not_found for every operation on another company's environment", async () => {
    const env = await t.services.environments.create(companyId, { name: 'private', driver: 'sandbox', config: { provider: 'p' } });
    const s = t.services.environments;
    await expect(s.get(otherCompanyId, env.id)).rejects.toMatchObject({ code: 'not_found' });
    await expect(s.update(otherCompanyId, env.id, { name: 'stolen' })).rejects.toMatchObject({ code: 'not_found' });
    await expect(s.archive(otherCompanyId, env.id)).rejects.toMatchObject({ code: 'not_found' });
    await expect(s.delete(otherCompanyId, env.id)).rejects.toMatchObject({ code: 'not_found' });
    expect((await s.list(otherCompanyId)).map((e) => e.id)).not.toContain(env.id);
    expect((await s.get(companyId, env.id)).name).toBe('private');
  });

  it('answers not_found for malformed ids instead of a database error', async () => {
    await expect(t.services.environments.get(companyId, 'not-a-uuid')).rejects.toMatchObject({ code: 'not_found' });
    await expect(t.services.environments.delete(companyId, "1'; DROP TABLE environments; --")).rejects.toMatchObject({ code: 'not_found' });
  });
});

describe('forward compatibility', () => {
  it('lists rows whose enum values a newer Berth wrote', async () => {
    const c = await t.services.companies.create({ name: 'Future Co' });
    await t.services.environments.create(c.id, { name: 'known', driver: 'sandbox', config: { provider: 'p' } });
    await queryRows(
      t.db,
      sql`INSERT INTO environments (company_id, name, driver, status) VALUES (${c.id}, 'from-the-future', 'firecracker', 'draining')`,
    );
    const list = await t.services.environments.list(c.id);
    expect(list).toHaveLength(2);
    const future = list.find((e) => e.name === 'from-the-future')!;
    expect(future).toMatchObject({ driver: 'unknown', status: 'unknown', unknownValues: { driver: 'firecracker', status: 'draining' } });
  });
});
