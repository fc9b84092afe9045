import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServices } from '../src/services/index.js';
import { startRuntime } from '../src/heartbeat/runtime.js';
import { localDriver } from '../src/drivers/local/driver.js';
import { createScratchDatabase } from '../test/support/db.js';
import { openDatabase } from '../src/db/client.js';
const scratch = await createScratchDatabase(); const database = await openDatabase({ databaseUrl: scratch.url });
const s = createServices(database.db);
const rt = await startRuntime({ services: s, db: database.db, drivers: new Map([['local', localDriver({ workspaceRoot: mkdtempSync(join(tmpdir(), 'x-')) })]]), apiUrl: 'http://127.0.0.1:9', onError: (w, e) => console.error('ERR', w, e), pollMs: 50 });
console.log('runtime up');
const c = await s.companies.create({ name: 'c' });
const a = await s.agents.create(c.id, { name: 'a', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo hi'] } });
const run = await s.runs.invoke(c.id, a.id, { source: 'on_demand' });
rt.poke();
for (let i = 0; i < 50; i++) { await new Promise((r) => setTimeout(r, 100)); const r = await s.runs.get(c.id, run.id); if (r.status !== 'queued' && r.status !== 'running') { console.log(r); break; } }
console.log(await s.runs.get(c.id, run.id)); console.log((await s.activity.list(c.id)).items.map((x) => x.action));
process.exit(0);
