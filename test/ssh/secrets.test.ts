// Secrets at rest: the SSH private key is encrypted in the database, decrypted only for
// drivers, and a wrong or malformed key is a clear error.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { sql } from 'drizzle-orm';
import { newPrivateKey } from '../support/sshd.js';
import { queryRows } from '../../src/db/client.js';
import { decryptSecret, encryptSecret, isEncryptedSecret, parseSecretKey, secretKey, SecretKeyError } from '../../src/secrets/cipher.js';
import { openTestDb, type TestDb } from '../support/db.js';

const home = mkdtempSync(join(tmpdir(), 'berth-secrets-'));
// A real key: keys are checked to parse at create and update.
const PRIVATE_KEY = newPrivateKey();
const keyBody = PRIVATE_KEY.split('\n')[2]!;
const sshConfig = { host: 'build-1.internal', username: 'agent', remoteWorkspacePath: '/srv/berth', privateKey: PRIVATE_KEY, knownHosts: 'build-1.internal ssh-ed25519 AAAA' };

let t: TestDb;
let companyId: string;

beforeAll(async () => {
  delete process.env.BERTH_SECRET_KEY;
  process.env.BERTH_HOME = home;
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Secrets Co' })).id;
});
afterAll(async () => {
  await t?.close();
  rmSync(home, { recursive: true, force: true });
});

async function rawConfig(envId: string): Promise<Record<string, unknown>> {
  const [row] = await queryRows<{ config: Record<string, unknown> }>(t.db, sql`SELECT config FROM environments WHERE id = ${envId}`);
  return row!.config;
}

describe('the SSH private key at rest', () => {
  it('is created encrypted: the row holds no plaintext, responses and activity neither, getWithSecrets gives it back', async () => {
    const env = await t.services.environments.create(companyId, { name: 'enc-create', driver: 'ssh', config: sshConfig });
    const stored = await rawConfig(env.id);
    expect(isEncryptedSecret(stored.privateKey)).toBe(true);
    const [{ row } = { row: '' }] = await queryRows<{ row: string }>(t.db, sql`SELECT row_to_json(e)::text AS row FROM environments e WHERE id = ${env.id}`);
    expect(row).not.toContain(keyBody);
    expect(row).not.toContain('BEGIN OPENSSH');
    expect(env.config).toMatchObject({ hasPrivateKey: true });
    expect(JSON.stringify(await t.services.environments.get(companyId, env.id))).not.toContain(keyBody);
    expect(JSON.stringify(await t.services.environments.list(companyId))).not.toContain('enc:v1');
    const [acts = { all: '' }] = await queryRows<{ all: string }>(t.db, sql`SELECT coalesce(string_agg(row_to_json(a)::text, ''), '') AS all FROM activity_log a`);
    expect(acts.all).not.toContain(keyBody);
    expect(acts.all).not.toContain('enc:v1');
    const withSecrets = await t.services.environments.getWithSecrets(companyId, env.id);
    expect(withSecrets.secretConfig.privateKey).toBe(PRIVATE_KEY);
    expect(withSecrets.config).not.toHaveProperty('privateKey');
  });

  it('is encrypted on update, and an update without a key keeps the encrypted one', async () => {
    const env = await t.services.environments.create(companyId, { name: 'enc-update', driver: 'ssh', config: { ...sshConfig, privateKey: undefined } });
    expect(env.config).not.toHaveProperty('hasPrivateKey');
    const newKey = newPrivateKey();
    await t.services.environments.update(companyId, env.id, { config: { ...sshConfig, privateKey: newKey } });
    const first = await rawConfig(env.id);
    expect(isEncryptedSecret(first.privateKey)).toBe(true);
    expect(JSON.stringify(first)).not.toContain(keyBody);
    const updated = await t.services.environments.update(companyId, env.id, { config: { ...sshConfig, privateKey: undefined, host: 'build-9.internal' } });
    expect(updated.config).toMatchObject({ host: 'build-9.internal', hasPrivateKey: true });
    expect((await rawConfig(env.id)).privateKey).toBe(first.privateKey);
    expect((await t.services.environments.getWithSecrets(companyId, env.id)).secretConfig.privateKey).toBe(newKey);
  });

  it('a value that merely looks encrypted is never trusted as ciphertext: it is refused as a key', async () => {
    const fake = 'enc:v1:00000000:AAAA:AAAA:AAAA';
    const err = await t.services.environments.create(companyId, { name: 'enc-fake', driver: 'ssh', config: { ...sshConfig, privateKey: fake } }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'invalid', fields: [{ path: 'config.privateKey' }] });
    expect((await t.services.environments.list(companyId)).map((e) => e.name)).not.toContain('enc-fake');
  });

  it('under another key, getWithSecrets fails with an error naming both keys, never garbage', async () => {
    const env = await t.services.environments.create(companyId, { name: 'enc-wrong-key', driver: 'ssh', config: sshConfig });
    const right = secretKey();
    const other = randomBytes(32);
    process.env.BERTH_SECRET_KEY = other.toString('hex');
    try {
      const err = await t.services.environments.getWithSecrets(companyId, env.id).catch((e: unknown) => e as Error);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toContain(`environment ${env.id}: cannot decrypt config.privateKey`);
      expect((err as Error).message).toContain(right.id);
      expect((err as Error).message).toContain(parseSecretKey(other.toString('hex'), 'x').id);
      expect((err as Error).message).not.toContain(keyBody);
    } finally {
      delete process.env.BERTH_SECRET_KEY;
    }
    expect((await t.services.environments.getWithSecrets(companyId, env.id)).secretConfig.privateKey).toBe(PRIVATE_KEY);
  });
});

