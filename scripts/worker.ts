// Runs the heartbeat runtime (scheduler, executor, sweeps) against the configured
// database until SIGTERM or SIGINT, then stops claiming, gives running runs a grace
// period and finalizes what is left. `berth serve` will embed the same runtime.
import { openDatabase } from '../src/db/client.js';
import { startRuntime } from '../src/heartbeat/runtime.js';
import { createServices } from '../src/services/index.js';

const database = await openDatabase();
const runtime = await startRuntime({
  services: createServices(database.db),
  db: database.db,
  heartbeatDb: database.heartbeatDb,
  maxConcurrentRuns: Number(process.env.BERTH_MAX_RUNS ?? 16),
  apiUrl: process.env.BERTH_API_URL ?? 'http://127.0.0.1:3710',
  onError: (where, err) => console.error(`runtime error in ${where}: ${(err as Error).message}`),
});
console.log(`ready ${runtime.serverId} pid ${process.pid} database ${database.kind} ${database.location}`);

let stopping = false;
for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.on(sig, async () => {
    if (stopping) return;
    stopping = true;
    console.log(`${sig}: stopping (grace ${process.env.BERTH_STOP_GRACE_MS ?? 10000} ms)`);
    await runtime.stop({ graceMs: Number(process.env.BERTH_STOP_GRACE_MS ?? 10_000) });
    await database.close();
    process.exit(0);
  });
}
