// All services over one database, the way faces (CLI, HTTP, scheduler) get them.
import type { Db } from '../db/client.js';
import { activityService } from './activity.js';
import { companyService } from './companies.js';
import { environmentService } from './environments.js';
import { leaseService } from './leases/index.js';
import { agentService } from './agents.js';
import { runService, serverRegistry } from './runs.js';
import { apiKeyService } from './api-keys.js';
import { probeService } from './probes.js';
import { retentionService } from './retention.js';
import { resourceService } from './resources/index.js';
import { dueService } from './due.js';
import { statsService } from './stats.js';
import { poolService } from './pools/index.js';
import { createMetrics, type Metrics } from '../metrics/index.js';

/**
 * `metrics`: where these services record what they do (GET /metrics renders it). Services
 * made without one get a registry of their own, whose database gauges read `db`; a
 * transaction's services are given their server's.
 */
export function createServices(db: Db, metrics?: Metrics) {
  const m = metrics ?? createMetrics();
  const stats = statsService(db);
  if (!metrics) m.observeDatabase(stats.snapshot);
  return {
    metrics: m,
    stats,
    companies: companyService(db),
    environments: environmentService(db),
    leases: leaseService(db, m),
    resources: resourceService(db, m),
    pools: poolService(db),
    activity: activityService(db),
    agents: agentService(db),
    runs: runService(db, m),
    servers: serverRegistry(db),
    apiKeys: apiKeyService(db),
    probes: probeService(db),
    retention: retentionService(db),
    due: dueService(db),
  };
}
export type Services = ReturnType<typeof createServices>;
