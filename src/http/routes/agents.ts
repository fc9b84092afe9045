// Agents: list, create, show, change, delete, and wake one up (queue a run).
import { z } from 'zod';
import { createAgentSchema, invokeSchema, updateAgentSchema, type CreateAgentInput, type InvokeInput, type UpdateAgentInput } from '../../domain/agents.js';
import { presentAgent } from '../present.js';
import { notFound } from '../../domain/errors.js';
import { defineRoutes, type RouteRequest } from '../route.js';

const agent = { param: 'id', kind: 'agent' } as const;

/** Queue a run (the body: Berth's {source, context} and Paperclip's wakeup fields); a repeated idempotencyKey answers 200 with the earlier run. */
export async function wakeup({ deps, companyId, params, body, actor, c }: RouteRequest): Promise<Response> {
  const { run, repeated } = await deps.services.runs.invokeOnce(companyId, params.id!, (body ?? {}) as InvokeInput, actor);
  if (!repeated) deps.pokeScheduler?.();
  return c.json(run, repeated ? 200 : 202);
}

export const agentRoutes = () =>
  defineRoutes([
    {
      method: 'GET',
      path: '/api/companies/:companyId/agents',
      summary: 'Agents of a company, by name',
      tag: 'agents',
      access: 'company',
      query: z.strictObject({ name: z.string().max(200).optional() }),
      returns: 'Agent[]',
      async handle({ deps, companyId, query }) {
        return (await deps.services.agents.list(companyId, query)).map(presentAgent);
      },
    },
    {
      method: 'POST',
      path: '/api/companies/:companyId/agents',
      summary: 'Create an agent (adapter config validated per adapter type)',
      tag: 'agents',
      access: 'company',
      body: createAgentSchema,
      bodyRequired: true,
      status: 201,
      returns: 'Agent',
      async handle({ deps, companyId, body, actor }) {
        return presentAgent(await deps.services.agents.create(companyId, body as CreateAgentInput, actor));
      },
    },
    {
      method: 'GET',
      path: '/api/agents/:id',
      summary: "One agent, by id or (in the caller's company) by name; a run token sees its own agent",
      tag: 'agents',
      access: 'run',
      owner: agent,
      query: z.strictObject({ companyId: z.uuid('must be a UUID').optional() }),
      runOwns: async (r) => r.principal.kind === 'run' && r.principal.agentId === r.params.id,
      returns: 'Agent',
      async handle({ deps, companyId, params, query }) {
        // Paperclip's CLI names the company of a by-name lookup: it must be the caller's.
        if (query.companyId !== undefined && query.companyId !== companyId) throw notFound('company', String(query.companyId));
        return presentAgent(await deps.services.agents.getByRef(companyId, params.id!));
      },
    },
    {
      method: 'PATCH',
      path: '/api/agents/:id',
      summary: 'Change an agent (partial; adapterConfig is replaced whole)',
      tag: 'agents',
      access: 'company',
      owner: agent,
      body: updateAgentSchema.meta({ minProperties: 1 }),
      bodyRequired: true,
      returns: 'Agent',
      async handle({ deps, companyId, params, body, actor }) {
        return presentAgent(await deps.services.agents.update(companyId, params.id!, body as UpdateAgentInput, actor));
      },
    },
    {
      method: 'DELETE',
      path: '/api/agents/:id',
      summary: 'Delete an agent and its runs; refused (409) while it has queued or running runs',
      tag: 'agents',
      access: 'company',
      owner: agent,
      returns: 'the deleted Agent',
      async handle({ deps, companyId, params, actor }) {
        return presentAgent(await deps.services.agents.delete(companyId, params.id!, actor));
      },
    },
    {
      method: 'POST',
      path: '/api/agents/:id/wakeup',
      summary: 'Queue a run of the agent',
      tag: 'agents',
      access: 'company',
      owner: agent,
      body: invokeSchema,
      status: 202,
      alsoStatus: [200],
      returns: 'HeartbeatRun (queued; 200 with the earlier run for a repeated idempotencyKey)',
      handle: (r) => wakeup(r),
    },
  ]);
