// Liveness: the only route that answers without a key.
import { defineRoutes } from '../route.js';

export const healthRoutes = () =>
  defineRoutes([
    {
      method: 'GET',
      path: '/health',
      summary: 'Is the server up and its database answering? (no key needed)',
      tag: 'health',
      access: 'public',
      returns: '{ok, version, database}',
      async handle({ deps }) {
        await deps.services.companies.ping();
        return { ok: true, version: deps.version, database: deps.database };
      },
    },
  ]);
