// PAPERCLIP_API_URL is an address runs can connect to: `berth serve` gives its real
// bound address (the port it got for --port 0, loopback for a wildcard bind) or the
// --public-url / BERTH_PUBLIC_URL the operator names (checked: an http(s) URL); the
// worker, which serves no API, refuses to start without BERTH_PUBLIC_URL and gives
// its runs exactly that, never a guessed port.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { openDatabase } from '../src/db/client.js';
import { parsePublicUrl, startServer, type BerthServer } from '../src/server/serve.js';
import { createServices } from '../src/services/index.js';
import { createScratchDatabase, testBackend } from './support/db.js';
import { waitFor } from './support/wait.js';

const home = mkdtempSync(join(tmpdir(), 'berth-public-url-'));
process.env.BERTH_HOME = home;
process.env.BERTH_SECRET_KEY = 'a'.repeat(64);
let scratch: Awaited<ReturnType<typeof createScratchDatabase>> | null = null;
/** The database a server or worker of this file uses: a scratch PostgreSQL one, or PGlite in this file's BERTH_HOME. */
let databaseUrl = '';

beforeAll(async () => {
  if (testBackend() === 'postgres') {
    scratch = await createScratchDatabase();
    databaseUrl = scratch.url;
  }
});
afterAll(async () => {
  await scratch?.drop();
  rmSync(home, { recursive: true, force: true });
});