describe('the cipher', () => {
  it('creates the key file on first use with mode 0600, and reuses it', () => {
    const path = join(home, 'secret.key');
    const key = secretKey();
    expect(key.source).toBe(path);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(Buffer.from(readFileSync(path, 'utf8').trim(), 'base64')).toHaveLength(32);
    expect(parseSecretKey(readFileSync(path, 'utf8'), path).id).toBe(key.id);
  });

  it('several processes creating the key file at once all end with the same key', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-keyrace-'));
    try {
      const script = `import { secretKey } from ${JSON.stringify(new URL('../../src/secrets/cipher.ts', import.meta.url).pathname)}; process.stdout.write(secretKey().id);`;
      const ids = await Promise.all(
        Array.from({ length: 6 }, () =>
          new Promise<string>((resolve, reject) => {
            const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { env: { ...process.env, BERTH_HOME: dir, BERTH_SECRET_KEY: '' }, stdio: ['ignore', 'pipe', 'inherit'] });
            let out = '';
            child.stdout.on('data', (d) => (out += d));
            child.once('error', reject);
            child.once('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}`))));
          }),
        ),
      );
      expect(new Set(ids).size).toBe(1);
      expect(ids[0]).toMatch(/^[0-9a-f]{8}$/);
      expect(parseSecretKey(readFileSync(join(dir, 'secret.key'), 'utf8'), 'file').id).toBe(ids[0]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('accepts BERTH_SECRET_KEY as hex or base64, and refuses a malformed one clearly', () => {
    const raw = randomBytes(32);
    expect(parseSecretKey(raw.toString('hex'), 'k').key.equals(raw)).toBe(true);
    expect(parseSecretKey(raw.toString('base64'), 'k').key.equals(raw)).toBe(true);
    expect(parseSecretKey(raw.toString('base64url'), 'k').key.equals(raw)).toBe(true);
    for (const bad of ['', 'short', randomBytes(16).toString('hex'), randomBytes(31).toString('base64'), 'z'.repeat(64)]) {
      expect(() => parseSecretKey(bad, 'BERTH_SECRET_KEY')).toThrow(/BERTH_SECRET_KEY is not a valid secret key: it must be 32 bytes/);
    }
    process.env.BERTH_SECRET_KEY = 'not-a-key';
    try {
      expect(() => secretKey()).toThrow(SecretKeyError);
    } finally {
      delete process.env.BERTH_SECRET_KEY;
    }
  });

  it('round-trips, uses a fresh IV each time, and refuses a tampered value', () => {
    const key = parseSecretKey(randomBytes(32).toString('hex'), 'k');
    const a = encryptSecret('hello ünïcode', key);
    const b = encryptSecret('hello ünïcode', key);
    expect(a).not.toBe(b);
    expect(decryptSecret(a, key)).toBe('hello ünïcode');
    const parts = a.split(':');
    const ct = Buffer.from(parts[5]!, 'base64');
    ct[0] = ct[0]! ^ 1;
    parts[5] = ct.toString('base64');
    expect(() => decryptSecret(parts.join(':'), key)).toThrow(/does not authenticate under key .*: it was damaged or altered/);
    expect(() => decryptSecret('enc:v1:abc', key)).toThrow(/damaged/);
  });
});
