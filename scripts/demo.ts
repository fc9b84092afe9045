// The quick-start demo: on the embedded database under BERTH_HOME (or on
// PostgreSQL with DATABASE_URL), make a company, ensure its Local environment,
// run leases through their life, run an agent's process through a lease, and
// print what the activity log recorded.
import { randomUUID } from 'node:crypto';
import { openDatabase } from '../src/db/client.js';
import { isBerthError } from '../src/domain/errors.js';
import { createServices } from '../src/services/index.js';
import { startRuntime } from '../src/heartbeat/runtime.js';

const t0 = performance.now();
const database = await openDatabase();
const s = createServices(database.db);
const ms = () => `${(performance.now() - t0).toFixed(0)} ms`;
const say = (text: string) => console.log(`  ${text}`);

try {
  console.log(`Berth demo — database: ${database.kind} at ${database.location} (opened in ${ms()})\n`);
  const company = await s.companies.create({ name: `Demo Co ${new Date().toISOString().slice(0, 19)}` });
  say(`company       ${company.name} (${company.id})`);
  const local = await s.environments.ensureLocalEnvironment(company.id);
  say(`environment   ${local.name}: driver ${local.driver}, status ${local.status}, capacity ${local.capacity ?? 'unlimited'}`);
  const again = await s.environments.ensureLocalEnvironment(company.id);
  say(`ensure again  returns the same environment: ${again.id === local.id}`);

  const runId = randomUUID();
  const { lease } = await s.leases.acquire(company.id, { environmentId: local.id, heartbeatRunId: runId, ttlSeconds: 30, idempotencyKey: `demo-${runId}` });
  say(`acquired      lease ${lease.id.slice(0, 8)} fence ${lease.fence}, expires ${lease.expiresAt?.toISOString()}`);
  const retry = await s.leases.acquire(company.id, { environmentId: local.id, heartbeatRunId: runId, ttlSeconds: 30, idempotencyKey: `demo-${runId}` });
  say(`retried       same idempotency key gives the same lease: ${retry.lease.id === lease.id} (created: ${retry.created})`);
  const renewed = await s.leases.renew(company.id, lease.id, { fence: lease.fence, ttlSeconds: 120 });
  say(`renewed       expires ${renewed.expiresAt?.toISOString()} (renewals: ${renewed.renewCount})`);
  const released = await s.leases.release(company.id, lease.id, { fence: lease.fence, status: 'released', cleanupStatus: 'success' });
  say(`released      status ${released.lease.status}, cleanup ${released.lease.cleanupStatus}`);
  const twice = await s.leases.release(company.id, lease.id, { fence: lease.fence, status: 'failed' });
  say(`release again changes nothing: status stays ${twice.lease.status} (changed: ${twice.changed})`);

  const box = await s.environments.create(company.id, { name: 'one-slot sandbox', driver: 'sandbox', config: { provider: 'demo' }, capacity: 1 });
  const held = await s.leases.acquire(company.id, { environmentId: box.id, ttlSeconds: 0.5 });
  try {
    await s.leases.acquire(company.id, { environmentId: box.id });
  } catch (err) {
    if (!isBerthError(err, 'capacity_exhausted')) throw err;
    say(`capacity      second acquire on "${box.name}" refused: ${err.code}`);
  }
  await new Promise((r) => setTimeout(r, 700));
  const expired = await s.leases.expireDue();
  say(`expiry sweep  expired ${expired.length} lease(s) not renewed in time (${expired.map((l) => l.id.slice(0, 8)).join(', ')}; held ${held.lease.id.slice(0, 8)})`);

  // A heartbeat run: an agent's process executed through a lease on Local.
  const runtime = await startRuntime({
    services: s,
    db: database.db,
    apiUrl: 'http://127.0.0.1:9', // the tour's agents never call back
    onError: (where, err) => console.error(`[tour] runtime ${where}: ${(err as Error).message}`),
  });
  try {
    const agent = await s.agents.create(company.id, {
      name: 'hello',
      adapterType: 'process',
      adapterConfig: { command: 'sh', args: ['-c', 'echo "hello from run $PAPERCLIP_RUN_ID in $PWD"'] },
    });
    const queued = await s.runs.invoke(company.id, agent.id);
    runtime.poke();
    let run = queued;
    while (!run.finishedAt) {
      await new Promise((r) => setTimeout(r, 20));
      run = await s.runs.get(company.id, queued.id);
    }
    const output = (await s.runs.readLog(company.id, run.id)).map((c) => c.chunk).join('').trim();
    const runLease = await s.leases.get(company.id, run.leaseId!);
    say(`run           agent "${agent.name}": ${run.status} (exit ${run.exitCode}) in ${run.finishedAt.getTime() - run.createdAt.getTime()} ms, output: ${output}`);
    say(`              its lease ${runLease.id.slice(0, 8)} on ${String((run.contextSnapshot.paperclipEnvironment as { name?: string })?.name)}: ${runLease.status}, cleanup ${runLease.cleanupStatus}`);
  } finally {
    await runtime.stop({ graceMs: 1000 });
  }

  console.log('\nActivity log, oldest first:');
  const { items } = await s.activity.list(company.id, { limit: 100 });
  for (const a of items.reverse()) {
    const d = a.details;
    const extra =
      a.entityType === 'environment_lease'
        ? `fence ${d.fence}${d.status ? `, status ${d.status}` : ''}`
        : a.entityType === 'heartbeat_run'
          ? `${d.status ? `status ${d.status}` : `source ${d.source ?? '-'}`}`
          : `name ${JSON.stringify(d.name)}`;
    console.log(`  #${a.id} ${a.createdAt.toISOString()}  ${a.action.padEnd(30)} ${a.entityType} ${a.entityId.slice(0, 8)}  ${extra}`);
  }
  console.log(`\nDone in ${ms()}. Data kept at ${database.location}.`);
} finally {
  await database.close();
}
