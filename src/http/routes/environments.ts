// Environments: list, create, show, change, archive, delete, probe.
import { z } from 'zod';
import { probeThrough } from '../../drivers/common.js';
import { DRIVER_KINDS } from '../../drivers/descriptors.js';
import { ENVIRONMENT_STATUSES } from '../../domain/enums.js';
import type { UpdateEnvironmentInput } from '../../domain/validators.js';
import { createEnvironmentSchema, updateEnvironmentSchema, type CreateEnvironmentInput } from '../../services/environment-input.js';
import { presentEnvironment } from '../present.js';
import { defineRoutes } from '../route.js';

const env = { param: 'id', kind: 'environment' } as const;

export const environmentRoutes = () =>
  defineRoutes([
    {
      method: 'GET',
      path: '/api/companies/:companyId/environments',
      summary: 'Environments of a company, newest updated first, each with its count of active leases',
      tag: 'environments',
      access: 'company',
      query: z.strictObject({ status: z.enum(ENVIRONMENT_STATUSES).optional(), driver: z.enum(DRIVER_KINDS).optional() }),
      returns: 'Environment[]',
      async handle({ deps, companyId, query }) {
        const [envs, active] = await Promise.all([deps.services.environments.list(companyId, query), deps.services.leases.countActiveByEnvironment(companyId)]);
        const pools = await deps.services.pools.states(envs.filter((e) => e.pool).map((e) => e.id));
        return envs.map((e) => presentEnvironment(e, active.get(e.id) ?? 0, pools.get(e.id)));
      },
    },
    {
      method: 'POST',
      path: '/api/companies/:companyId/environments',
      summary: 'Create an environment (config validated per driver)',
      tag: 'environments',
      access: 'company',
      body: createEnvironmentSchema,
      bodyRequired: true,
      status: 201,
      returns: 'Environment',
      async handle({ deps, companyId, body, actor }) {
        return presentEnvironment(await deps.services.environments.create(companyId, body as CreateEnvironmentInput, actor));
      },
    },
    {
      method: 'GET',
      path: '/api/environments/:id',
      summary: 'One environment, with its count of active leases and, when it has a warm pool, what the pool holds (poolState)',
      tag: 'environments',
      access: 'company',
      owner: env,
      returns: 'Environment',
      async handle({ deps, companyId, params }) {
        const [env, active] = await Promise.all([deps.services.environments.get(companyId, params.id!), deps.services.leases.countActiveByEnvironment(companyId)]);
        const pools = env.pool ? await deps.services.pools.states([env.id]) : new Map();
        return presentEnvironment(env, active.get(env.id) ?? 0, pools.get(env.id));
      },
    },
    {
      method: 'PATCH',
      path: '/api/environments/:id',
      summary: 'Change an environment (partial); config is validated against its driver',
      tag: 'environments',
      access: 'company',
      owner: env,
      body: updateEnvironmentSchema.meta({ minProperties: 1 }),
      bodyRequired: true,
      returns: 'Environment',
      async handle({ deps, companyId, params, body, actor }) {
        return presentEnvironment(await deps.services.environments.update(companyId, params.id!, body as UpdateEnvironmentInput, actor));
      },
    },
    {
      method: 'POST',
      path: '/api/environments/:id/archive',
      summary: 'Archive: the environment takes no new leases',
      tag: 'environments',
      access: 'company',
      owner: env,
      returns: 'Environment',
      async handle({ deps, companyId, params, actor }) {
        return presentEnvironment(await deps.services.environments.archive(companyId, params.id!, actor));
      },
    },
    {
      method: 'DELETE',
      path: '/api/environments/:id',
      summary: "Delete; refused (409, with every reason) for the company's Local, while leases are not terminal, or while ended leases still owe cleanup",
      tag: 'environments',
      access: 'company',
      owner: env,
      returns: 'the deleted Environment',
      async handle({ deps, companyId, params, actor }) {
        return presentEnvironment(await deps.services.environments.delete(companyId, params.id!, actor));
      },
    },
    {
      method: 'POST',
      path: '/api/environments/:id/probe',
      summary: 'Is it reachable and usable now? Kept as the environment\'s lastProbe',
      tag: 'environments',
      access: 'company',
      owner: env,
      returns: '{ok, driver, summary, latencyMs, details, error?, at}',
      async handle({ deps, companyId, params, actor }) {
        const e = await deps.services.environments.getWithSecrets(companyId, params.id!);
        const result = await probeThrough(deps.drivers.get(e.driver), e);
        return deps.services.probes.record(companyId, e.id, e.driver, result, actor);
      },
    },
  ]);