describe('parsePublicUrl', () => {
  it('takes an http(s) URL, path and all, without its trailing slash', () => {
    expect(parsePublicUrl('http://berth.internal:3710', 'x')).toBe('http://berth.internal:3710');
    expect(parsePublicUrl('https://berth.example.com/', 'x')).toBe('https://berth.example.com');
    expect(parsePublicUrl(' https://proxy.example.com/berth/ ', 'x')).toBe('https://proxy.example.com/berth');
    expect(parsePublicUrl('http://[fd00::5]:3710', 'x')).toBe('http://[fd00::5]:3710');
  });

  const refused: Array<[string, RegExp]> = [
    ['berth.internal:3710', /not a URL agents can reach this server at: it must be http or https|give an http\(s\) URL/],
    ['not a url', /give an http\(s\) URL/],
    ['', /give an http\(s\) URL/],
    ['ftp://berth.internal', /it must be http or https, not ftp/],
    ['http://berth.internal/?a=1', /must not have a query or fragment/],
    ['http://0.0.0.0:3710', /0\.0\.0\.0 is an address to listen on, not one to connect to/],
    ['http://[::]:3710', /\[::\] is an address to listen on/],
  ];
  for (const [text, why] of refused) {
    it(`refuses ${JSON.stringify(text)}, naming where it came from and why`, () => {
      expect(() => parsePublicUrl(text, 'BERTH_PUBLIC_URL')).toThrow(new RegExp(`^BERTH_PUBLIC_URL ${JSON.stringify(text).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not a URL`));
      expect(() => parsePublicUrl(text, 'BERTH_PUBLIC_URL')).toThrow(why);
    });
  }
  it('quotes a URL with credentials without them', () => {
    const err = (() => {
      try {
        parsePublicUrl('http://agent:hunter2-pw@berth.internal/', '--public-url');
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err?.message).toBe('--public-url "http://***@berth.internal/" is not a URL agents can reach this server at: it must not carry credentials (agents authenticate with PAPERCLIP_API_KEY)');
  });
});

/** Run a local agent that writes its PAPERCLIP_API_URL to a file, through `server`; the value. */
async function apiUrlOfARun(server: BerthServer): Promise<string> {
  const s = server.services;
  const co = await s.companies.create({ name: `co-${Math.random()}` });
  const out = join(home, `api-url-${co.id}`);
  const agent = await s.agents.create(co.id, { name: 'print', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', `printf %s "$PAPERCLIP_API_URL" > ${out}`] } });
  const queued = await s.runs.invoke(co.id, agent.id, { source: 'on_demand' });
  server.runtime!.poke();
  const run = await waitFor('the run', async () => {
    const r = await s.runs.get(co.id, queued.id);
    return r.finishedAt ? r : null;
  }, 30_000);
  expect(run.status).toBe('succeeded');
  return readFileSync(out, 'utf8');
}

describe('berth serve', () => {
  const quiet = () => pino({ level: 'silent' });

  it('with --port 0 and --host 0.0.0.0, gives runs the port it got, on loopback (never 0.0.0.0 or port 0)', async () => {
    const server = await startServer({ port: 0, host: '0.0.0.0', databaseUrl, announce: false, logger: quiet() });
    try {
      expect(server.port).toBeGreaterThan(0);
      expect(server.url).toBe(`http://127.0.0.1:${server.port}`);
      expect(server.publicUrl).toBe(server.url);
      const given = await apiUrlOfARun(server);
      expect(given).toBe(`http://127.0.0.1:${server.port}`);
      expect((await fetch(`${given}/health`)).status).toBe(200); // one can connect to it
    } finally {
      await server.stop({ graceMs: 0 });
    }
  });

  it('with a public URL, gives runs that one', async () => {
    const server = await startServer({ port: 0, publicUrl: 'https://berth.example.com/', databaseUrl, announce: false, logger: quiet() });
    try {
      expect(server.publicUrl).toBe('https://berth.example.com');
      expect(await apiUrlOfARun(server)).toBe('https://berth.example.com');
    } finally {
      await server.stop({ graceMs: 0 });
    }
  });

  it('refuses a public URL that is not http(s) before it opens anything', async () => {
    const err = await startServer({ port: 0, publicUrl: 'ftp://x', databaseUrl, announce: false, logger: quiet() }).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/"ftp:\/\/x" is not a URL agents can reach this server at: it must be http or https, not ftp/);
  });

  /** `berth serve` with these args and env: its exit code and stderr (it must exit on its own). */
  function cli(args: string[], env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['bin/berth.mjs', 'serve', '--port', '0', ...args], { env: { ...process.env, DATABASE_URL: databaseUrl, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      child.once('error', reject);
      child.once('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, stderr });
      });
    });
  }

  it('the CLI refuses a bad --public-url or BERTH_PUBLIC_URL with one line naming it, and exits 1', async () => {
    const [opt, env] = await Promise.all([cli(['--public-url', 'berth:3710'], {}), cli([], { BERTH_PUBLIC_URL: 'http://0.0.0.0:3710' })]);
    expect(opt.code).toBe(1);
    expect(opt.stderr).toMatch(/^berth: --public-url "berth:3710" is not a URL agents can reach this server at/);
    expect(env.code).toBe(1);
    expect(env.stderr).toMatch(/^berth: BERTH_PUBLIC_URL "http:\/\/0\.0\.0\.0:3710" is not a URL .*0\.0\.0\.0 is an address to listen on/);
  });
});

describe('npm run worker', () => {
  function worker(env: Record<string, string>): { done: Promise<{ code: number | null; stdout: string; stderr: string }>; kill: () => void } {
    const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/worker.ts'], {
      env: { ...process.env, DATABASE_URL: databaseUrl, BERTH_PUBLIC_URL: '', BERTH_API_URL: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
      child.once('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      }),
    );
    return { done, kill: () => child.kill('SIGTERM') };
  }

  it('refuses to start without BERTH_PUBLIC_URL, saying to set it (and that BERTH_API_URL is no longer read)', async () => {
    const [none, old] = await Promise.all([worker({}).done, worker({ BERTH_API_URL: 'http://127.0.0.1:3100' }).done]);
    for (const r of [none, old]) {
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/berth worker: set BERTH_PUBLIC_URL to the address agents reach a berth serve at/);
      expect(r.stdout).not.toMatch(/ready/);
    }
    expect(old.stderr).toMatch(/BERTH_API_URL is no longer read/);
  });

  it('refuses a BERTH_PUBLIC_URL that is not an http(s) URL', async () => {
    const r = await worker({ BERTH_PUBLIC_URL: 'localhost:3710' }).done;
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/berth worker: BERTH_PUBLIC_URL "localhost:3710" is not a URL/);
  });

  it('gives its runs the BERTH_PUBLIC_URL it was given', async () => {
    // The run is queued first; PGlite has one owner at a time, so this process lets go before the worker starts.
    const database = await openDatabase({ databaseUrl });
    const s = createServices(database.db);
    const co = await s.companies.create({ name: 'Worker Co' });
    const out = join(home, 'worker-api-url');
    const agent = await s.agents.create(co.id, { name: 'print', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', `printf %s "$PAPERCLIP_API_URL" > ${out}`] } });
    await s.runs.invoke(co.id, agent.id, { source: 'on_demand' });
    await database.close();
    const w = worker({ BERTH_PUBLIC_URL: 'http://berth-api.internal:4000/' });
    try {
      await waitFor('the worker to run it', async () => existsSync(out) && readFileSync(out, 'utf8').length > 0, 60_000, 100);
      expect(readFileSync(out, 'utf8')).toBe('http://berth-api.internal:4000');
    } finally {
      w.kill();
    }
    const r = await w.done;
    expect(r.stdout).toMatch(/ready .* public-url http:\/\/berth-api\.internal:4000/);
  });
});
