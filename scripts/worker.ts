// Runs the heartbeat runtime (scheduler, executor, sweeps) against the configured
// database until SIGTERM or SIGINT, then stops claiming, gives running runs a grace
// period and finalizes what is left. It serves no API: its runs call back to a
// `berth serve` that BERTH_PUBLIC_URL names.
import { retentionFromEnv } from '../src/services/retention.js';
import { openDatabase } from '../src/db/client.js';
import { startRuntime } from '../src/heartbeat/runtime.js';
import { parsePublicUrl } from '../src/server/serve.js';
import { createServices } from '../src/services/index.js';

/**
 * Where runs reach Berth. Required, never guessed: a worker runs where no server need
 * be (another machine, sharing only the database), so neither a default port nor the
 * server.json of this BERTH_HOME (one server's loopback address on one machine) is an
 * address its agents can be trusted to reach.
 */
function publicUrl(): string {
  const raw = process.env.BERTH_PUBLIC_URL;
  if (!raw) {
    const renamed = process.env.BERTH_API_URL ? ' (BERTH_API_URL is no longer read: it is BERTH_PUBLIC_URL now)' : '';
    throw new Error(`set BERTH_PUBLIC_URL to the address agents reach a berth serve at (its --public-url, e.g. http://berth.internal:3710): a worker serves no API, and its runs call back to one${renamed}`);
  }
  return parsePublicUrl(raw, 'BERTH_PUBLIC_URL');
}

let apiUrl: string;
try {
  apiUrl = publicUrl();
} catch (err) {
  console.error(`berth worker: ${(err as Error).message}`);
  process.exit(2);
}
const database = await openDatabase();
const runtime = await startRuntime({
  services: createServices(database.db),
  db: database.db,
  heartbeatDb: database.heartbeatDb,
  listen: database.listen,
  retention: retentionFromEnv(),
  maxConcurrentRuns: Number(process.env.BERTH_MAX_RUNS ?? 16),
  apiUrl,
  onError: (where, err) => console.error(`runtime error in ${where}: ${(err as Error).message}`),
});
console.log(`ready ${runtime.serverId} pid ${process.pid} database ${database.kind} ${database.location} public-url ${apiUrl}`);

let stopping = false;
for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.on(sig, async () => {
    if (stopping) return;
    stopping = true;
    // Seconds, as for berth serve's --grace.
    const graceSec = Number(process.env.BERTH_STOP_GRACE ?? 10);
    console.log(`${sig}: stopping (grace ${graceSec} s)`);
    await runtime.stop({ graceMs: graceSec * 1000 });
    await database.close();
    process.exit(0);
  });
}
