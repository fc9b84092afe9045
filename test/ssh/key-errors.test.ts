// A private key ssh2 cannot read: refused at create and update (422 naming
// config.privateKey), and one already stored makes a probe fail naming the field. Its
// bytes reach no response, log line or activity row, and nothing unstorable (NUL) is
// written: a key missing its first line once made ssh2 quote NUL bytes PostgreSQL refused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { serve, type ServerType } from '@hono/node-server';
import pino from 'pino';
import { sql } from 'drizzle-orm';
import { queryRows } from '../../src/db/client.js';
import { sshDriver, type SshDriver } from '../../src/drivers/ssh/driver.js';
import { SshPool } from '../../src/drivers/ssh/pool.js';
import { createApp } from '../../src/http/app.js';
import { ADMIN_KEY_PREFIX } from '../../src/http/auth.js';
import { hashBearerSecret } from '../../src/secrets/bearer.js';
import { encryptSecret } from '../../src/secrets/cipher.js';
import { storableText } from '../../src/domain/text.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { newKeyPair, newPrivateKey, startTestSshd, type TestSshd } from '../support/sshd.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

const lines = newPrivateKey().trim().split('\n');
/** The pasted key missing the first line of its body: ssh2 decodes the rest and quotes its first 15 bytes as the "magic". */
const missingBodyLine = [lines[0], ...lines.slice(2)].join('\n');
/** The pasted key missing its BEGIN line. */
const missingBegin = lines.slice(1).join('\n');
/** A public key where the private one belongs. */
const publicKey = newKeyPair().publicKey;
const broken: Array<[string, string]> = [
  ['missing its first body line', missingBodyLine],
  ['missing its BEGIN line', missingBegin],
  ['a public key', publicKey],
];

/** Pieces of a key that must not appear anywhere: every 12-character run of its text, and what ssh2 would quote of its bytes. */
function keyPieces(key: string): string[] {
  // The base64 of the key (a public key's second word): its framing words are not secret.
  const body = key.split('\n').filter((l) => !l.startsWith('-----')).join('').split(/\s+/).sort((a, b) => b.length - a.length)[0]!;
  const pieces = new Set<string>();
  // From 36 on: the first characters encode what every key of its kind starts with (magic, type name).
  for (let i = 36; i + 12 <= body.length; i += 6) pieces.add(body.slice(i, i + 12));
  const decoded = Buffer.from(body, 'base64');
  if (decoded.length >= 15) pieces.add(decoded.subarray(0, 15).toString('utf8'));
  return [...pieces];
}
/** A key the test sshd accepts. */
const good = () => sshd.privateKey;
function expectNoKey(text: string, key: string, where: string) {
  expect(text.includes('\0'), `${where} holds a NUL`).toBe(false);
  for (const p of keyPieces(key)) expect(text.includes(p), `${where} quotes the key (${JSON.stringify(p)})`).toBe(false);
}

let t: TestDb;
let sshd: TestSshd;
let ssh: SshDriver;
let server: ServerType;
let url: string;
let logText = '';
const adminKey = `${ADMIN_KEY_PREFIX}${randomBytes(16).toString('hex')}`;
let companyId: string;
let n = 0;

beforeAll(async () => {
  sshd = await startTestSshd();
  t = await openTestDb();
  ssh = sshDriver({ idleMs: 60_000 });
  const logStream = new Writable({
    write(chunk, _enc, done) {
      logText += String(chunk);
      done();
    },
  });
  const app = createApp({
    services: t.services,
    drivers: new Map([['ssh', ssh]]),
    logger: pino({ level: 'debug' }, logStream),
    adminKeyHash: hashBearerSecret(adminKey),
    pokeScheduler: () => {},
    database: t.kind,
    version: 'test',
  });
  server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  companyId = (await call('POST', '/api/companies', { name: 'Keys Co' })).body.company.id;
});
afterAll(async () => {
  if (server) {
    await new Promise<void>((r) => {
      server.close(() => r());
      (server as { closeAllConnections?: () => void }).closeAllConnections?.();
    });
  }
  ssh?.close();
  await t?.close();
  await sshd?.stop();
});

async function call(method: string, path: string, body?: unknown): Promise<{ status: number; text: string; body: any }> {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${adminKey}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, text, body: text ? JSON.parse(text) : null };
}

const config = (privateKey: string) => ({ host: sshd.host, port: sshd.port, username: sshd.username, privateKey, knownHosts: sshd.knownHosts, remoteWorkspacePath: '/tmp/berth-key-errors' });

