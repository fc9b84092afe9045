// Agents: list, create, show, change, delete, and wake one up (queue a run).
import { z } from 'zod';
import { createAgentSchema, invokeSchema, updateAgentSchema, type CreateAgentInput, type InvokeInput, type UpdateAgentInput } from '../../domain/agents.js';
import { presentAgent } from '../present.js';
import { defineRoutes } from '../route.js';

const agent = { param: 'id', kind: 'agent' } as const;

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
      summary: 'One agent',
      tag: 'agents',
      access: 'company',
      owner: agent,
      returns: 'Agent',
      async handle({ deps, companyId, params }) {
        return presentAgent(await deps.services.agents.get(companyId, params.id!));
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
      returns: 'HeartbeatRun (queued)',
      async handle({ deps, companyId, params, body, actor }) {
        const run = await deps.services.runs.invoke(companyId, params.id!, body as InvokeInput, actor);
        deps.pokeScheduler?.();
        return run;
      },
    },
  ]);
