// The netns relay with its inside end in Perl (relay-main.pl), as sandboxed local runs use
// it: it carries requests and large bodies both ways from inside an isolated namespace to
// the server, several connections at once, fails with the reason on a taken port, and
// once closed nothing listens inside any more.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { networkNamespaceOf, startNetnsRelay } from '../../src/drivers/isolation/netns-relay.js';
import { isAlive, waitFor } from '../support/wait.js';

const run = promisify(execFile);
let isolated: ChildProcess;
let api: http.Server;
let apiPort: number;

/** Run a node script inside the isolated namespace, as a sandboxed run would; its stdout. */
async function inside(code: string): Promise<string> {
  const { stdout } = await run('nsenter', [`--net=/proc/${isolated.pid}/ns/net`, '--', process.execPath, '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 20_000 });
  return stdout.trim();
}

beforeAll(async () => {
  // Echoes: GET /x answers "berth api /x"; POST answers the sha-less length and the first/last bytes of its body.
  api = http.createServer((req, res) => {
    if (req.method === 'POST') {
      let n = 0;
      let first = '';
      let last = '';
      req.on('data', (d: Buffer) => {
        if (n === 0) first = d.toString('latin1', 0, 1);
        n += d.length;
        last = d.toString('latin1', d.length - 1);
      });
      req.on('end', () => res.end(`got ${n} ${first}${last}`));
      return;
    }
    if (req.url === '/big') return void res.end('z'.repeat(4 * 1024 * 1024));
    res.end(`berth api ${req.url}`);
  });
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', () => r()));
  apiPort = (api.address() as AddressInfo).port;
  isolated = spawn('unshare', ['--net', 'sh', '-c', 'ip link set lo up && exec sleep 600'], { stdio: 'ignore' });
  await waitFor('the isolated namespace', async () => {
    const ns = networkNamespaceOf(isolated.pid!);
    return ns !== null && ns !== networkNamespaceOf('self') && readFileSync(`/proc/${isolated.pid}/cmdline`, 'utf8').startsWith('sleep');
  }, 5000);
});

afterAll(async () => {
  isolated?.kill('SIGKILL');
  await new Promise<void>((r) => api?.close(() => r()));
});

describe('netns relay, Perl inside end', () => {
  it('carries requests, large bodies both ways and parallel connections; closed, nothing listens', async () => {
    const relay = await startNetnsRelay({ pid: isolated.pid!, port: 43217, target: { host: '127.0.0.1', port: apiPort }, inside: 'perl' });
    try {
      expect(readFileSync(`/proc/${relay.pid}/cmdline`, 'utf8')).toContain('relay-main.pl');
      const out = await inside(`
        const u = ${JSON.stringify(relay.url)};
        const one = await (await fetch(u + '/api/health')).text();
        const big = (await (await fetch(u + '/big')).text()).length;
        const body = 'a' + 'b'.repeat(3 * 1024 * 1024) + 'c';
        const up = await (await fetch(u + '/up', { method: 'POST', body })).text();
        const many = await Promise.all(Array.from({ length: 20 }, (_, i) => fetch(u + '/p' + i).then((r) => r.text())));
        const direct = await fetch('http://127.0.0.1:${apiPort}/x').then(() => 'open', (e) => e.cause?.code ?? 'error');
        console.log(JSON.stringify({ one, big, up, many: many.every((t, i) => t === 'berth api /p' + i), direct }));`);
      expect(JSON.parse(out)).toEqual({ one: 'berth api /api/health', big: 4 * 1024 * 1024, up: `got ${3 * 1024 * 1024 + 2} ac`, many: true, direct: 'ECONNREFUSED' });
      await expect(startNetnsRelay({ pid: isolated.pid!, port: 43217, target: { host: '127.0.0.1', port: apiPort }, inside: 'perl' })).rejects.toThrow(/cannot listen on 127.0.0.1:43217.*in use/i);
    } finally {
      await relay.close();
    }
    expect(isAlive(relay.pid)).toBe(false);
    expect(await inside(`console.log(await fetch('http://127.0.0.1:43217/').then(() => 'open', (e) => e.cause?.code))`)).toBe('ECONNREFUSED');
  });
});
