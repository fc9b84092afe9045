// `berth serve` in the foreground: start, say where and how to use it, and stop
// cleanly on SIGTERM or Ctrl-C (a second signal exits at once).
import { berthHome } from '../db/client.js';
import { DEMO_AGENT, ensureDemo } from '../server/demo.js';
import { parsePublicUrl, startServer, type BerthServer } from '../server/serve.js';
import { paint } from './format.js';

/** Run the demo agent once, so the first start shows a run going through a lease. */
async function demoRun(server: BerthServer, companyId: string): Promise<string> {
  const s = server.services;
  const [agent] = await s.agents.list(companyId, { name: DEMO_AGENT });
  if (!agent || !server.runtime) return 'skipped (no scheduler)';
  const queued = await s.runs.invoke(companyId, agent.id, { source: 'on_demand' }, { type: 'system', id: 'demo' });
  server.runtime.poke();
  const deadline = Date.now() + 30_000;
  for (;;) {
    const run = await s.runs.get(companyId, queued.id);
    if (!['queued', 'running'].includes(run.status)) {
      const lease = run.leaseId ? await s.leases.get(companyId, run.leaseId) : null;
      const pe = run.contextSnapshot.paperclipEnvironment as { name?: string } | undefined;
      const ms = run.startedAt && run.finishedAt ? run.finishedAt.getTime() - run.startedAt.getTime() : 0;
      return `${paint(run.status === 'succeeded' ? 'green' : 'red', run.status)} in ${ms} ms on ${pe?.name ?? '?'}, lease ${lease ? `${lease.id} acquired (fence ${lease.fence}) and ${lease.status}` : 'none'}${run.error ? ` — ${run.error}` : ''}`;
    }
    if (Date.now() > deadline) return `still ${run.status} after 30 s (see \`npx berth runs list\`)`;
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function runServe(o: { port: number; host: string; publicUrl?: string; maxRuns?: number; graceMs: number; demo: boolean }): Promise<void> {
  // --public-url, else BERTH_PUBLIC_URL, named as such if it is wrong.
  const given = o.publicUrl !== undefined ? { text: o.publicUrl, source: '--public-url' } : process.env.BERTH_PUBLIC_URL ? { text: process.env.BERTH_PUBLIC_URL, source: 'BERTH_PUBLIC_URL' } : null;
  const publicUrl = given ? parsePublicUrl(given.text, given.source) : undefined;
  const server = await startServer({ port: o.port, host: o.host, ...(publicUrl ? { publicUrl } : {}), ...(o.maxRuns ? { maxConcurrentRuns: o.maxRuns } : {}) });
  let signals = 0;
  const stop = (sig: string) => {
    signals++;
    if (signals > 1) {
      server.logger.warn({ signal: sig }, 'second signal: exiting now');
      process.exit(1);
    }
    void server.stop({ graceMs: o.graceMs }).then(
      () => process.exit(0),
      (err: unknown) => {
        server.logger.error({ err: (err as Error).message }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  const out = (line = '') => process.stdout.write(`${line}\n`);
  out();
  out(`  ${paint('bold', 'Berth')} is serving at ${paint('cyan', server.url)}  (${server.database.kind}: ${server.database.location})`);
  out(`  dashboard: ${server.url}/  (sign in with a company API key)`);
  if (server.publicUrl !== server.url) out(`  agents call back at ${server.publicUrl}  (--public-url)`);
  out(`  admin key: ${server.adminKeyPath}${server.adminKeyCreated ? ' (new)' : ''}`);
  if (o.demo) {
    try {
      await showDemo();
    } catch (err) {
      if (signals === 0) throw err; // stopped during the demo: nothing to report
    }
  }
  out();

  async function showDemo(): Promise<void> {
    const demo = await ensureDemo(server.services, server.url);
    out(`  demo company: ${demo.companyName ?? 'Demo'} ${demo.companyId}${demo.created ? ' (new)' : ''}`);
    out(`  API key:      ${demo.apiKey}   (saved for the CLI in ${berthHome()}/credentials.json, mode 0600)`);
    const summary = await demoRun(server, demo.companyId);
    out(`  demo run:     ${summary}`);
    out();
    out(`  try:  npx berth run ${DEMO_AGENT}        # a run through a lease on the Local environment`);
    out(`        npx berth env list`);
    out(`        npx berth activity`);
    out(`        curl -H "Authorization: Bearer ${demo.apiKey}" ${server.url}/api/companies/${demo.companyId}/environments`);
  }
}
