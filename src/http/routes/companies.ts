// Companies and their API keys.
import { createApiKeySchema } from '../../services/api-keys.js';
import { createCompanySchema } from '../../services/companies.js';
import { defineRoutes } from '../route.js';

export const companyRoutes = () =>
  defineRoutes([
    {
      method: 'POST',
      path: '/api/companies',
      summary: 'Create a company and its first API key (shown once)',
      tag: 'companies',
      access: 'admin',
      body: createCompanySchema,
      bodyRequired: true,
      status: 201,
      returns: '{company, apiKey}: apiKey is shown only here',
      async handle({ deps, body, actor }) {
        const company = await deps.services.companies.create(body as { name: string });
        const { key, record } = await deps.services.apiKeys.create(company.id, { name: 'default' }, actor);
        return { company, apiKey: key, apiKeyRecord: record };
      },
    },
    {
      method: 'GET',
      path: '/api/companies',
      summary: 'Companies: every one for the admin key, the own one for a company key',
      tag: 'companies',
      access: 'company',
      returns: 'Company[]',
      async handle({ deps, principal, companyId }) {
        if (principal.kind === 'admin') return deps.services.companies.list();
        return [await deps.services.companies.get(companyId)];
      },
    },
    {
      method: 'GET',
      path: '/api/companies/:companyId',
      summary: 'One company',
      tag: 'companies',
      access: 'company',
      returns: 'Company',
      handle: ({ deps, companyId }) => deps.services.companies.get(companyId),
    },
    {
      method: 'GET',
      path: '/api/companies/:companyId/api-keys',
      summary: "The company's API keys (names and prefixes, never the keys)",
      tag: 'companies',
      access: 'company',
      returns: 'ApiKey[]',
      handle: ({ deps, companyId }) => deps.services.apiKeys.list(companyId),
    },
    {
      method: 'POST',
      path: '/api/companies/:companyId/api-keys',
      summary: 'Create another API key (shown once)',
      tag: 'companies',
      access: 'company',
      body: createApiKeySchema,
      status: 201,
      returns: '{apiKey, apiKeyRecord}',
      async handle({ deps, companyId, body, actor }) {
        const { key, record } = await deps.services.apiKeys.create(companyId, body as { name?: string }, actor);
        return { apiKey: key, apiKeyRecord: record };
      },
    },
    {
      method: 'DELETE',
      path: '/api/api-keys/:id',
      summary: 'Revoke an API key',
      tag: 'companies',
      access: 'company',
      owner: { param: 'id', kind: 'apiKey' },
      returns: 'ApiKey',
      async handle({ deps, companyId, params, principal, actor, forgetKeys }) {
        // A company cannot lock itself out; the admin key can (and can make a new key).
        const revoked = await deps.services.apiKeys.revoke(companyId, params.id!, actor, { keepOneLive: principal.kind === 'company' });
        forgetKeys();
        return revoked;
      },
    },
  ]);
