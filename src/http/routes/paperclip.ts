// The routes Paperclip's clients call under their own names (its CLI, its agents' skills),
// answered from Berth's services in Paperclip's shapes. What the contract is, in full:
// src/domain/paperclip.ts.
import { z } from 'zod';
import { probeThrough } from '../../drivers/common.js';
import type { DriverDescriptor, DriverEnvironment } from '../../drivers/contract.js';
import { DRIVER_DESCRIPTORS, DRIVER_KINDS, type EnvironmentDriverKind } from '../../drivers/descriptors.js';
import { ADAPTER_TYPES } from '../../domain/enums.js';
import { parseInput } from '../../domain/validators.js';
import type { ActivityEntry, Agent } from '../../domain/types.js';
import { probeSummary } from '../../services/probes.js';
import { environmentSecretPaths, redactSecrets } from '../../secrets/config.js';
import { HttpError } from '../errors.js';
import { presentAgent } from '../present.js';
import { defineRoutes, type RouteDef, type RouteRequest } from '../route.js';
import { healthRoutes } from './health.js';
import { wakeup } from './agents.js';
import { invokeSchema } from '../../domain/agents.js';

const agent = { param: 'id', kind: 'agent' } as const;
const run = { param: 'id', kind: 'run' } as const;
const ownRun = async (r: RouteRequest, runId: string) => r.params.id === runId;

/** What a run token's agent is; a company key names no agent. */
function callingAgentId(r: RouteRequest): string {
  if (r.principal.kind !== 'run') {
    throw new HttpError(401, 'unauthorized', "agent authentication required: /api/agents/me answers a run's own token (PAPERCLIP_API_KEY), not a company or admin key");
  }
  return r.principal.agentId;
}

/** An activity row in words: `lease 1f2e… acquired (fence 3)`. */
function eventMessage(a: ActivityEntry): string {
  const lease = /^environment\.lease_(.+)$/.exec(a.action);
  if (lease) return `lease ${a.entityId} ${lease[1]!.replace(/_/g, ' ')}${typeof a.details.fence === 'number' ? ` (fence ${a.details.fence})` : ''}`;
  return `${a.action} (${a.entityType} ${a.entityId})`;
}

/** A run's activity as Paperclip's run events: status changes as heartbeat.run.status, the rest by action. */
function presentEvent(a: ActivityEntry) {
  const d = a.details;
  const status = a.action === 'heartbeat_run.queued' ? 'queued' : a.action === 'heartbeat_run.finished' ? String(d.status ?? '') : null;
  const failed = status !== null && status !== 'queued' && status !== 'succeeded';
  return {
    id: a.id,
    companyId: a.companyId,
    runId: a.runId,
    seq: a.id,
    eventType: status !== null ? 'heartbeat.run.status' : a.action,
    stream: 'system',
    level: failed ? 'error' : 'info',
    message: status !== null ? `run ${status}${d.errorCode ? ` (${String(d.errorCode)})` : ''}` : eventMessage(a),
    payload: status !== null ? { ...d, status } : d,
    action: a.action,
    createdAt: a.createdAt,
  };
}

/** An unsaved environment to probe: per driver, its config validated as create validates it. */
const probeConfigSchema = z.discriminatedUnion(
  'driver',
  Object.values(DRIVER_DESCRIPTORS as Record<string, DriverDescriptor>).map((d) =>
    z.strictObject({
      driver: z.literal(d.kind),
      config: d.configDefault ? d.configSchema.default(d.configDefault) : d.configSchema,
      name: z.string().max(200).optional(),
      description: z.string().max(2000).nullish(),
      metadata: z.record(z.string(), z.unknown()).nullish(),
    }),
  ) as unknown as [z.ZodObject, ...z.ZodObject[]],
  { error: `must be one of ${DRIVER_KINDS.join(', ')}` },
);
type ProbeConfigInput = { driver: EnvironmentDriverKind; config: Record<string, unknown>; name?: string; description?: string | null; metadata?: Record<string, unknown> | null };

async function setStatus(r: RouteRequest, status: 'active' | 'paused'): Promise<Record<string, unknown>> {
  return presentAgent(await r.deps.services.agents.update(r.companyId, r.params.id!, { status }, r.actor));
}

