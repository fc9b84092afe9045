// Several servers on one database share its secret key: a server with another key (its
// own BERTH_HOME's secret.key) refuses to start and says to set BERTH_SECRET_KEY; with the
// same BERTH_SECRET_KEY, secrets sealed through one server (an SSH key, envVars) work on
// the other: an SSH probe and a run.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseSecretKey } from '../../src/secrets/cipher.js';
import { createScratchDatabase } from '../support/db.js';
import { serveMustFail, startServeProcess, type ServeProcess } from '../support/serve-process.js';
import { startTestSshd, type TestSshd } from '../support/sshd.js';
import { waitFor } from '../support/wait.js';

const homes: string[] = [];
const newHome = () => {
  const h = mkdtempSync(join(tmpdir(), 'berth-key-'));
  homes.push(h);
  return h;
};
const scratches: Array<Awaited<ReturnType<typeof createScratchDatabase>>> = [];
const servers: ServeProcess[] = [];
let sshd: TestSshd;

beforeAll(async () => {
  sshd = await startTestSshd();
});
afterAll(async () => {
  for (const s of servers) await s.stop();
  await sshd?.stop();
  for (const s of scratches) await s.drop();
  for (const h of homes) rmSync(h, { recursive: true, force: true });
});

async function serve(env: Record<string, string> & { BERTH_HOME: string }): Promise<ServeProcess> {
  const s = await startServeProcess(env);
  servers.push(s);
  return s;
}

describe('servers on one database', () => {
  it('refuse a key other than the database\'s, and share secrets once they have the same BERTH_SECRET_KEY', async () => {
    const db = await createScratchDatabase();
    scratches.push(db);
    const [homeA, homeB] = [newHome(), newHome()];

    const a = await serve({ BERTH_HOME: homeA, DATABASE_URL: db.url });
    const keyA = readFileSync(join(homeA, 'secret.key'), 'utf8').trim();
    const idA = parseSecretKey(keyA, 'a').id;
    const co = await a.call('POST', '/api/companies', { body: { name: 'Shared Co' } });
    const key = co.body.apiKey as string;
    const companyId = co.body.company.id as string;
    const ssh = await a.call('POST', `/api/companies/${companyId}/environments`, {
      key,
      body: { name: 'ssh', driver: 'ssh', config: { host: sshd.host, port: sshd.port, username: sshd.username, remoteWorkspacePath: join(sshd.dir, 'ws'), privateKey: sshd.privateKey, knownHosts: sshd.knownHosts } },
    });
    expect(ssh.status, ssh.text).toBe(201);
    const secretValue = `shared-${randomBytes(4).toString('hex')}`;
    const local = await a.call('POST', `/api/companies/${companyId}/environments`, { key, body: { name: 'here', driver: 'local', envVars: { SHARED: secretValue } } });
    expect(local.status, local.text).toBe(201);
    const agent = await a.call('POST', `/api/companies/${companyId}/agents`, {
      key,
      body: { name: 'printer', adapterType: 'process', defaultEnvironmentId: local.body.id, adapterConfig: { command: process.execPath, args: ['-e', "console.log('hex=' + Buffer.from(process.env.SHARED).toString('hex'))"] } },
    });
    expect(agent.status, agent.text).toBe(201);
    expect((await a.call('POST', `/api/environments/${ssh.body.id}/probe`, { key })).body).toMatchObject({ ok: true });

    // A second server with its own BERTH_HOME makes its own key: refused, with what to do.
    const refused = await serveMustFail({ BERTH_HOME: homeB, DATABASE_URL: db.url });
    expect(refused.code, refused.output).not.toBe(0);
    expect(refused.output).toContain('BERTH_SECRET_KEY');
    expect(refused.output).toContain(`sealed with secret key ${idA}`);
    const idB = parseSecretKey(readFileSync(join(homeB, 'secret.key'), 'utf8'), 'b').id;
    expect(refused.output).toContain(idB);
    expect(refused.output).not.toContain(keyA);
    expect(refused.output).not.toMatch(/Berth is serving/);

    // With A's key given as BERTH_SECRET_KEY, B serves alongside A and opens A's secrets.
    const b = await serve({ BERTH_HOME: homeB, DATABASE_URL: db.url, BERTH_SECRET_KEY: keyA });
    const probe = await b.call('POST', `/api/environments/${ssh.body.id}/probe`, { key });
    expect(probe.body, probe.text).toMatchObject({ ok: true });
    await a.stop(); // the run below is then B's
    const run = await b.call('POST', `/api/agents/${agent.body.id}/wakeup`, { key, body: {} });
    expect(run.status, run.text).toBe(202);
    const done = await waitFor('the run on B', async () => {
      const r = await b.call('GET', `/api/heartbeat-runs/${run.body.id}`, { key });
      return ['queued', 'running'].includes(r.body.status) ? null : r.body;
    }, 60_000, 100);
    expect(done.status, JSON.stringify(done)).toBe('succeeded');
    expect((await b.call('GET', `/api/heartbeat-runs/${run.body.id}/log`, { key })).text).toContain(`hex=${Buffer.from(secretValue).toString('hex')}`);

    // An environment sealed through B opens on A restarted with the same BERTH_SECRET_KEY.
    const fromB = await b.call('POST', `/api/companies/${companyId}/environments`, {
      key,
      body: { name: 'ssh-b', driver: 'ssh', config: { host: sshd.host, port: sshd.port, username: sshd.username, remoteWorkspacePath: join(sshd.dir, 'ws'), privateKey: sshd.privateKey, knownHosts: sshd.knownHosts } },
    });
    expect(fromB.status, fromB.text).toBe(201);
    const a2 = await serve({ BERTH_HOME: homeA, DATABASE_URL: db.url, BERTH_SECRET_KEY: keyA });
    expect((await a2.call('POST', `/api/environments/${fromB.body.id}/probe`, { key })).body).toMatchObject({ ok: true });
  });

  it('starting at the same instant with different keys on a new database: exactly one serves', async () => {
    const db = await createScratchDatabase();
    scratches.push(db);
    const keys = [randomBytes(32).toString('base64'), randomBytes(32).toString('base64')];
    const outcomes = await Promise.all(
      keys.map((k) =>
        startServeProcess({ BERTH_HOME: newHome(), DATABASE_URL: db.url, BERTH_SECRET_KEY: k }).then(
          (s) => (servers.push(s), 'served'),
          (err: Error) => err.message,
        ),
      ),
    );
    expect(outcomes.filter((o) => o === 'served'), JSON.stringify(outcomes)).toHaveLength(1);
    const failure = outcomes.find((o) => o !== 'served')!;
    expect(failure).toContain('BERTH_SECRET_KEY');
    expect(failure).toMatch(/sealed with secret key [0-9a-f]{8}/);
  });
});
