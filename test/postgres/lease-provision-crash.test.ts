// A server SIGKILLed while it provisions a lease acquired through the API (provision: true)
// leaves the write-ahead records only: an active lease and its resource `provisioning`.
// Another server's sweeps finish them: the lease expires by its TTL, its resource goes to
// the GC and is destroyed; no lease stays active, no resource record stays live. On real
// PostgreSQL, the killed server a `berth serve` process of its own; the SSH host's first
// connection hangs (so the kill lands mid-provision), later ones reach a real sshd.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Server, type Socket, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, queryRows, type Database } from '../../src/db/client.js';
import { sshDriver } from '../../src/drivers/ssh/driver.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';
import { startRecoveringRuntime } from '../support/phase-server.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { startServeProcess } from '../support/serve-process.js';
import { startTestSshd, type TestSshd } from '../support/sshd.js';
import { waitFor } from '../support/wait.js';

const secretKey = randomBytes(32).toString('hex');
process.env.BERTH_SECRET_KEY = secretKey;

let scratch: { url: string; drop: () => Promise<void> };
let database: Database;
let s: Services;
let sshd: TestSshd;
let gate: Server;
let gatePort: number;
const held: Socket[] = [];
let connections = 0;
const root = mkdtempSync(join(tmpdir(), 'berth-provision-crash-'));
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  scratch = await createScratchDatabase();
  database = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  s = createServices(database.db);
  sshd = await startTestSshd();
  // The first connection is held open and never answered (an SSH handshake that hangs); the rest go to the real sshd.
  gate = createServer((c) => {
    if (++connections === 1) return void held.push(c);
    const up = connect(sshd.port, sshd.host);
    c.pipe(up).pipe(c);
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
  });
  await new Promise<void>((r) => gate.listen(0, '127.0.0.1', () => r()));
  gatePort = (gate.address() as AddressInfo).port;
});
afterAll(async () => {
  for (const c of held) c.destroy();
  await new Promise<void>((r) => gate?.close(() => r()));
  await database?.close();
  await scratch?.drop();
  await sshd?.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('a server killed while it provisions an API lease', () => {
  it('leaves an active lease with its resource provisioning, which another server expires and destroys', async () => {
    const home = mkdtempSync(join(root, 'home-'));
    const server = await startServeProcess({ BERTH_HOME: home, DATABASE_URL: scratch.url, BERTH_SECRET_KEY: secretKey });
    let leaseId: string;
    let resourceId: string;
    let companyId: string;
    try {
      const co = await server.call('POST', '/api/companies', { body: { name: 'Provision Crash' } });
      companyId = co.body.company.id;
      const key = co.body.apiKey;
      const env = await server.call('POST', `/api/companies/${companyId}/environments`, {
        key,
        body: {
          name: 'hanging-ssh',
          driver: 'ssh',
          config: { host: '127.0.0.1', port: gatePort, username: sshd.username, privateKey: sshd.privateKey, knownHosts: sshd.knownHosts.replace(`[${sshd.host}]:${sshd.port}`, `[127.0.0.1]:${gatePort}`), remoteWorkspacePath: join(root, 'remote') },
        },
      });
      expect(env.status, env.text).toBe(201);
      // The acquire hangs in provision (its answer never comes: the server dies first).
      void fetch(`${server.url}/api/environments/${env.body.id}/leases`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ ttlSeconds: 3, provision: true }),
      }).catch(() => null);
      const reserved = await waitFor('the lease and its resource to be reserved', async () => {
        const [row] = await queryRows(database.db, sql`SELECT l.id, l.status, p.id AS resource_id, p.status AS resource_status FROM environment_leases l JOIN provider_resources p ON p.id = l.resource_id WHERE l.company_id = ${companyId}`);
        return row && held.length === 1 ? row : null;
      }, 20_000, 50);
      expect(reserved.status).toBe('active');
      expect(reserved.resource_status).toBe('provisioning');
      leaseId = String(reserved.id);
      resourceId = String(reserved.resource_id);
    } finally {
      server.child.kill('SIGKILL');
      await new Promise((r) => (server.child.exitCode !== null || server.child.signalCode !== null ? r(null) : server.child.once('exit', r)));
    }

    const b = await startRecoveringRuntime(s, database.db, new Map([['ssh', sshDriver({ idleMs: 1_000 })]]), runtimeErrors.onError);
    try {
      await waitFor('the lease to expire and its resource to be destroyed', async () => {
        const [row] = await queryRows(database.db, sql`SELECT l.status, p.status AS resource_status FROM environment_leases l JOIN provider_resources p ON p.id = l.resource_id WHERE l.id = ${leaseId}`);
        return row && row.status !== 'active' && row.resource_status === 'destroyed' ? row : null;
      }, 40_000, 100);
    } finally {
      await b.stop({ graceMs: 0 });
    }
    const lease = await s.leases.get(companyId!, leaseId);
    expect(['expired', 'failed']).toContain(lease.status);
    const live = await queryRows(database.db, sql`SELECT id, status FROM provider_resources WHERE company_id = ${companyId!} AND status NOT IN ('destroyed')`);
    expect(live).toEqual([]);
    expect((await s.resources.get(resourceId)).status).toBe('destroyed');
  }, 120_000);
});
