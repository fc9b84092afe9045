// The netns relay: an isolated network namespace reaches the server through it and nothing
// else; it ends with close() and with its server.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { networkNamespaceOf, startNetnsRelay } from '../../src/drivers/isolation/netns-relay.js';
import { isAlive, waitFor } from '../support/wait.js';

const run = promisify(execFile);
let isolated: ChildProcess; // a process alone in a fresh network namespace (loopback up), like a container's
let api: http.Server; // stands for the server's own listener, on the host's 127.0.0.1
let apiPort: number;

/**
 * From inside the isolated namespace, as a run would: a GET of `url`; resolves to `body:<text>`
 * or `error:<code>`. Asynchronous: the relay's outside end lives in this process.
 */
async function fetchInside(url: string): Promise<string> {
  const code = `require('http').get(${JSON.stringify(url)}, (r) => { let b = ''; r.on('data', (d) => (b += d)); r.on('end', () => console.log('body:' + b)); })
    .on('error', (e) => console.log('error:' + e.code));`;
  const { stdout } = await run('nsenter', [`--net=/proc/${isolated.pid}/ns/net`, '--', process.execPath, '-e', code], { encoding: 'utf8', timeout: 10_000 });
  return stdout.trim();
}

beforeAll(async () => {
  api = http.createServer((req, res) => res.end(`berth api ${req.url}`));
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', () => r()));
  apiPort = (api.address() as AddressInfo).port;
  isolated = spawn('unshare', ['--net', 'sh', '-c', 'ip link set lo up && exec sleep 600'], { stdio: 'ignore' });
  // The namespace exists once sleep runs in it (before that the pid is unshare's, in ours).
  await waitFor('the isolated namespace', async () => {
    const ns = networkNamespaceOf(isolated.pid!);
    return ns !== null && ns !== networkNamespaceOf('self') && readFileSync(`/proc/${isolated.pid}/cmdline`, 'utf8').startsWith('sleep');
  }, 5000);
});

afterAll(async () => {
  isolated?.kill('SIGKILL');
  await new Promise<void>((r) => api?.close(() => r()));
});

describe('netns relay', () => {
  it('carries requests from inside the namespace to the server, while the server itself is unreachable from there', async () => {
    // The control: the server answers on the host, and its own address is refused from inside.
    expect(await (await fetch(`http://127.0.0.1:${apiPort}/x`)).text()).toBe('berth api /x');
    expect(await fetchInside(`http://127.0.0.1:${apiPort}/x`)).toBe('error:ECONNREFUSED');

    const relay = await startNetnsRelay({ pid: isolated.pid!, port: 43117, target: { host: '127.0.0.1', port: apiPort } });
    try {
      expect(relay.url).toBe('http://127.0.0.1:43117');
      expect(await fetchInside(`${relay.url}/api/health`)).toBe('body:berth api /api/health');
      // Only the relay listens inside: any other port is still refused, and the relay is not on the host.
      expect(await fetchInside(`http://127.0.0.1:${apiPort}/x`)).toBe('error:ECONNREFUSED');
      await expect(fetch(`${relay.url}/`)).rejects.toThrow();
    } finally {
      await relay.close();
    }
    expect(isAlive(relay.pid)).toBe(false);
    expect(await fetchInside(`http://127.0.0.1:43117/`)).toBe('error:ECONNREFUSED');
    await relay.close(); // twice is fine
  });

  it('two relays into one namespace cannot take the same port; the second fails with the reason', async () => {
    const first = await startNetnsRelay({ pid: isolated.pid!, port: 43118, target: { host: '127.0.0.1', port: apiPort } });
    try {
      await expect(startNetnsRelay({ pid: isolated.pid!, port: 43118, target: { host: '127.0.0.1', port: apiPort } })).rejects.toThrow(/EADDRINUSE/);
      expect(await fetchInside(`${first.url}/still`)).toBe('body:berth api /still');
    } finally {
      await first.close();
    }
  });

  it('refuses a process in the server\'s own namespace, and one that is gone', async () => {
    await expect(startNetnsRelay({ pid: process.pid, port: 43119, target: { host: '127.0.0.1', port: apiPort } })).rejects.toThrow(/shares this server's network namespace/);
    await expect(startNetnsRelay({ pid: 2 ** 22 + 7, port: 43119, target: { host: '127.0.0.1', port: apiPort } })).rejects.toThrow(/is gone/);
  });

  it('dies with its server: SIGKILL of the process that opened it ends the inside end', async () => {
    const holder = spawn(process.execPath, ['--import', 'tsx', 'test/support/relay-holder.ts', String(isolated.pid), '43120', String(apiPort)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    holder.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    await waitFor("the holder's relay", async () => /relay \d+\n/.test(out), 20_000);
    const relayPid = Number(/relay (\d+)/.exec(out)![1]);
    expect(isAlive(relayPid)).toBe(true);
    expect(await fetchInside('http://127.0.0.1:43120/held')).toBe('body:berth api /held');
    holder.kill('SIGKILL');
    await waitFor('the relay to die with its server', async () => !isAlive(relayPid), 3000);
    expect(await fetchInside('http://127.0.0.1:43120/held')).toBe('error:ECONNREFUSED');
    // The dead server's socket directory is removed by the next server that opens a relay.
    const leftover = () => readdirSync(tmpdir()).filter((n) => n.startsWith(`berth-relay-${holder.pid}-`));
    expect(leftover()).toHaveLength(1);
    await waitFor('the holder to be gone', async () => !isAlive(holder.pid!), 3000);
    const next = spawn(process.execPath, ['--import', 'tsx', 'test/support/relay-holder.ts', String(isolated.pid), '43121', String(apiPort)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let nextOut = '';
    next.stdout!.setEncoding('utf8').on('data', (d: string) => (nextOut += d));
    await waitFor("the second holder's relay", async () => /relay \d+\n/.test(nextOut), 20_000);
    next.kill('SIGKILL');
    expect(leftover()).toHaveLength(0);
  });
});
