// The http adapter's limits: it refuses the server's own networks unless
// BERTH_HTTP_ALLOW_NETWORKS allows them (before any connection), follows no
// redirect, and reads at most its limit of an answer, then closes the connection.
// Only 127.0.0.1 ever receives traffic here; the other addresses are refused before connecting.
import { createServer, type Server, type ServerResponse } from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ALLOW_NETWORKS_VAR, egressPolicy } from '../src/adapters/egress.js';
import { httpAdapter, RESPONSE_LIMIT_BYTES } from '../src/adapters/http.js';
import type { AdapterContext } from '../src/adapters/types.js';
import type { RunOutcome } from '../src/services/runs.js';
import { waitFor } from './support/wait.js';

let server: Server;
let port: number;
let connections = 0;
const paths: string[] = [];
let bigResponse: { closed: boolean; finished: boolean; written: number } | null = null;

const BIG_BYTES = 64 * 1024 * 1024;

function streamBig(res: ServerResponse): void {
  const state = { closed: false, finished: false, written: 0 };
  bigResponse = state;
  const chunk = Buffer.alloc(64 * 1024, 'x');
  res.on('close', () => (state.closed = true));
  res.on('finish', () => (state.finished = true));
  const pump = () => {
    while (state.written < BIG_BYTES && !state.closed) {
      state.written += chunk.length;
      if (!res.write(chunk)) return void res.once('drain', pump);
    }
    if (!state.closed) res.end();
  };
  pump();
}

