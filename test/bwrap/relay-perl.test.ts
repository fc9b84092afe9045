// The network a sandboxed run with no network joins (openSandboxNet): a fresh namespace
// whose first process is the relay's Perl inside end (relay-main.pl). From inside it, the
// server answers at the relay's port (requests, large bodies both ways, parallel
// connections) and nothing else of the host does; the port cannot be taken twice; once
// closed, nothing listens and no process of it is left.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { networkNamespaceOf, relayMainPerl } from '../../src/drivers/isolation/netns-relay.js';
import { openSandboxNet } from '../../src/drivers/local/bwrap.js';

const run = promisify(execFile);
let api: http.Server;
let apiPort: number;

/** Run a node script in the namespace at `nsPath`, as a sandboxed run would; its stdout. */
async function inside(nsPath: string, code: string): Promise<string> {
  const { stdout } = await run('nsenter', [`--net=${nsPath}`, '--', process.execPath, '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 20_000 });
  return stdout.trim();
}

/** Pids on this host in the network namespace `ns` (`net:[inode]`). */
const inNetwork = (ns: string) =>
  readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readlinkSync(`/proc/${p}/ns/net`) === ns;
      } catch {
        return false;
      }
    });

beforeAll(async () => {
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
});

afterAll(async () => {
  await new Promise<void>((r) => api?.close(() => r()));
});

describe('a sandbox network with its Perl relay', () => {
  it('carries requests, large bodies both ways and parallel connections to the server, and nothing else; closed, nothing is left', async () => {
    const net = await openSandboxNet(43217, { host: '127.0.0.1', port: apiPort });
    const ns = readlinkSync(net.nsPath);
    try {
      const out = await inside(net.nsPath, `
        const u = 'http://127.0.0.1:43217';
        const one = await (await fetch(u + '/api/health')).text();
        const big = (await (await fetch(u + '/big')).text()).length;
        const body = 'a' + 'b'.repeat(3 * 1024 * 1024) + 'c';
        const up = await (await fetch(u + '/up', { method: 'POST', body })).text();
        const many = await Promise.all(Array.from({ length: 20 }, (_, i) => fetch(u + '/p' + i).then((r) => r.text())));
        const direct = await fetch('http://127.0.0.1:${apiPort}/x').then(() => 'open', (e) => e.cause?.code ?? 'error');
        const { readlinkSync } = await import('node:fs');
        console.log(JSON.stringify({ one, big, up, many: many.every((t, i) => t === 'berth api /p' + i), direct, ns: readlinkSync('/proc/self/ns/net') }));`);
      const seen = JSON.parse(out);
      expect(seen).toMatchObject({ one: 'berth api /api/health', big: 4 * 1024 * 1024, up: `got ${3 * 1024 * 1024 + 2} ac`, many: true, direct: 'ECONNREFUSED' });
      expect(seen.ns).toBe(ns);
      expect(ns).not.toBe(networkNamespaceOf('self'));
      // The port is the relay's: a second listener there is refused, with the reason.
      const again = await run('nsenter', [`--net=${net.nsPath}`, '--', 'perl', relayMainPerl, '43217', '/nonexistent', 'nostdin'], { encoding: 'utf8' }).then(
        () => 'listened',
        (e: { code?: number; stderr?: string }) => `${e.code} ${e.stderr}`,
      );
      expect(again).toMatch(/^3 relay: cannot listen on 127\.0\.0\.1:43217 in this network namespace: Address already in use/);
      // Held by the relay, nothing else.
      const held = inNetwork(ns).map((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').slice(0, 2).join(' '));
      expect(held.length).toBeGreaterThan(0);
      for (const h of held) expect(h).toMatch(/^perl .*relay-main\.pl$/);
    } finally {
      await net.close();
    }
    await net.close(); // twice is fine
    const deadline = Date.now() + 5000;
    while (inNetwork(ns).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(inNetwork(ns)).toEqual([]);
  });

  it('listens on a port below 1024 too (a server on port 80)', async () => {
    const net = await openSandboxNet(80, { host: '127.0.0.1', port: apiPort });
    try {
      expect(await inside(net.nsPath, `console.log(await (await fetch('http://127.0.0.1:80/low')).text())`)).toBe('berth api /low');
    } finally {
      await net.close();
    }
  });

  it('a port that cannot be listened on fails with the relay\'s reason', async () => {
    await expect(openSandboxNet(70000, { host: '127.0.0.1', port: apiPort })).rejects.toThrow(/relay for a sandbox with no network could not start: it exited \(code 2\): usage: relay-main.pl/);
  });
});
