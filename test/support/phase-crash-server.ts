// A heartbeat runtime in a process of its own that stops dead at one phase of a run's
// start (it writes PHASE_MARKER and waits forever), for a test to SIGKILL it right there.
import { writeFileSync } from 'node:fs';
import { openDatabase } from '../../src/db/client.js';
import { dockerDriver } from '../../src/drivers/docker/driver.js';
import { localDriver } from '../../src/drivers/local/driver.js';
import { sshDriver } from '../../src/drivers/ssh/driver.js';
import { startRuntime } from '../../src/heartbeat/runtime.js';
import { createServices } from '../../src/services/index.js';

const database = await openDatabase({ databaseUrl: process.env.PHASE_DATABASE_URL! });
await startRuntime({
  services: createServices(database.db),
  db: database.db,
  heartbeatDb: database.heartbeatDb,
  drivers: new Map([
    ['local', localDriver({ workspaceRoot: process.env.PHASE_WORKSPACE_ROOT! })],
    ['ssh', sshDriver()],
    ['docker', dockerDriver()],
  ]),
  apiUrl: 'http://127.0.0.1:9',
  pollMs: 50,
  heartbeatMs: 200,
  onError: (where, err) => console.error(where, err),
  onPhase: async (phase, run) => {
    if (phase !== process.env.PHASE_HOLD) return;
    writeFileSync(process.env.PHASE_MARKER!, run.id);
    await new Promise(() => {});
  },
});
console.log('phase-crash-server ready');