export const paperclipRoutes = (): RouteDef[] => {
  const health = healthRoutes()[0]!;
  return defineRoutes([
    {
      ...health,
      path: '/api/health',
      summary: "/health under Paperclip's name, with its `status` field ('ok')",
      returns: '{ok, status, version, database}',
      async handle(r) {
        return { ...((await health.handle(r)) as Record<string, unknown>), status: 'ok' };
      },
    },
    {
      method: 'GET',
      path: '/api/agents/me',
      summary: "The calling run's agent (a run token: PAPERCLIP_API_KEY), with the run it acts for",
      tag: 'agents',
      access: 'run',
      runOwns: async () => true,
      returns: 'Agent & {runId}',
      async handle(r) {
        const id = callingAgentId(r);
        const a: Agent = await r.deps.services.agents.get(r.companyId, id);
        return { ...presentAgent(a), runId: r.principal.kind === 'run' ? r.principal.runId : null };
      },
    },
    {
      method: 'POST',
      path: '/api/agents/:id/heartbeat/invoke',
      summary: "Queue a run of the agent (Paperclip's older name for wakeup; takes the wakeup's body)",
      tag: 'agents',
      access: 'company',
      owner: agent,
      body: invokeSchema,
      status: 202,
      alsoStatus: [200],
      returns: 'HeartbeatRun (queued)',
      handle: (r) => wakeup(r),
    },
    {
      method: 'POST',
      path: '/api/agents/:id/pause',
      summary: 'Pause the agent: it takes no new runs (its running runs go on)',
      tag: 'agents',
      access: 'company',
      owner: agent,
      returns: 'Agent',
      handle: (r) => setStatus(r, 'paused'),
    },
    {
      method: 'POST',
      path: '/api/agents/:id/resume',
      summary: 'Resume a paused agent',
      tag: 'agents',
      access: 'company',
      owner: agent,
      returns: 'Agent',
      handle: (r) => setStatus(r, 'active'),
    },
    {
      method: 'GET',
      path: '/api/companies/:companyId/environments/capabilities',
      summary: "What environments this server runs, per adapter and per driver, in Paperclip's shape (`berthDrivers`: Berth's own detail)",
      tag: 'environments',
      access: 'company',
      returns: '{adapters, drivers, sandboxProviders, berthDrivers}',
      async handle({ deps }) {
        const descriptors = Object.values(DRIVER_DESCRIPTORS as Record<string, DriverDescriptor>);
        const runs = (d: DriverDescriptor) => deps.drivers.has(d.kind);
        const support = (ok: boolean) => (ok ? 'supported' : 'unsupported');
        return {
          adapters: ADAPTER_TYPES.map((adapterType) => ({
            adapterType,
            drivers: Object.fromEntries(descriptors.map((d) => [d.kind, support(runs(d) && d.adapters.includes(adapterType))])),
            sandboxProviders: {},
          })),
          drivers: Object.fromEntries(descriptors.map((d) => [d.kind, support(runs(d))])),
          sandboxProviders: {},
          berthDrivers: descriptors.map((d) => ({ kind: d.kind, title: d.title, runs: runs(d), adapters: d.adapters, capabilities: d.capabilities })),
        };
      },
    },
    {
      method: 'POST',
      path: '/api/companies/:companyId/environments/probe-config',
      summary: 'Probe a config before saving it: validated as create validates it, probed through its driver, nothing stored',
      tag: 'environments',
      access: 'company',
      body: probeConfigSchema,
      bodyRequired: true,
      returns: '{ok, driver, summary, latencyMs, details, error?}',
      async handle({ deps, companyId, body }) {
        const v = parseInput(probeConfigSchema, body, 'probe config') as ProbeConfigInput;
        const config = v.config;
        const now = new Date();
        const env: DriverEnvironment = {
          id: 'unsaved',
          companyId,
          name: v.name?.trim() || 'Unsaved environment',
          description: v.description ?? null,
          driver: v.driver,
          status: 'active',
          config: redactSecrets({ config }, environmentSecretPaths(v.driver)).config as Record<string, unknown>,
          secretConfig: config,
          envVars: {},
          metadata: v.metadata ?? {},
          capacity: null,
          lastProbe: null,
          createdAt: now,
          updatedAt: now,
        };
        const result = await probeThrough(deps.drivers.get(v.driver), env);
        return { ...result, latencyMs: Math.round(result.latencyMs * 10) / 10, driver: v.driver, summary: probeSummary(v.driver, result) };
      },
    },
    {
      method: 'GET',
      path: '/api/environments/:id/delete-blast-radius',
      summary: 'What deleting the environment would touch, and why it would be refused now (nothing changes)',
      tag: 'environments',
      access: 'company',
      owner: { param: 'id', kind: 'environment' },
      returns: '{environmentId, canDelete, deleteBlockedReasons, leases, resources, agentsDefaulting}',
      handle: ({ deps, companyId, params }) => deps.services.environments.deleteBlastRadius(companyId, params.id!),
    },
    {
      method: 'GET',
      path: '/api/heartbeat-runs/:id/events',
      summary: "The run's events, oldest first after `afterSeq`: its status changes and its leases' activity (Paperclip's run events)",
      tag: 'runs',
      access: 'run',
      owner: run,
      runOwns: ownRun,
      query: z.strictObject({
        afterSeq: z.coerce.number().int('must be an integer').min(0, 'must be 0 or more').max(Number.MAX_SAFE_INTEGER).optional(),
        limit: z.coerce.number().int('must be an integer').min(1, 'must be 1-1000').max(1000, 'must be 1-1000').optional(),
      }),
      returns: 'RunEvent[]',
      async handle({ deps, companyId, params, query }) {
        await deps.services.runs.get(companyId, params.id!); // not found for another company's run
        const rows = await deps.services.activity.ofRun(companyId, params.id!, (query.afterSeq as number | undefined) ?? 0, (query.limit as number | undefined) ?? 200);
        return rows.map(presentEvent);
      },
    },
  ]);
};