beforeAll(async () => {
  server = createServer((req, res) => {
    paths.push(req.url ?? '');
    req.resume();
    req.on('end', () => {
      if (req.url === '/big') return streamBig(res);
      if (req.url === '/redirect') {
        res.writeHead(302, { location: `http://127.0.0.1:${port}/elsewhere` });
        return void res.end();
      }
      res.end('accepted');
    });
  });
  server.on('connection', () => connections++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as { port: number }).port;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

const saved = process.env[ALLOW_NETWORKS_VAR];
afterEach(() => {
  if (saved === undefined) delete process.env[ALLOW_NETWORKS_VAR];
  else process.env[ALLOW_NETWORKS_VAR] = saved;
});

async function run(url: string, timeoutMs = 10_000): Promise<{ outcome: RunOutcome; log: Array<[string, string]> }> {
  const log: Array<[string, string]> = [];
  const ctx = {
    run: { id: '00000000-0000-4000-8000-000000000001', contextSnapshot: {} },
    agent: { id: '00000000-0000-4000-8000-000000000002', companyId: '00000000-0000-4000-8000-000000000003', adapterConfig: { url, timeoutMs } },
    workspace: { cwd: '/tmp', details: {} },
    apiUrl: 'http://127.0.0.1:1',
    token: 'brt_test',
    log: (stream: string, text: string) => log.push([stream, text]),
    abort: new AbortController().signal,
    onPid: () => {},
  } as unknown as AdapterContext;
  return { outcome: await httpAdapter.execute(ctx), log };
}

describe('http adapter egress', () => {
  it('refuses loopback by default, naming the address, without connecting', async () => {
    delete process.env[ALLOW_NETWORKS_VAR];
    const before = connections;
    const { outcome } = await run(`http://127.0.0.1:${port}/ok`);
    expect(outcome).toMatchObject({ status: 'failed', errorCode: 'egress_denied' });
    expect(outcome.error).toContain('127.0.0.1');
    expect(outcome.error).toContain('loopback');
    // A name that resolves to loopback is refused after resolution, the same way.
    const named = await run(`http://localhost:${port}/ok`);
    expect(named.outcome).toMatchObject({ status: 'failed', errorCode: 'egress_denied' });
    expect(named.outcome.error).toMatch(/localhost \((127\.0\.0\.1|::1)\)/);
    expect(connections).toBe(before);
    expect(paths).not.toContain('/ok');
  });

  // Only addresses of this machine go through the adapter itself: were the check ever
  // broken, these would reach nothing but this host.
  it.each([
    ['http://[::1]:9/', 'loopback'],
    ['http://[::ffff:127.0.0.1]:9/', 'loopback'],
    ['http://2130706433:9/', 'loopback'],
    ['http://0.0.0.0:9/', 'unspecified'],
    ['http://[::]:9/', 'unspecified'],
  ])('refuses %s (%s) by default', async (url, why) => {
    delete process.env[ALLOW_NETWORKS_VAR];
    const { outcome } = await run(url);
    expect(outcome).toMatchObject({ status: 'failed', errorCode: 'egress_denied' });
    expect(outcome.error).toContain(why);
  });

  // Other networks are checked through the policy the adapter applies before any
  // connection (no test sends traffic beyond 127.0.0.1).
  it.each([
    ['169.254.169.254', 'cloud metadata'],
    ['fd00:ec2::254', 'cloud metadata'],
    ['169.254.10.1', 'link-local'],
    ['fe80::1', 'link-local'],
    ['::ffff:169.254.169.254', 'cloud metadata'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['192.168.1.1', 'private'],
    ['fd12::1', 'private'],
    ['100.100.100.200', 'shared address space'],
    ['64:ff9b::a9fe:a9fe', 'NAT64'],
    ['::7f00:1', 'IPv4-compatible'],
  ])('the default policy refuses %s (%s)', (address, why) => {
    expect(egressPolicy(undefined).refusal(address)).toContain(why);
    expect(egressPolicy('').refusal(address)).toContain(why);
  });

  it('the default policy lets public addresses through', () => {
    for (const a of ['93.184.215.14', '1.1.1.1', '2606:4700:4700::1111', '172.32.0.1', '11.0.0.1']) expect(egressPolicy('').refusal(a)).toBeNull();
  });

  it('allows a denied range the operator lists in BERTH_HTTP_ALLOW_NETWORKS, and only that range', async () => {
    process.env[ALLOW_NETWORKS_VAR] = '127.0.0.1/32';
    const { outcome, log } = await run(`http://127.0.0.1:${port}/ok`);
    expect(outcome).toMatchObject({ status: 'succeeded' });
    expect(log.filter(([s]) => s === 'stdout').map(([, t]) => t).join('')).toBe('accepted\n');
    const other = await run('http://169.254.169.254/');
    expect(other.outcome).toMatchObject({ errorCode: 'egress_denied' });
  });

  it('fails the run naming the variable when BERTH_HTTP_ALLOW_NETWORKS is malformed', async () => {
    process.env[ALLOW_NETWORKS_VAR] = '127.0.0.1/32, 10.0.0.0/99';
    const { outcome } = await run(`http://127.0.0.1:${port}/ok`);
    expect(outcome).toMatchObject({ status: 'failed', errorCode: 'egress_config_invalid' });
    expect(outcome.error).toContain(ALLOW_NETWORKS_VAR);
    expect(outcome.error).toContain('10.0.0.0/99');
    for (const bad of ['nope', '127.0.0.1/', '::1/129', '1.2.3.4/8/1']) expect(() => egressPolicy(bad)).toThrow(ALLOW_NETWORKS_VAR);
    expect(egressPolicy('::1, 10.0.0.0/8').refusal('10.9.9.9')).toBeNull();
    expect(egressPolicy('').refusal('93.184.215.14')).toBeNull();
  });

  it('does not follow a redirect', async () => {
    process.env[ALLOW_NETWORKS_VAR] = '127.0.0.0/8';
    const { outcome } = await run(`http://127.0.0.1:${port}/redirect`);
    expect(outcome).toMatchObject({ status: 'failed', errorCode: 'http_302' });
    expect(outcome.error).toContain('redirects are not followed');
    expect(paths).not.toContain('/elsewhere');
  });
});

describe('http adapter response limit', () => {
  it(`reads a ${BIG_BYTES / 1024 / 1024} MB answer only up to its limit, then closes the connection`, async () => {
    process.env[ALLOW_NETWORKS_VAR] = '127.0.0.1';
    const { outcome, log } = await run(`http://127.0.0.1:${port}/big`);
    expect(outcome).toMatchObject({ status: 'succeeded' });
    const stdout = log.filter(([s]) => s === 'stdout').map(([, t]) => t).join('');
    expect(stdout.length).toBeLessThanOrEqual(RESPONSE_LIMIT_BYTES + 1);
    expect(stdout.startsWith('x'.repeat(1000))).toBe(true);
    expect(log.some(([s, t]) => s === 'system' && t.includes(`cut at ${RESPONSE_LIMIT_BYTES} bytes`))).toBe(true);
    // The server sees its answer's connection closed before it could write all of it.
    await waitFor('the big answer to be closed', async () => bigResponse?.closed);
    expect(bigResponse!.finished).toBe(false);
    expect(bigResponse!.written).toBeLessThan(BIG_BYTES);
  });
});
