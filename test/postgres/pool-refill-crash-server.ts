// A server (a process of its own) whose warm-pool refill stops dead inside a driver's
// provision: the local workspace is made, then it writes POOL_MARKER and waits forever,
// for test/postgres/pool-crash.test.ts to SIGKILL it right there.
import { renameSync, writeFileSync } from 'node:fs';
import { openDatabase } from '../../src/db/client.js';
import { localDriver } from '../../src/drivers/local/driver.js';
import { startRuntime } from '../../src/heartbeat/runtime.js';
import { createServices } from '../../src/services/index.js';

const database = await openDatabase({ databaseUrl: process.env.POOL_DATABASE_URL! });
const local = localDriver({ workspaceRoot: process.env.POOL_WORKSPACE_ROOT! });
let made = 0;
await startRuntime({
  services: createServices(database.db),
  db: database.db,
  heartbeatDb: database.heartbeatDb,
  serverId: process.env.POOL_SERVER_ID!,
  drivers: new Map([
    ['local', {
      ...local,
      async provision(env, req, signal) {
        const r = await local.provision(env, req, signal);
        if (++made >= Number(process.env.POOL_HOLD_AFTER ?? 1)) {
          // Whole or not at all: the test reads it as soon as it exists.
          writeFileSync(`${process.env.POOL_MARKER!}.${req.resourceId}`, req.resourceId);
          renameSync(`${process.env.POOL_MARKER!}.${req.resourceId}`, process.env.POOL_MARKER!);
          await new Promise(() => {});
        }
        return r;
      },
    }],
  ]),
  apiUrl: 'http://127.0.0.1:9',
  heartbeatMs: 200,
  poolRefillMs: 100,
  onError: (where, err) => console.error(where, err),
});
console.log('pool-refill-crash-server ready');
