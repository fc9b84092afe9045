// A real `berth serve` SIGKILLed while a sandboxed run (network none) is running: the run's
// processes, its relay, and the network held ready for the next run all end with it.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServeProcess, type ServeProcess } from '../support/serve-process.js';
import { waitFor } from '../support/wait.js';

const home = mkdtempSync(join(tmpdir(), 'berth-bwrap-crash-'));
let berth: ServeProcess | null = null;

afterAll(() => {
  berth?.child.kill('SIGKILL');
  rmSync(home, { recursive: true, force: true });
});

/** Pids on this host whose command line contains `needle` (and starts with `start`). */
function processesWith(needle: string, start = ''): number[] {
  const found: number[] = [];
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (cmd.startsWith(start) && cmd.includes(needle)) found.push(Number(p));
    } catch {
      /* exited meanwhile */
    }
  }
  return found;
}

describe('bubblewrap runs when their server is killed', () => {
  it('leave no process behind: not the run, not its relay, not the spare network', async () => {
    berth = await startServeProcess({ BERTH_HOME: home });
    const serverPid = berth.child.pid!;
    const co = (await berth.call('POST', '/api/companies', { body: { name: 'Crash Co' } })).body;
    const key = co.apiKey as string;
    const companyId = co.company.id as string;
    const env = await berth.call('POST', `/api/companies/${companyId}/environments`, { key, body: { name: 'boxed', driver: 'local', config: { isolation: 'bubblewrap' } } });
    expect(env.status, env.text).toBe(201);
    const marker = `600.${Date.now() % 100000}7`;
    const mk = (name: string, script: string) =>
      berth!.call('POST', `/api/companies/${companyId}/agents`, { key, body: { name, adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', script] }, defaultEnvironmentId: env.body.id } });
    // A first run, so a spare network is held ready; then one that stays running.
    const quick = (await mk('quick', 'echo quick')).body.id as string;
    const first = (await berth.call('POST', `/api/agents/${quick}/wakeup`, { key, body: {} })).body.id as string;
    await waitFor('the first run to succeed', async () => (await berth!.call('GET', `/api/heartbeat-runs/${first}`, { key })).body.status === 'succeeded', 30_000);
    const sleeper = (await mk('sleeper', `sleep ${marker} & sleep ${marker}`)).body.id as string;
    const run = (await berth.call('POST', `/api/agents/${sleeper}/wakeup`, { key, body: {} })).body.id as string;
    await waitFor('the sleepers to run', async () => processesWith(`sleep\0${marker}\0`).length === 2, 30_000);
    // Another quick run meanwhile: once it has ended, a spare network is made for the next.
    const second = (await berth.call('POST', `/api/agents/${quick}/wakeup`, { key, body: {} })).body.id as string;
    await waitFor('the second run to succeed', async () => (await berth!.call('GET', `/api/heartbeat-runs/${second}`, { key })).body.status === 'succeeded', 30_000);
    // This server's two relays run (the sleeper's, and the spare's): their sockets are in its directories.
    const relays = () => processesWith(`/tmp/berth-relay-${serverPid}-`, 'perl\0');
    await waitFor('the run\'s relay and the spare\'s', async () => relays().length === 2, 10_000);

    berth.child.kill('SIGKILL');
    await waitFor('everything the server started to end', async () => processesWith(`sleep\0${marker}\0`).length === 0 && relays().length === 0, 10_000);
    expect(run).toMatch(/^[0-9a-f-]{36}$/);
  });
});