async function activityText(): Promise<string> {
  const [row = { all: '' }] = await queryRows<{ all: string }>(t.db, sql`SELECT coalesce(string_agg(row_to_json(a)::text, ''), '') AS all FROM activity_log a`);
  return row.all;
}

describe('a private key ssh2 cannot read', () => {
  for (const [what, key] of broken) {
    it(`${what}: create answers 422 naming config.privateKey, with no key bytes, and creates nothing`, async () => {
      const before = (await call('GET', `/api/companies/${companyId}/environments`)).body.length;
      const r = await call('POST', `/api/companies/${companyId}/environments`, { name: `bad-${++n}`, driver: 'ssh', config: config(key) });
      expect(r.status).toBe(422);
      expect(r.body.error.fields).toEqual([{ path: 'config.privateKey', message: expect.stringMatching(/private key/) }]);
      expectNoKey(r.text, key, 'the response');
      expect((await call('GET', `/api/companies/${companyId}/environments`)).body.length).toBe(before);
    });

    it(`${what}: update answers 422 naming privateKey, with no key bytes, and keeps the key that works`, async () => {
      const created = await call('POST', `/api/companies/${companyId}/environments`, { name: `upd-${++n}`, driver: 'ssh', config: config(good()) });
      expect(created.status).toBe(201);
      const r = await call('PATCH', `/api/environments/${created.body.id}`, { config: config(key) });
      expect(r.status).toBe(422);
      expect(r.body.error.fields).toEqual([{ path: expect.stringMatching(/(^|\.)privateKey$/), message: expect.stringMatching(/private key/) }]);
      expectNoKey(r.text, key, 'the response');
      expect((await call('POST', `/api/environments/${created.body.id}/probe`)).body.ok).toBe(true);
    });

    it(`${what}: already stored (written before keys were checked), a probe fails naming config.privateKey, with no key bytes anywhere`, async () => {
      const created = await call('POST', `/api/companies/${companyId}/environments`, { name: `stored-${++n}`, driver: 'ssh', config: config(good()) });
      expect(created.status).toBe(201);
      // The row as an older Berth stored it: the broken key sealed like any other.
      await t.db.execute(sql`UPDATE environments SET config = jsonb_set(config, '{privateKey}', to_jsonb(${encryptSecret(key)}::text)) WHERE id = ${created.body.id}`);
      const r = await call('POST', `/api/environments/${created.body.id}/probe`);
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ ok: false, details: { step: 'config' } });
      expect(r.body.error).toContain('config.privateKey');
      expectNoKey(r.text, key, 'the probe response');
      expectNoKey(JSON.stringify((await call('GET', `/api/environments/${created.body.id}`)).body), key, 'the environment');
      expectNoKey(await activityText(), key, 'the activity');
      expectNoKey(logText, key, 'the server log');
      expect(logText).not.toContain('"level":50'); // nothing failed unexpectedly
    });
  }

  it('a connection given a key ssh2 cannot read fails at auth naming config.privateKey, quoting nothing of it', async () => {
    // Past the schema: the connect step itself must not quote ssh2.
    const err = await new SshPool({ pooled: false })
      .borrow('x', { host: sshd.host, port: sshd.port, username: sshd.username, privateKey: missingBodyLine, knownHosts: sshd.knownHosts, strictHostKeyChecking: true })
      .then(() => null, (er: unknown) => er as Error & { step?: string });
    expect(err?.step).toBe('auth');
    expect(err?.message).toContain('config.privateKey');
    expectNoKey(err!.message, missingBodyLine, 'the connect error');
  });
});

describe('storableText', () => {
  it('removes what PostgreSQL cannot store (NUL, unpaired surrogates) and keeps the rest, pairs included', () => {
    expect(storableText('a\0b')).toBe('a\uFFFDb');
    expect(storableText('x\uD800y')).toBe('x\uFFFDy');
    expect(storableText('x\uDC00')).toBe('x\uFFFD');
    expect(storableText('ok 😀 ü')).toBe('ok 😀 ü');
  });

  it('what it returns PostgreSQL (or PGlite) stores', async () => {
    const nasty = `ssh said \0\uD83D and \uDE00 then 😀`;
    const [row] = await queryRows<{ v: string }>(t.db, sql`SELECT ${storableText(nasty)}::text AS v`);
    expect(row!.v).toBe(storableText(nasty));
  });
});
