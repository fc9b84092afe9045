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

export function createServices(db: Db) {
  return {
    companies: companyService(db),
    environments: environmentService(db),
    leases: leaseService(db),
    resources: resourceService(db),
    activity: activityService(db),
    agents: agentService(db),
    runs: runService(db),
    servers: serverRegistry(db),
    apiKeys: apiKeyService(db),
    probes: probeService(db),
    retention: retentionService(db),
    due: dueService(db),
  };
}
export type Services = ReturnType<typeof createServices>;
