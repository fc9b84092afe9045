// What every route handler gets: the services, who is calling, and the server's parts.
import type { Logger } from 'pino';
import type { Actor } from '../domain/types.js';
import type { DriverRegistry } from '../drivers/contract.js';
import type { Services } from '../services/index.js';

export type Principal =
  | { kind: 'admin' }
  | { kind: 'company'; companyId: string; keyId: string }
  /** A run's PAPERCLIP_API_KEY: acts only on its own run and that run's leases. */
  | { kind: 'run'; companyId: string; runId: string; agentId: string };

export interface AppDeps {
  services: Services;
  drivers: DriverRegistry;
  logger: Logger;
  /** sha256 of the instance admin key; null: no admin key accepted. */
  adminKeyHash: string | null;
  /** Wake the scheduler after a wakeup (when this process runs one). */
  pokeScheduler?: () => void;
  /** How long a follower of a run's log waits between looks at the database, ms. */
  logPollMs?: number;
  database: 'pglite' | 'postgres';
  version: string;
  /** GET /metrics without a key (BERTH_METRICS_PUBLIC=1); else it needs the admin key. */
  metricsPublic?: boolean;
}

export function actorOf(p: Principal): Actor {
  switch (p.kind) {
    case 'admin':
      return { type: 'user', id: 'admin' };
    case 'company':
      return { type: 'api_key', id: p.keyId };
    case 'run':
      return { type: 'run', id: p.runId };
  }
}
