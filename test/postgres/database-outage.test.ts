// The database going away is said plainly: /health answers 503 with the reason
// while PostgreSQL (a throwaway cluster of this test's own) is down, and 200 again
// once it is back; the rest of the server keeps running.
import { execFileSync } from 'node:child_process';
import { chownSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, type Database } from '../../src/db/client.js';
import { createServices } from '../../src/services/index.js';
import { startTestApi, type TestApi } from '../support/http.js';
import { waitFor } from '../support/wait.js';

const binDir = (() => {
  const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a));
  if (versions.length === 0) throw new Error('no PostgreSQL under /usr/lib/postgresql: this test needs initdb and pg_ctl');
  return `/usr/lib/postgresql/${versions[0]}/bin`;
})();
const dir = mkdtempSync(join(tmpdir(), 'berth-outage-'));
let port = 0;
let database: Database;
let api: TestApi;

/** initdb and pg_ctl refuse to run as root: as user postgres when we are root. */
function pg(tool: string, args: string[]): void {
  const asRoot = process.getuid?.() === 0;
  const [cmd, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', `${binDir}/${tool}`, ...args]] : [`${binDir}/${tool}`, args];
  execFileSync(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
}
const start = () =>
  pg('pg_ctl', ['-D', `${dir}/data`, '-l', `${dir}/server.log`, '-w', '-t', '60', '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, 'start']);
const stop = () => pg('pg_ctl', ['-D', `${dir}/data`, '-m', 'fast', '-w', 'stop']);

beforeAll(async () => {
  port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  if (process.getuid?.() === 0) chownSync(dir, Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim()), 0);
  pg('initdb', ['-D', `${dir}/data`, '-A', 'trust', '-U', 'postgres', '--no-sync']);
  start();
  database = await openDatabase({ databaseUrl: `postgres://postgres@127.0.0.1:${port}/postgres`, poolSize: 4 });
  api = await startTestApi({ ...database, services: createServices(database.db) }, { runtime: false });
});
afterAll(async () => {
  await api?.close();
  await database?.close();
  try {
    stop();
  } catch {
    /* already stopped by a failed test */
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('database outage', () => {
  it('/health: 200, then 503 with the reason while the database is down, then 200 again', async () => {
    const up = await api.call('GET', '/health', { key: null });
    expect(up.status).toBe(200);
    expect(up.body).toMatchObject({ ok: true, database: 'postgres' });

    stop();
    const down = await api.call('GET', '/health', { key: null });
    expect(down.status).toBe(503);
    expect(down.body.error.code).toBe('database_unavailable');
    expect(down.body.error.message).toMatch(/database does not answer: .*(ECONNREFUSED|terminat|shut)/i);
    // The rest of the API says the same kind of thing, and the server is still up.
    const again = await api.call('GET', '/health', { key: null });
    expect(again.status).toBe(503);

    start();
    await waitFor('/health to answer 200 again', async () => (await api.call('GET', '/health', { key: null })).status === 200, 30_000, 200);
  });
});
