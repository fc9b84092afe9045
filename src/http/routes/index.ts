// Every route of the API, in the order the document lists them.
import type { RouteDef } from '../route.js';
import { activityRoutes } from './activity.js';
import { agentRoutes } from './agents.js';
import { companyRoutes } from './companies.js';
import { driverRoutes } from './drivers.js';
import { environmentRoutes } from './environments.js';
import { leaseRoutes } from './leases.js';
import { runRoutes } from './runs.js';
import { healthRoutes } from './health.js';
import { paperclipRoutes } from './paperclip.js';

export function allRoutes(): RouteDef[] {
  // Paperclip's names first: /api/agents/me before /api/agents/:id.
  return [...healthRoutes(), ...paperclipRoutes(), ...companyRoutes(), ...driverRoutes(), ...environmentRoutes(), ...leaseRoutes(), ...agentRoutes(), ...runRoutes(), ...activityRoutes()];
}
